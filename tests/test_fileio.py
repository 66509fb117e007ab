"""Streaming readers and writers of documents: JSON Lines, CSV, Parquet."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lookalike.errors import InvalidInputError
from lookalike.fileio import (
    HEADER_KEY,
    count_rows,
    detect_format,
    document_line,
    header_line,
    open_writer,
    read_batches,
    read_header,
    read_vectors,
)

SPEC = {
    "dim": 4,
    "fields": [
        {"name": "language", "type": "varchar", "max_length": 16},
        {"name": "year", "type": "int64"},
        {"name": "score", "type": "float"},
        {"name": "extra", "type": "json"},
    ],
    "indexes": {"vec": {"index_type": "HNSW", "metric_type": "IP", "M": 16}, "language": None},
}


def _documents(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, 4)).astype(np.float32)
    return [
        {"id": f"doc-{i} \"quoted\" é", "vec": vectors[i], "language": ["en", "fr"][i % 2],
         "year": 2000 + i, "score": float(np.float32(i / 3)), "extra": {"tags": [i, "x"]}}
        for i in range(n)
    ]


def _all(path, **kwargs) -> list[dict]:
    return [d for batch in read_batches(path, **kwargs) for d in batch]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_file_round_trips_float32_vectors_exactly(tmp_path, suffix):
    docs = _documents(25)
    path = tmp_path / f"export{suffix}"
    with open_writer(path, {"collection": "articles", "spec": SPEC}) as writer:
        writer.write(docs[:10])
        writer.write(docs[10:])
    assert read_header(path)["spec"] == SPEC
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        assert pq.read_schema(path).field("vec").type == pa.list_(pa.float32())
    back = _all(path, batch_size=7)
    assert [d["id"] for d in back] == [d["id"] for d in docs]
    for original, read in zip(docs, back, strict=True):
        # float32 -> text or parquet -> float32 must give the same bits
        assert np.array_equal(np.asarray(read["vec"], dtype=np.float32), original["vec"])
        assert np.float32(read["score"]) == np.float32(original["score"])
        assert read["extra"] == original["extra"]
        assert (read["language"], read["year"]) == (original["language"], original["year"])


def test_jsonl_header_is_the_first_line_and_is_skipped_by_the_reader(tmp_path):
    path = tmp_path / "export.jsonl"
    with open_writer(path, {"collection": "articles", "spec": SPEC}) as writer:
        writer.write(_documents(2))
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {HEADER_KEY}
    assert first[HEADER_KEY]["collection"] == "articles"
    assert [d["year"] for d in _all(path)] == [2000, 2001]


def test_the_line_functions_write_what_the_jsonl_writer_writes(tmp_path):
    # the HTTP export streams these lines; they must be the file, byte for byte
    docs = _documents(3)
    path = tmp_path / "export.jsonl"
    with open_writer(path, {"collection": "articles", "spec": SPEC}) as writer:
        writer.write(docs)
    lines = [header_line({"collection": "articles", "spec": SPEC}), *map(document_line, docs)]
    assert "".join(lines) == path.read_text(encoding="utf-8")
    assert json.loads(lines[0])[HEADER_KEY]["version"] == 1


def test_empty_parquet_export_is_still_readable(tmp_path):
    path = tmp_path / "empty.parquet"
    with open_writer(path, {"collection": "empty", "spec": SPEC}):
        pass
    assert read_header(path)["collection"] == "empty"
    assert _all(path) == []
    assert count_rows(path) == 0


def test_batches_never_exceed_the_batch_size(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "vec": [i, 0]}) + "\n" for i in range(23)))
    sizes = [len(b) for b in read_batches(path, batch_size=5)]
    assert sizes == [5, 5, 5, 5, 3]


def test_reading_streams_instead_of_loading_the_whole_file(tmp_path):
    # A malformed last line is reached only after earlier batches were handed out: the reader
    # did not parse the whole file up front.
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": str(i)}) + "\n" for i in range(10)) + "{oops\n")
    batches = read_batches(path, batch_size=4)
    assert [d["id"] for d in next(batches)] == ["0", "1", "2", "3"]
    assert len(next(batches)) == 4
    with pytest.raises(InvalidInputError, match=r"docs.jsonl:11: not valid JSON"):
        next(batches)


def test_csv_cells_are_converted_by_field_type(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text(
        'id,vec,language,year,score,extra,flag\n'
        '"a,1","[0.5, -1.25]",en,2021,0.5,"{""k"": 1}",yes\n'
        'b,"[1, 2]",,2022,,,false\n',
        encoding="utf-8",
    )
    types = {"id": "varchar", "language": "varchar", "year": "int64", "score": "float",
             "extra": "json", "flag": "bool"}
    assert _all(path, field_types=types) == [
        {"id": "a,1", "vec": [0.5, -1.25], "language": "en", "year": 2021, "score": 0.5,
         "extra": {"k": 1}, "flag": True},
        # an empty cell is a missing value, except for strings where "" is a value
        {"id": "b", "vec": [1, 2], "language": "", "year": 2022, "flag": False},
    ]


def test_csv_bad_cell_names_line_and_column(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text("id,year\na,2021\nb,soon\n")
    with pytest.raises(InvalidInputError, match=r"docs.csv:3: column 'year': 'soon' is not"):
        _all(path, field_types={"year": "int64"})


def test_rename_maps_a_text_column(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"id": "a", "body": "hello"}) + "\n")
    assert _all(path, rename={"body": "text"}) == [{"id": "a", "text": "hello"}]


def test_plain_parquet_from_another_tool_is_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "vec": [[1.0, 0.0], [0.0, 1.0]],
                             "language": ["en", None]}), path)
    assert read_header(path) is None
    assert count_rows(path) == 2
    assert _all(path) == [{"id": "a", "vec": [1.0, 0.0], "language": "en"},
                          {"id": "b", "vec": [0.0, 1.0]}]


def test_format_detection_and_errors(tmp_path):
    assert detect_format("x.JSONL") == "jsonl"
    assert detect_format("x.ndjson") == "jsonl"
    assert detect_format("x.data", "csv") == "csv"
    with pytest.raises(InvalidInputError, match="cannot tell the format"):
        detect_format("x.txt")
    with pytest.raises(InvalidInputError, match="format 'xml' is unknown"):
        detect_format("x.jsonl", "xml")
    with pytest.raises(InvalidInputError, match="does not exist"):
        _all(tmp_path / "missing.jsonl")
    with pytest.raises(InvalidInputError, match="not a readable Parquet file"):
        (tmp_path / "bad.parquet").write_text("nope")
        _all(tmp_path / "bad.parquet")
    with pytest.raises(InvalidInputError, match="not CSV"):
        open_writer(tmp_path / "out.csv", {"spec": SPEC})
    with pytest.raises(InvalidInputError, match="expected a JSON object"):
        (tmp_path / "list.jsonl").write_text("[1, 2]\n")
        _all(tmp_path / "list.jsonl")


def test_read_vectors_accepts_json_jsonl_and_npy(tmp_path):
    (tmp_path / "one.json").write_text("[1, 0.5]")
    (tmp_path / "many.json").write_text("[[1, 0], [0, 1]]")
    (tmp_path / "lines.jsonl").write_text("[1, 0]\n[0, 1]\n")
    np.save(tmp_path / "v.npy", np.eye(2, dtype=np.float32))
    assert read_vectors(tmp_path / "one.json") == [[1, 0.5]]
    assert read_vectors(tmp_path / "many.json") == [[1, 0], [0, 1]]
    assert read_vectors(tmp_path / "lines.jsonl") == [[1, 0], [0, 1]]
    assert read_vectors(tmp_path / "v.npy") == [[1.0, 0.0], [0.0, 1.0]]
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(InvalidInputError, match="holds no vectors"):
        read_vectors(tmp_path / "bad.json")
