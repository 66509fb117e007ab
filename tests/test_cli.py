"""The `lookalike` command, through typer's runner and once as a real subprocess."""

from __future__ import annotations

import csv
import functools
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from docs_session import DOCS, documented_session
from typer.testing import CliRunner

from lookalike import SimilarRequest, transfer
from lookalike.cli import app
from lookalike.client import Client
from lookalike.collection import Collection

DOCS_CLI = DOCS / "cli.md"
FIELDS = ["--field", "language:varchar:16", "--field", "year:int64", "--field", "extra:json"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-data")


@pytest.fixture(scope="module")
def run(data_dir: Path):
    """Run the CLI in-process against this module's data directory."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        env = {"LOOKALIKE_DATA_DIR": str(data_dir), "CODOPS": "ltlrt"}
        return runner.invoke(app, list(args), input=input, env=env)

    return invoke


def ok(result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def _docs(n: int, dim: int = 4, seed: int = 0, prefix: str = "d") -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"{prefix}{i}", "vec": rng.standard_normal(dim).astype(np.float32).tolist(),
             "language": ("en", "fr", "de")[i % 3], "year": 2000 + i, "extra": {"n": i}}
            for i in range(n)]


def _jsonl(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


def _create(run, name: str, *extra: str) -> None:
    ok(run("collections", "create", name, "--dim", "4", *FIELDS, "--index", "vec:HNSW:IP",
           "--index-param", "M=16", "--scalar-index", "language", *extra))


def test_index_wait_and_wait_for_index_report_the_index_state(run, tmp_path):
    _create(run, "waited")
    path = _jsonl(tmp_path / "waited.jsonl", _docs(40, seed=8))
    done = json.loads(ok(run("index", "waited", str(path), "--wait", "--timeout", "120", "--json")))
    assert done == {"indexed": 40, "index": {"indexed_rows": 40, "pending_rows": 0, "built": True}}
    assert ok(run("wait-for-index", "waited")) == "'waited': index over 40 rows, 0 pending.\n"
    assert json.loads(ok(run("collections", "describe", "waited", "--json")))["index"]["built"] is True
    assert run("wait-for-index", "waited", "--timeout", "-1").exit_code == 2  # click refuses it


def test_collections_create_describe_list_and_idempotence(run):
    out = ok(run("collections", "create", "articles", "--dim", "4", *FIELDS,
                 "--index", "vec:HNSW:IP", "--index-param", "M=16", "--index-param",
                 "efConstruction=64", "--scalar-index", "language", "--json"))
    described = json.loads(out)
    assert described["dim"] == 4 and described["count"] == 0
    assert described["indexes"]["vec"] == {"index_type": "HNSW", "metric_type": "IP", "M": 16,
                                           "efConstruction": 64}
    assert described["indexes"]["language"] is None
    assert [f["name"] for f in described["fields"]] == ["language", "year", "extra"]
    assert json.loads(ok(run("collections", "describe", "articles", "--json"))) == described
    assert "articles" in json.loads(ok(run("collections", "list", "--json")))
    # the same schema again is fine; another one is a conflict (exit 4)
    again = ok(run("collections", "create", "articles", "--dim", "4", *FIELDS, "--index",
                   "vec:HNSW:IP", "--index-param", "M=16", "--index-param", "efConstruction=64",
                   "--scalar-index", "language"))
    assert "exists with this schema" in again
    clash = run("collections", "create", "articles", "--dim", "8")
    assert clash.exit_code == 4
    assert clash.stderr.startswith("Error: collection 'articles' exists with another schema")
    assert clash.stderr.count("\n") == 1


def test_create_from_a_schema_file_equals_the_options(run, tmp_path):
    _create(run, "from_options")
    spec = json.loads(ok(run("collections", "describe", "from_options", "--json")))
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({k: spec[k] for k in ("dim", "fields", "indexes")}))
    made = json.loads(ok(run("collections", "create", "from_file", "--schema", str(schema),
                             "--json")))
    assert {k: made[k] for k in ("dim", "fields", "indexes", "metric")} == {
        k: spec[k] for k in ("dim", "fields", "indexes", "metric")}


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_index_each_format_then_get_and_upsert(run, tmp_path, fmt):
    name = f"fmt_{fmt}"
    _create(run, name)
    docs = _docs(30, seed=3)
    path = tmp_path / f"docs.{fmt}"
    if fmt == "jsonl":
        _jsonl(path, docs)
    elif fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["id", "vec", "language", "year", "extra"])
            writer.writeheader()
            writer.writerows({**d, "vec": json.dumps(d["vec"]), "extra": json.dumps(d["extra"])}
                             for d in docs)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # a plain file from another tool: json fields are struct columns, read back as dicts
        pq.write_table(pa.Table.from_pylist(docs), path)
    assert json.loads(ok(run("index", name, str(path), "--batch-size", "7", "--json"))) == {
        "indexed": 30}
    assert json.loads(ok(run("count", name, "--json"))) == {"count": 30}
    # upsert by id: indexing the same file again stores no second copy
    ok(run("index", name, str(path)))
    assert ok(run("count", name)).strip() == "30"
    got = json.loads(ok(run("get", name, "d2", "d1", "missing", "--fields", "language,year",
                            "--json")))
    assert got == [{"id": "d2", "language": "de", "year": 2002},
                   {"id": "d1", "language": "fr", "year": 2001}]


def test_no_upsert_refuses_stored_ids(run, tmp_path):
    _create(run, "no_upsert")
    path = _jsonl(tmp_path / "docs.jsonl", _docs(5))
    ok(run("index", "no_upsert", str(path)))
    result = run("index", "no_upsert", str(path), "--no-upsert")
    assert result.exit_code == 4
    assert "upsert=False" in result.stderr and "Traceback" not in result.stderr


def test_no_normalize_keeps_vectors_as_given(run, tmp_path):
    _create(run, "raw")
    path = _jsonl(tmp_path / "docs.jsonl", [{"id": "a", "vec": [3.0, 0.0, 4.0, 0.0],
                                             "language": "en", "year": 1, "extra": {}}])
    ok(run("index", "raw", str(path), "--no-normalize"))
    assert json.loads(ok(run("get", "raw", "a", "--fields", "vec", "--json")))[0]["vec"] == [
        3.0, 0.0, 4.0, 0.0]
    ok(run("index", "raw", str(path)))
    assert json.loads(ok(run("get", "raw", "a", "--fields", "vec", "--json")))[0]["vec"] == [
        pytest.approx(0.6), 0.0, pytest.approx(0.8), 0.0]


def test_similar_by_ids_vectors_filter_and_exclusion(run, tmp_path):
    _create(run, "sim")
    docs = _docs(40, seed=5)
    ok(run("index", "sim", str(_jsonl(tmp_path / "docs.jsonl", docs))))
    hits = json.loads(ok(run("similar", "sim", "--id", "d1", "--limit", "5", "--json")))
    assert hits[0]["id"] == "d1" and len(hits) == 5
    assert [h["distance"] for h in hits] == sorted((h["distance"] for h in hits), reverse=True)
    excluded = json.loads(ok(run("similar", "sim", "--id", "d1", "--id", "d2", "--exclude-ids",
                                 "--filter", "language == 'fr'", "--fields", "language",
                                 "--json")))
    assert excluded and all(h["language"] == "fr" and h["id"] not in ("d1", "d2")
                            for h in excluded)
    vector_file = tmp_path / "query.json"
    vector_file.write_text(json.dumps(docs[7]["vec"]))
    by_vector = json.loads(ok(run("similar", "sim", "--vector-file", str(vector_file),
                                  "--limit", "1", "--json")))
    assert by_vector[0]["id"] == "d7"
    table = ok(run("similar", "sim", "--id", "d1", "--limit", "2", "--fields", "year"))
    assert "distance" in table and "d1" in table


def test_delete_by_id_and_filter(run, tmp_path):
    _create(run, "del")
    ok(run("index", "del", str(_jsonl(tmp_path / "docs.jsonl", _docs(12)))))
    assert json.loads(ok(run("delete", "del", "--id", "d0", "--id", "d1", "--json"))) == {
        "deleted": 2}
    assert json.loads(ok(run("delete", "del", "--filter", "year >= 2010", "--json"))) == {
        "deleted": 2}
    assert json.loads(ok(run("count", "del", "--json"))) == {"count": 8}
    # left: d2..d9, of which d3, d6 and d9 are in English
    assert json.loads(ok(run("count", "del", "--filter", "language == 'en'", "--json"))) == {
        "count": 3}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_then_import_round_trips_exactly(run, tmp_path, suffix):
    source = f"export_src{suffix[1:]}"
    _create(run, source)
    docs = _docs(57, seed=11, prefix="x")
    docs[0]["id"] = 'quote " backslash \\ é'
    ok(run("index", source, str(_jsonl(tmp_path / "docs.jsonl", docs))))
    exported = tmp_path / f"export{suffix}"
    assert json.loads(ok(run("export", source, str(exported), "--batch-size", "10",
                             "--json")))["exported"] == 57
    target = f"export_copy{suffix[1:]}"
    assert json.loads(ok(run("import", target, str(exported), "--json")))["imported"] == 57

    before = json.loads(ok(run("collections", "describe", source, "--json")))
    after = json.loads(ok(run("collections", "describe", target, "--json")))
    assert {k: v for k, v in before.items() if k != "name"} == {
        k: v for k, v in after.items() if k != "name"}
    ids = [d["id"] for d in docs]
    original = json.loads(ok(run("get", source, *ids, "--json")))
    copied = json.loads(ok(run("get", target, *ids, "--json")))
    assert [d["id"] for d in copied] == ids
    for a, b in zip(original, copied, strict=True):
        assert np.array_equal(np.asarray(a.pop("vec"), np.float32),
                              np.asarray(b.pop("vec"), np.float32))
        assert a == b


def test_import_needs_an_export_header(run, tmp_path):
    result = run("import", "plain", str(_jsonl(tmp_path / "docs.jsonl", _docs(2))))
    assert result.exit_code == 1
    assert "no lookalike export header" in result.stderr
    # import reads what export writes (JSON Lines, Parquet), and its help says so
    (tmp_path / "docs.csv").write_text("id,vec\na,\"[1, 0, 0, 0]\"\n", encoding="utf-8")
    csv_file = run("import", "plain", str(tmp_path / "docs.csv"))
    assert csv_file.exit_code == 1 and "not CSV" in csv_file.stderr
    help_text = ok(run("import", "--help"))
    assert "JSON Lines" in help_text and "Parquet" in help_text and "csv" not in help_text.lower()
    assert "plain" not in json.loads(ok(run("collections", "list", "--json")))


def test_filter_expr_and_its_alias_filter(run, tmp_path):
    _create(run, "filters")
    ok(run("index", "filters", str(_jsonl(tmp_path / "docs.jsonl", _docs(12)))))
    for option in ("--filter-expr", "--filter"):
        assert json.loads(ok(run("count", "filters", option, "language == 'en'", "--json"))) == {
            "count": 4}
        hits = json.loads(ok(run("similar", "filters", "--id", "d0", option, "language == 'fr'",
                                 "--json")))
        assert hits and all(h["id"] in {"d1", "d4", "d7", "d10"} for h in hits)
    for option in ("--output-fields", "--fields"):
        assert json.loads(ok(run("get", "filters", "d1", option, "year", "--json"))) == [
            {"id": "d1", "year": 2001}]
    assert json.loads(ok(run("delete", "filters", "--filter-expr", "year >= 2010", "--json"))) == {
        "deleted": 2}


def test_similar_passes_ef_and_search_params_through(run, tmp_path, library_calls):
    _create(run, "params")
    ok(run("index", "params", str(_jsonl(tmp_path / "docs.jsonl", _docs(20)))))
    for options, expected in [(["--ef", "200"], {"ef": 200}),
                              (["--search-param", "ef=150"], {"ef": 150}),
                              ([], None)]:
        library_calls.clear()
        hits = json.loads(ok(run("similar", "params", "--id", "d1", *options, "--json")))
        assert hits[0]["id"] == "d1"
        [(args, kwargs)] = [(args, kwargs) for name, args, kwargs in library_calls if name == "Collection.similar"]
        assert SimilarRequest.of(*args[1:], **kwargs).search_params == expected
    # a value the engine refuses is the caller's input: exit 1, one line
    refused = run("similar", "params", "--id", "d1", "--search-param", "ef=wide")
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
    twice = run("similar", "params", "--id", "d1", "--ef", "100", "--search-param", "ef=50")
    assert twice.exit_code == 2 and "give ef once" in twice.stderr


# -- recommendations (issue 14): every parameter of Collection.similar has its option -----------

def _recs(run, tmp_path, name: str) -> list[dict]:
    """A collection of 40 documents (three languages, years 2000..2039) for the options below."""
    _create(run, name)
    docs = _docs(40, seed=5)
    ok(run("index", name, str(_jsonl(tmp_path / f"{name}.jsonl", docs))))
    return docs


def _request(library_calls) -> SimilarRequest:
    """The one request the CLI handed Collection.similar."""
    [(args, kwargs)] = [(a, k) for name, a, k in library_calls if name == "Collection.similar"]
    return SimilarRequest.of(*args[1:], **kwargs)


def test_similar_passes_every_recommendation_option_through(run, tmp_path, library_calls):
    _recs(run, tmp_path, "rec_options")
    seen = tmp_path / "seen.txt"
    seen.write_text("d7\n\nd8\n")
    cases = [
        (["--id", "d1", "--id", "d2", "--negative-id", "d3", "--strategy", "average_vector",
          "--weights", "1,0.5", "--exclude-id", "d5", "--exclude-ids-file", str(seen),
          "--group-by", "language", "--group-size", "2", "--offset", "1", "--explain"],
         {"ids": ["d1", "d2"], "negative_ids": ["d3"], "strategy": "average_vector",
          "weights": [1.0, 0.5], "exclude_ids": ["d5", "d7", "d8"], "group_by": "language",
          "group_size": 2, "offset": 1, "explain": True}),
        (["--id", "d1", "--negative-id", "d3", "--strategy", "best_score", "--exclude-ids",
          "--diversity", "0.3", "--candidates", "30", "--min-score", "-0.5",
          "--recency-field", "year", "--recency-scale", "10", "--recency-decay", "0.25",
          "--recency-function", "gauss", "--recency-origin", "2030", "--recency-offset", "2"],
         {"ids": ["d1"], "negative_ids": ["d3"], "strategy": "best_score", "exclude_ids": True,
          "diversity": 0.3, "candidates": 30, "min_score": -0.5,
          "recency": {"field": "year", "scale": 10.0, "decay": 0.25, "function": "gauss",
                      "origin": 2030.0, "offset": 2.0}}),
        # the flag with a list: the list, and the query's own ids
        (["--id", "d1", "--negative-id", "d3", "--exclude-ids", "--exclude-id", "d9"],
         {"ids": ["d1"], "negative_ids": ["d3"], "exclude_ids": ["d1", "d3", "d9"]}),
        (["--id", "d1"], {"ids": ["d1"]}),  # nothing given: the library's defaults
    ]
    for options, expected in cases:
        library_calls.clear()
        result = run("similar", "rec_options", *options, "--json")
        request = _request(library_calls)
        assert request == SimilarRequest(**expected), options
        ok(result)


def test_exclusion_lists_groups_offset_and_explain_give_their_results(run, tmp_path):
    _recs(run, tmp_path, "rec_results")

    def similar(*options: str) -> list[dict]:
        return json.loads(ok(run("similar", "rec_results", "--id", "d1", *options, "--json")))

    plain = similar("--limit", "12", "--fields", "language")
    left_out = [plain[1]["id"], plain[3]["id"]]
    excluded = similar("--limit", "10", "--exclude-id", left_out[0], "--exclude-id", left_out[1])
    assert [h["id"] for h in excluded] == [h["id"] for h in plain if h["id"] not in left_out][:10]
    # a page is the slice of the longer list
    assert [h["id"] for h in similar("--limit", "4", "--offset", "3")] == [
        h["id"] for h in plain[3:7]]
    grouped = similar("--group-by", "language", "--limit", "3", "--fields", "language")
    assert sorted(h["language"] for h in grouped) == ["de", "en", "fr"]
    firsts = list(dict.fromkeys(h["language"] for h in plain))
    assert [h["language"] for h in grouped] == firsts  # groups in the order of their best hit
    explained = similar("--limit", "3", "--explain")
    assert all(isinstance(h["explain"], dict) and h["explain"] for h in explained)
    table = ok(run("similar", "rec_results", "--id", "d1", "--limit", "2", "--explain"))
    assert "explain" in table.splitlines()[1]


def test_an_ids_file_of_non_strings_names_the_item(run, tmp_path):
    _recs(run, tmp_path, "rec_ids_file")
    ids_file = tmp_path / "seen.json"
    ids_file.write_text('["d2", ["d3"]]')
    result = run("similar", "rec_ids_file", "--id", "d1", "--exclude-ids-file", str(ids_file))
    assert result.exit_code == 1, result.stdout
    assert result.stderr == f'Error: {ids_file}: item 1 is list ["d3"], not an id (a string)\n'


def test_similar_batch_gives_what_each_single_call_gives(run, tmp_path):
    _recs(run, tmp_path, "rec_batch")
    requests = [
        {"ids": ["d1"], "limit": 5, "exclude_ids": True},
        {"ids": ["d2", "d4"], "negative_ids": ["d6"], "limit": 3, "output_fields": ["year"]},
        {"ids": ["d3"], "group_by": "language", "limit": 3, "explain": True},
        {"ids": ["d1"], "exclude_ids": ["d2", "d3"], "offset": 2, "limit": 4},
    ]
    singles = [
        ["--id", "d1", "--limit", "5", "--exclude-ids"],
        ["--id", "d2", "--id", "d4", "--negative-id", "d6", "--limit", "3", "--fields", "year"],
        ["--id", "d3", "--group-by", "language", "--limit", "3", "--explain"],
        ["--id", "d1", "--exclude-id", "d2", "--exclude-id", "d3", "--offset", "2", "--limit", "4"],
    ]
    path = _jsonl(tmp_path / "requests.jsonl", requests)
    lines = ok(run("similar-batch", "rec_batch", str(path), "--json")).splitlines()
    assert len(lines) == len(requests)
    for line, options in zip(lines, singles, strict=True):
        assert json.loads(line) == json.loads(ok(run("similar", "rec_batch", *options, "--json")))
    # from stdin, and as tables for people
    piped = ok(run("similar-batch", "rec_batch", "-", "--json", input=path.read_text()))
    assert piped.splitlines() == lines
    tables = ok(run("similar-batch", "rec_batch", str(path)))
    assert "Request 4:" in tables and tables.count("distance") == 4


@pytest.mark.parametrize("options,parameter", [
    (["--diversity", "1.5"], "diversity"),
    (["--group-by", "language", "--group-size", "0"], "group_size"),
    (["--group-by", "no_such_field"], "group_by"),
    (["--strategy", "nearest"], "strategy"),
    (["--offset", "-1"], "offset"),
    (["--offset", "16384"], "offset"),
    (["--weights", "1,-1", "--id", "d2"], "weights"),
    (["--weights", "1,1"], "weights"),  # two weights for one id
    (["--candidates", "2", "--limit", "5"], "candidates"),
    (["--recency-field", "language", "--recency-scale", "1"], "recency"),
    (["--recency-field", "year", "--recency-scale", "1", "--recency-function", "cubic"], "recency"),
])
def test_bad_recommendation_values_exit_1_naming_the_parameter(run, tmp_path, options, parameter):
    if "bad_recs" not in json.loads(ok(run("collections", "list", "--json"))):
        _recs(run, tmp_path, "bad_recs")
    result = run("similar", "bad_recs", "--id", "d1", *options)
    assert result.exit_code == 1, (options, result.stdout, result.stderr)
    assert parameter in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_similar_batch_refuses_bad_lines_and_bad_requests(run, tmp_path):
    _recs(run, tmp_path, "rec_bad_batch")
    not_json = tmp_path / "broken.jsonl"
    not_json.write_text('{"ids": ["d1"]}\n{"ids": [\n')
    result = run("similar-batch", "rec_bad_batch", str(not_json))
    assert result.exit_code == 1 and "line 2" in result.stderr
    not_object = tmp_path / "list.jsonl"
    not_object.write_text('["d1"]\n')
    assert "line 1" in run("similar-batch", "rec_bad_batch", str(not_object)).stderr
    bad = _jsonl(tmp_path / "bad.jsonl", [{"ids": ["d1"]}, {"ids": ["d1"], "diversity": 3}])
    refused = run("similar-batch", "rec_bad_batch", str(bad))
    assert refused.exit_code == 1 and "diversity" in refused.stderr
    unknown = _jsonl(tmp_path / "unknown.jsonl", [{"ids": ["d1"], "limt": 3}])
    assert "limt" in run("similar-batch", "rec_bad_batch", str(unknown)).stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "holds no request" in run("similar-batch", "rec_bad_batch", str(empty)).stderr
    assert run("similar", "rec_bad_batch", "--id", "d1", "--weights", "a,b").exit_code == 2


# -- keywords and meaning together (issue 15): full-text fields, --keywords, `search` ----------

FULL_TEXT_SCHEMA = {
    "dim": 4,
    "fields": [{"name": "language", "type": "varchar", "max_length": 16},
               {"name": "text", "type": "varchar", "max_length": 512, "enable_analyzer": True}],
    "indexes": {"vec": {"index_type": "HNSW", "metric_type": "IP", "M": 16}},
}
WORDS = ["weather", "market", "football", "election", "concert", "harbour", "budget", "school"]


def _full_text(run, tmp_path, name: str) -> list[dict]:
    """A collection with a full-text field `text`, created from a --schema file: 20 documents
    whose words say nothing of their vectors, and `rare`, the one document that says
    "ICE 1127", whose vector is the opposite of d0's (the last a search near d0 would find)."""
    if name in json.loads(ok(run("collections", "list", "--json"))):
        return []
    schema = tmp_path / f"{name}-schema.json"
    schema.write_text(json.dumps(FULL_TEXT_SCHEMA))
    ok(run("collections", "create", name, "--schema", str(schema)))
    docs = [{"id": d["id"], "vec": d["vec"], "language": d["language"],
             "text": f"news about the {WORDS[i % 8]} and the {WORDS[(i * 3 + 1) % 8]}"}
            for i, d in enumerate(_docs(20, seed=7))]
    docs.append({"id": "rare", "vec": [-x for x in docs[0]["vec"]], "language": "de",
                 "text": "the ICE 1127 to Hamburg is late"})
    ok(run("index", name, str(_jsonl(tmp_path / f"{name}.jsonl", docs))))
    return docs


def test_create_from_a_schema_file_with_a_full_text_field(run, tmp_path):
    _full_text(run, tmp_path, "ft_create")
    described = json.loads(ok(run("collections", "describe", "ft_create", "--json")))
    text = next(f for f in described["fields"] if f["name"] == "text")
    assert text["enable_analyzer"] is True and text["max_length"] == 512
    # the user never names the BM25 function's sparse field: the schema is the one declared
    assert [f["name"] for f in described["fields"]] == ["language", "text"]
    table = ok(run("collections", "describe", "ft_create"))
    assert re.search(r"│ text +│ varchar\(512\) +│ full-text", table), table
    # the same schema file again is the same collection
    schema = tmp_path / "again.json"
    schema.write_text(json.dumps(FULL_TEXT_SCHEMA))
    assert "exists with this schema" in ok(run("collections", "create", "ft_create", "--schema",
                                               str(schema)))
    # analyser parameters the engine refuses are the caller's input: exit 1, naming them
    bad = json.loads(json.dumps(FULL_TEXT_SCHEMA))
    bad["fields"][1]["analyzer_params"] = {"tokenizer": "no_such_tokenizer"}
    schema.write_text(json.dumps(bad))
    refused = run("collections", "create", "ft_bad_analyzer", "--schema", str(schema))
    assert refused.exit_code == 1, (refused.stdout, refused.stderr)
    assert "analyzer_params" in refused.stderr and refused.stderr.count("\n") == 1
    assert "ft_bad_analyzer" not in json.loads(ok(run("collections", "list", "--json")))


def test_keyword_options_reach_the_library(run, tmp_path, library_calls):
    _full_text(run, tmp_path, "ft_options")
    cases = [
        (["similar", "ft_options", "--keywords", "ICE 1127"], {"keywords": "ICE 1127"}),
        (["similar", "ft_options", "--id", "d1", "--keywords", "Hamburg", "--fusion", "rrf",
          "--fusion-k", "10", "--keywords-field", "text", "--explain"],
         {"ids": ["d1"], "keywords": "Hamburg", "fusion": "rrf", "fusion_k": 10,
          "keywords_field": "text", "explain": True}),
        (["similar", "ft_options", "--id", "d1", "--keywords", "Hamburg", "--fusion", "weighted",
          "--fusion-weights", "0.7,0.3"],
         {"ids": ["d1"], "keywords": "Hamburg", "fusion": "weighted",
          "fusion_weights": [0.7, 0.3]}),
        # `search`: one string as keywords (and as texts, with an embedder: not this collection)
        (["search", "ft_options", "late train", "--filter-expr", "language == 'de'", "--limit",
          "3", "--output-fields", "language", "--fusion-k", "20", "--explain"],
         {"keywords": "late train", "filter_expr": "language == 'de'", "limit": 3,
          "output_fields": ["language"], "fusion_k": 20, "explain": True}),
        (["search", "ft_options", "Hamburg", "--fusion", "weighted", "--fusion-weights", "0,1",
          "--keywords-field", "text"],
         {"keywords": "Hamburg", "fusion": "weighted", "fusion_weights": [0.0, 1.0],
          "keywords_field": "text"}),
    ]
    for options, expected in cases:
        library_calls.clear()
        result = run(*options, "--json")
        # `search`, like `similar`, is one call of Collection.similar (and the collection's handle)
        assert {name for name, _, _ in library_calls} <= LOOKUPS | {"Collection.similar"}
        assert _request(library_calls) == SimilarRequest(**expected), options
        ok(result)


def test_a_keyword_only_match_is_found_and_explained(run, tmp_path):
    _full_text(run, tmp_path, "ft_results")

    def hits(*options: str) -> list[dict]:
        return json.loads(ok(run(*options, "--json")))

    # meaning alone, near d0, never reaches `rare` (its vector is d0's opposite)
    assert "rare" not in [h["id"] for h in hits("similar", "ft_results", "--id", "d0",
                                                "--limit", "5")]
    # keywords alone find it first; `search` on a collection without an embedder is the same
    keyword_hits = hits("similar", "ft_results", "--keywords", "ICE 1127", "--limit", "3")
    assert keyword_hits[0]["id"] == "rare"
    assert hits("search", "ft_results", "ICE 1127", "--limit", "3") == keyword_hits
    # both, fused: the keyword match stays near the top beside the nearest neighbour
    hybrid = hits("similar", "ft_results", "--id", "d0", "--keywords", "ICE 1127", "--limit", "5",
                  "--explain", "--fields", "language")
    top = {h["id"]: h for h in hybrid[:2]}
    assert set(top) == {"d0", "rare"}, hybrid
    assert top["rare"]["explain"]["keywords"]["rank"] == 1 and top["rare"]["language"] == "de"
    assert top["d0"]["explain"]["dense"]["rank"] == 1
    for hit in hybrid:  # RRF with the default k: the fused score is Σ 1/(60 + rank)
        routes = [hit["explain"][r] for r in ("dense", "keywords") if r in hit["explain"]]
        assert hit["distance"] == pytest.approx(sum(1 / (60 + r["rank"]) for r in routes))
    # the table shows each route's rank and score, one a line
    table = ok(run("similar", "ft_results", "--id", "d0", "--keywords", "ICE 1127", "--limit",
                   "2", "--explain"))
    assert re.search(r"keywords: #1, \d+\.\d{4}", table) and re.search(r"dense: #1, ", table), table
    # weighted fusion with all the weight on the keywords is the keyword ranking
    weighted = hits("similar", "ft_results", "--id", "d0", "--keywords", "ICE 1127", "--fusion",
                    "weighted", "--fusion-weights", "0,1", "--limit", "1")
    assert weighted[0]["id"] == "rare"
    # a filter applies to both routes
    filtered = hits("search", "ft_results", "ICE 1127", "--filter-expr", "language == 'en'")
    assert "rare" not in [h["id"] for h in filtered]


@pytest.mark.parametrize("options,parameter", [
    (["similar", "--keywords", "   "], "keywords"),
    (["similar", "--id", "d1", "--keywords", "x", "--fusion", "max"], "fusion"),
    (["similar", "--id", "d1", "--keywords", "x", "--fusion-k", "0"], "fusion_k"),
    (["similar", "--id", "d1", "--keywords", "x", "--fusion", "weighted", "--fusion-weights",
      "1"], "fusion_weights"),
    (["similar", "--id", "d1", "--keywords", "x", "--fusion", "weighted", "--fusion-weights",
      "-1,2"], "fusion_weights"),
    (["similar", "--keywords", "x", "--keywords-field", "language"], "keywords_field"),
    (["search", "   "], "keywords"),
    (["search", "x", "--fusion", "max"], "fusion"),
    (["search", "x", "--keywords-field", "nowhere"], "keywords_field"),
])
def test_bad_keyword_values_exit_1_naming_the_parameter(run, tmp_path, options, parameter):
    _full_text(run, tmp_path, "ft_bad")
    command, *rest = options
    result = run(command, "ft_bad", *rest)
    assert result.exit_code == 1, (options, result.stdout, result.stderr)
    assert parameter in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_keywords_on_a_collection_without_a_full_text_field_exit_1(run, tmp_path):
    _recs(run, tmp_path, "no_full_text")
    for options in (["similar", "no_full_text", "--keywords", "x"],
                    ["search", "no_full_text", "x"]):
        result = run(*options)
        assert result.exit_code == 1 and "keywords" in result.stderr, (options, result.stderr)
    usage = run("similar", "no_full_text", "--keywords", "x", "--fusion-weights", "a,b")
    assert usage.exit_code == 2 and "--fusion-weights" in usage.stderr


def test_search_with_an_embedder_is_keywords_and_meaning_from_one_string(run, tmp_path,
                                                                          library_calls):
    schema = tmp_path / "notes.json"
    schema.write_text(json.dumps({"embedder": "default", "fields": [
        {"name": "text", "type": "varchar", "max_length": 1000, "enable_analyzer": True}]}))
    ok(run("collections", "create", "ft_notes", "--schema", str(schema)))
    notes = [
        {"id": "storm", "text": "A storm closes the railway line between two cities."},
        {"id": "strike", "text": "Train drivers strike; most trains are cancelled today."},
        {"id": "ice", "text": "Passengers of ICE 1127 wait at the station."},
        {"id": "bake", "text": "A recipe for bread with seeds and honey."},
    ]
    ok(run("index", "ft_notes", str(_jsonl(tmp_path / "notes.jsonl", notes))))
    library_calls.clear()
    hits = json.loads(ok(run("search", "ft_notes", "ICE 1127 delays", "--limit", "3",
                             "--explain", "--json")))
    assert _request(library_calls) == SimilarRequest(texts=["ICE 1127 delays"],
                                                     keywords="ICE 1127 delays", limit=3,
                                                     explain=True)
    assert hits[0]["id"] == "ice", hits
    assert {"dense", "keywords"} <= set(hits[0]["explain"])
    assert "bake" not in [h["id"] for h in hits[:2]]


def test_flags_are_shown_as_flags_and_usage_lines_name_the_arguments(run):
    for path, command in _commands():
        help_text = ok(run(*path, "--help"))
        usage = next(line for line in help_text.splitlines() if "Usage:" in line)
        assert "{" not in usage and "<" not in usage, usage
        assert "<bool>" not in help_text, f"{' '.join(path)}: a flag shown as taking a value"
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        for argument in arguments:
            assert argument.metavar and argument.metavar in usage, (path, usage)
    assert "get [OPTIONS] NAME ID..." in ok(run("get", "--help"))
    assert "import [OPTIONS] NAME FILE" in ok(run("import", "--help"))
    # a flag takes no value: `--json true` leaves `true` as an extra argument
    _create(run, "flags")
    assert run("count", "flags", "--json", "true").exit_code == 2
    assert json.loads(ok(run("count", "flags", "--json"))) == {"count": 0}


def test_text_field_is_embedded_by_the_bound_model(run, tmp_path):
    ok(run("collections", "create", "texts", "--embedder", "default", "--field",
           "language:varchar:8"))
    path = _jsonl(tmp_path / "texts.jsonl", [
        {"id": "cat", "body": "The cat sleeps on the sofa.", "language": "en"},
        {"id": "chat", "body": "Le chat dort sur le canapé.", "language": "fr"},
        {"id": "bond", "body": "Bond yields rose after the central bank's decision.",
         "language": "en"},
    ])
    ok(run("index", "texts", str(path), "--text-field", "body"))
    hits = json.loads(ok(run("similar", "texts", "--id", "cat", "--exclude-ids", "--limit", "1",
                             "--json")))
    assert hits[0]["id"] == "chat"


def test_user_errors_are_one_line_with_their_exit_code(run, tmp_path):
    missing = run("get", "no_such_collection", "a")
    assert missing.exit_code == 3
    assert missing.stderr == ("Error: collection 'no_such_collection' does not exist for "
                              "organisation 'ltlrt'\n")
    _create(run, "errs")
    bad_filter = run("similar", "errs", "--vector-file", str(_vector_file(tmp_path)),
                     "--filter", "language = 'fr'")
    assert bad_filter.exit_code == 1
    assert bad_filter.stderr.startswith("Error: filter_expr")
    assert bad_filter.stderr.count("\n") == 1
    no_file = run("index", "errs", str(tmp_path / "nope.jsonl"))
    assert no_file.exit_code == 1 and "does not exist" in no_file.stderr
    bad_field = run("collections", "create", "x", "--field", "language")
    assert bad_field.exit_code == 2  # a usage error, click's code
    for result in (missing, bad_filter, no_file, bad_field):
        assert "Traceback" not in result.stderr + result.stdout


def _vector_file(tmp_path: Path) -> Path:
    path = tmp_path / "v.json"
    path.write_text("[1, 0, 0, 0]")
    return path


def test_drop_asks_unless_yes(run):
    _create(run, "to_drop")
    declined = run("collections", "drop", "to_drop", input="n\n")
    assert declined.exit_code == 1
    assert "to_drop" in json.loads(ok(run("collections", "list", "--json")))
    ok(run("collections", "drop", "to_drop", input="y\n"))
    assert "to_drop" not in json.loads(ok(run("collections", "list", "--json")))
    _create(run, "to_drop")
    assert json.loads(ok(run("collections", "drop", "to_drop", "--yes", "--json"))) == {
        "dropped": True}


def test_global_options_select_organisation_and_data_dir(run, tmp_path):
    _create(run, "ltlrt_only")
    other_org = json.loads(ok(run("--codops", "bbc", "collections", "list", "--json")))
    assert "ltlrt_only" not in other_org
    elsewhere = json.loads(ok(run("--data-dir", str(tmp_path / "other"), "collections", "list",
                                  "--json")))
    assert elsewhere == []
    bad = run("--codops", "no-such code", "collections", "list")
    assert bad.exit_code == 1 and "organisation code" in bad.stderr


def _commands(group=None, prefix=()):
    """Every command path of the CLI, e.g. ('collections', 'create')."""
    import typer.main

    group = group or typer.main.get_command(app)
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


# Each command and the one library call it makes (docs/cli.md shows the same table). Commands on
# one collection call the Collection method of their name; `collections` commands the Client's.
LIBRARY_CALLS = {
    ("collections", "create"): "Client.create_collection",
    ("collections", "list"): "Client.list_collections",
    ("collections", "describe"): "Collection.describe",
    ("collections", "drop"): "Client.drop_collection",
    ("index",): "Collection.index",
    ("wait-for-index",): "Collection.wait_for_index",
    ("get",): "Collection.get",
    ("similar",): "Collection.similar",
    ("similar-batch",): "Collection.similar_batch",
    ("search",): "Collection.similar",
    ("delete",): "Collection.delete",
    ("count",): "Collection.count",
    ("map",): "Collection.map",
    ("cluster",): "Collection.cluster",
    ("near-duplicates",): "Collection.near_duplicates",
    ("export",): "Collection.export",
    ("import",): "Client.import_collection",
    ("serve",): "http.app.create_app",
    ("eval",): "quality.evaluation.evaluate",
    ("admin", "provision"): "ops.admin.provision",
    ("admin", "list"): "ops.admin.list_organisations",
    ("admin", "revoke"): "ops.admin.revoke",
}
# What a command may call besides it: the collection's handle, what it prints, and the close of
# the client at the end.
LOOKUPS = {"Client.collection", "Client.has_collection", "Collection.describe", "Client.close"}


@pytest.fixture
def library_calls(monkeypatch):
    """The library calls the CLI makes itself, as (name, args, kwargs): a spy on every public
    method of Client and Collection and every function of transfer, which calls through."""
    calls: list[tuple[str, tuple, dict]] = []

    def spy(name, function):
        @functools.wraps(function)
        def recorded(*args, **kwargs):
            if sys._getframe(1).f_globals.get("__name__") == "lookalike.cli":
                calls.append((name, args, kwargs))
            return function(*args, **kwargs)
        return recorded

    for cls in (Client, Collection):
        for attr, function in inspect.getmembers(cls, inspect.isfunction):
            if not attr.startswith("_"):
                monkeypatch.setattr(cls, attr, spy(f"{cls.__name__}.{attr}", function))
    for attr, function in inspect.getmembers(transfer, inspect.isfunction):
        if function.__module__ == transfer.__name__ and not attr.startswith("_"):
            monkeypatch.setattr(transfer, attr, spy(f"transfer.{attr}", function))
    return calls


def test_every_command_calls_one_library_function_of_its_name(run, tmp_path, library_calls):
    assert set(LIBRARY_CALLS) == {path for path, _ in _commands()}
    docs = _jsonl(tmp_path / "docs.jsonl", _docs(6))
    export = tmp_path / "export.jsonl"
    sessions = [
        ("collections", "create", "mapped", "--dim", "4", *FIELDS),
        ("collections", "list"),
        ("collections", "describe", "mapped"),
        ("index", "mapped", str(docs)),
        ("wait-for-index", "mapped", "--timeout", "120"),
        ("get", "mapped", "d1", "d2"),
        ("similar", "mapped", "--id", "d1", "--ef", "80"),
        ("similar-batch", "mapped", str(_jsonl(tmp_path / "requests.jsonl", [{"ids": ["d1"]}]))),
        ("delete", "mapped", "--id", "d0"),
        ("count", "mapped", "--filter-expr", "year > 2001"),
        ("map", "mapped", "--sample", "3", "--id", "d1"),
        ("cluster", "mapped", "--k", "2"),
        ("near-duplicates", "mapped", "--threshold", "0.9"),
        ("export", "mapped", str(export)),
        ("import", "mapped_copy", str(export)),
        ("collections", "drop", "mapped_copy", "--yes"),
    ]
    ran = set()
    for args in sessions:
        path = next(p for p in LIBRARY_CALLS if tuple(args[:len(p)]) == p)
        ran.add(path)
        library_calls.clear()
        ok(run(*args))
        names = [name for name, _, _ in library_calls]
        expected = LIBRARY_CALLS[path]
        assert names.count(expected) == 1, (args, names)
        assert set(names) <= LOOKUPS | {expected}, (args, names)
    # serve, eval and admin need a port, minutes or a server: their one call is read from the code
    commands = dict(_commands())
    for path in set(LIBRARY_CALLS) - ran:
        source = inspect.getsource(commands[path].callback)
        assert LIBRARY_CALLS[path].rsplit(".", 1)[1] + "(" in source, path


def test_docs_cli_md_shows_the_command_to_library_table():
    docs = DOCS_CLI.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `lookalike ([a-z -]+)` \| `([A-Za-z_.]+)` \|", docs, flags=re.M)
    assert {tuple(command.split()): call for command, call in rows} == LIBRARY_CALLS


def test_every_command_has_help(run):
    assert "Usage" in ok(run("--help"))
    for path, command in _commands():
        assert command.help, f"{' '.join(path)} has no help text"
        assert "Usage" in ok(run(*path, "--help"))


def test_every_command_and_option_is_in_docs_cli_md():
    docs = DOCS_CLI.read_text(encoding="utf-8")
    sections = re.split(r"^## ", docs, flags=re.M)
    for path, command in _commands():
        title = "lookalike " + " ".join(path)
        section = next((s for s in sections if s.startswith(f"`{title}`")), None)
        assert section is not None, f"docs/cli.md has no '## `{title}`' section"
        for param in command.params:
            for option in param.opts:
                if option.startswith("--") and option != "--help":
                    assert option in section, f"docs/cli.md: {title} does not mention {option}"


def test_the_documented_session_gives_the_documented_output(tmp_path):
    steps = documented_session("cli.md")
    assert steps[0][0].startswith("export CODOPS=ltlrt LOOKALIKE_DATA_DIR=")
    env = {**os.environ, "CODOPS": "ltlrt", "LOOKALIKE_DATA_DIR": str(tmp_path / "data"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "COLUMNS": "80"}
    for command, expected in steps[1:]:
        if command == "cat articles.jsonl":  # the input file is the one the page shows
            (tmp_path / "articles.jsonl").write_text(expected + "\n", encoding="utf-8")
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=300)
        output = (done.stdout + done.stderr).strip("\n")
        if done.returncode:
            output += f"\n(exit {done.returncode})"
        assert output == expected, f"docs/cli.md: `{command}` printed:\n{output}"


def test_real_subprocess(tmp_path):
    executable = Path(sys.executable).with_name("lookalike")
    env = {**os.environ, "LOOKALIKE_DATA_DIR": str(tmp_path / "data"), "CODOPS": "ltlrt"}

    def lookalike(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(executable), *args], env=env, capture_output=True, text=True,
                              timeout=300)

    created = lookalike("collections", "create", "sub", "--dim", "4", "--field",
                        "language:varchar:16")
    assert created.returncode == 0, created.stderr
    path = _jsonl(tmp_path / "docs.jsonl", [{k: d[k] for k in ("id", "vec", "language")}
                                            for d in _docs(20)])
    indexed = lookalike("index", "sub", str(path), "--json")
    assert indexed.returncode == 0 and json.loads(indexed.stdout) == {"indexed": 20}
    hits = lookalike("similar", "sub", "--id", "d3", "--limit", "3", "--json")
    assert hits.returncode == 0 and json.loads(hits.stdout)[0]["id"] == "d3"
    failed = lookalike("similar", "nowhere", "--id", "d3")
    assert failed.returncode == 3
    assert failed.stderr.strip().splitlines() == [
        "Error: collection 'nowhere' does not exist for organisation 'ltlrt'"]
    # while this process holds the embedded data directory, the command cannot open it
    from lookalike import Client

    with Client(codops="ltlrt", data_dir=tmp_path / "data"):
        held = lookalike("count", "sub")
    assert held.returncode == 5
    assert len(held.stderr.splitlines()) == 1
    assert held.stderr.startswith("Error: cannot open the embedded Milvus data directory")
