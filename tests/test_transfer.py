"""Export and import through the library: a collection to one file and back, exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lookalike import Client
from lookalike.errors import ConflictError, InvalidInputError
from lookalike.fileio import HEADER_KEY
from lookalike.transfer import (
    export_collection,
    export_lines,
    import_collection,
    read_export_header,
)

FIELDS = [{"name": "language", "type": "varchar", "max_length": 16},
          {"name": "year", "type": "int64"},
          {"name": "score", "type": "float"},
          {"name": "extra", "type": "json"}]
INDEXES = {"vec": {"index_type": "HNSW", "metric_type": "IP", "M": 16, "efConstruction": 64},
           "language": None}


def _documents(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"d{i}", "vec": rng.standard_normal(4).astype(np.float32).tolist(),
             "language": ("en", "fr", "de")[i % 3], "year": 2000 + i,
             "score": float(np.float32(i / 7)), "extra": {"n": i, "tags": ["a", i]}}
            for i in range(n)]


def _source(client: Client, name: str, n: int = 23, first_id: str = "ü é 中 space"):
    collection = client.create_collection(name, FIELDS, INDEXES, dim=4)
    docs = _documents(n)
    docs[0]["id"] = first_id
    collection.index(docs)
    return collection


def _by_id(collection) -> dict[str, dict]:
    return {d["id"]: d for d in collection.iterate(batch_size=7)}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_then_import_gives_back_the_same_collection(client, name, tmp_path, suffix):
    source = _source(client, name)
    path = tmp_path / f"export{suffix}"
    reports: list[tuple[int, int | None]] = []
    assert export_collection(source, path, batch_size=10,
                             on_batch=lambda done, total: reports.append((done, total))) == 23
    assert reports == [(10, 23), (20, 23), (23, 23)]
    assert not list(tmp_path.glob(".*partial"))  # the partial file was renamed onto the target

    copy, written = import_collection(client, path, f"{name}_copy", batch_size=5)
    assert written == 23 and copy.name == f"{name}_copy"
    before, after = source.describe(), copy.describe()
    # the index state is the engine's progress, not part of what is copied
    assert {k: v for k, v in before.items() if k not in ("name", "index")} == {
        k: v for k, v in after.items() if k not in ("name", "index")}
    original, copied = _by_id(source), _by_id(copy)
    assert original.keys() == copied.keys()
    for doc_id, doc in original.items():
        other = dict(copied[doc_id])
        # float32 -> file -> float32: the same bits, not merely close values
        assert np.array_equal(np.asarray(doc["vec"], np.float32), np.asarray(other.pop("vec"), np.float32))
        assert {k: v for k, v in doc.items() if k != "vec"} == other


def test_ids_with_quotes_and_backslashes_survive_export(client, name, tmp_path):
    collection = client.create_collection(name, dim=2)
    # the second id rewrites an unescaped paging filter into one matching everything again;
    # the others, stored out of order, make the export page through keys it must sort itself
    ids = ["a", 'b" or id != "', 'zz quote " backslash \\ é'] + [f"k{n:02d}" for n in (7, 3, 11, 0, 9, 5, 1)]
    collection.index([{"id": doc_id, "vec": [1.0, float(n)]} for n, doc_id in enumerate(ids)])

    def bounded(done: int, total: int | None) -> None:
        assert total is not None and done <= total, "the export read more documents than stored"

    path = tmp_path / "export.jsonl"
    assert export_collection(collection, path, batch_size=3, on_batch=bounded) == len(ids)
    copy, written = import_collection(client, path, f"{name}_copy")
    assert written == len(ids) and sorted(d["id"] for d in copy.iterate(batch_size=2)) == sorted(ids)


@pytest.mark.slow_on_server
def test_import_defaults_to_the_exported_name_and_is_idempotent(client, name, tmp_path):
    source = _source(client, name, n=6)
    path = tmp_path / "export.jsonl"
    export_collection(source, path)
    # the same schema under the same name: reused, documents upserted, no second copy
    collection, written = import_collection(client, path)
    assert (collection.name, written, collection.count()) == (name, 6, 6)
    assert read_export_header(path)["collection"] == name


@pytest.mark.slow_on_server
def test_export_lines_are_the_jsonl_export(client, name, tmp_path):
    source = _source(client, name, n=9)
    path = tmp_path / "export.jsonl"
    export_collection(source, path, batch_size=4)
    lines = list(export_lines(source, batch_size=4))
    assert "".join(lines) == path.read_text(encoding="utf-8")
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    header = json.loads(lines[0])[HEADER_KEY]
    assert header == {"version": 1, "collection": name, "spec": source.spec.to_json(), "count": 9}


@pytest.mark.slow_on_server
def test_import_into_a_collection_with_another_schema_is_a_conflict(client, name, tmp_path):
    path = tmp_path / "export.parquet"
    export_collection(_source(client, name, n=3), path)
    client.create_collection(f"{name}_other", [{"name": "language", "type": "varchar",
                                                "max_length": 8}], dim=4)
    with pytest.raises(ConflictError, match=rf"cannot import .*export.parquet into '{name}_other'"):
        import_collection(client, path, f"{name}_other")
    assert client.collection(f"{name}_other").count() == 0


def _jsonl(path, header: dict | None, docs: list[dict]):
    lines = ([json.dumps({HEADER_KEY: header})] if header is not None else []) + [json.dumps(d) for d in docs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


SPEC = {"dim": 4, "fields": FIELDS, "indexes": INDEXES}


@pytest.mark.parametrize(("header", "message"), [
    (None, "has no lookalike export header"),
    ({"version": 99, "collection": "x", "spec": SPEC}, "export of version 99.*upgrade lookalike"),
    ({"version": 1, "collection": "x"}, "has no schema"),
    ({"version": 1, "collection": "x", "spec": {**SPEC, "dim": "four"}},
     "export header's schema is not valid"),
])
def test_a_file_that_is_not_a_usable_export_is_refused_before_anything_is_created(
        client, name, tmp_path, header, message):
    path = _jsonl(tmp_path / "file.jsonl", header, _documents(2))
    with pytest.raises(InvalidInputError, match=message):
        import_collection(client, path, name)
    assert not client.has_collection(name)


@pytest.mark.slow_on_server
def test_csv_is_neither_exported_nor_imported(client, name, tmp_path):
    source = _source(client, name, n=2)
    with pytest.raises(InvalidInputError, match="export writes JSON Lines .* not CSV"):
        export_collection(source, tmp_path / "out.csv")
    (tmp_path / "in.csv").write_text("id,vec\na,\"[1,0,0,0]\"\n")
    with pytest.raises(InvalidInputError, match="import reads what export writes: .* not CSV"):
        import_collection(client, tmp_path / "in.csv", f"{name}_csv")


@pytest.mark.slow_on_server
def test_a_failed_export_leaves_no_file(client, name, tmp_path):
    source = _source(client, name, n=12)
    path = tmp_path / "export.parquet"

    def stop(done: int, total: int | None) -> None:
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        export_collection(source, path, batch_size=5, on_batch=stop)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidInputError, match="does not exist"):
        export_collection(source, tmp_path / "missing" / "export.jsonl")
    with pytest.raises(InvalidInputError, match="batch_size must be a positive integer"):
        export_collection(source, path, batch_size=0)
