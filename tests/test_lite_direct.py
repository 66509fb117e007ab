"""The embedded engine's in-process search and get return what the same calls through pymilvus
and gRPC return, and fail the same way."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import lite_schema, make_docs
from pymilvus import DataType, FieldSchema

from lookalike import Client
from lookalike.engines.lite import direct as _lite_direct
from lookalike.errors import InvalidInputError, NotFoundError

milvus_lite = pytest.importorskip("milvus_lite")
pytestmark = pytest.mark.skipif(
    milvus_lite.__version__ not in _lite_direct.TESTED_VERSIONS,
    reason=f"the direct path targets Milvus Lite {sorted(_lite_direct.TESTED_VERSIONS)}",
)

FIELDS = [
    FieldSchema(name="language", dtype=DataType.VARCHAR, max_length=16),
    FieldSchema(name="rank", dtype=DataType.INT64),
    FieldSchema(name="tags", dtype=DataType.JSON),
]
PARAMS = {"metric_type": "IP", "params": {"ef": 64}}


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    """A collection with flushed rows, unflushed upserts and a delete, on its own data directory."""
    client = Client(codops="direct", password="", uri="", data_dir=tmp_path_factory.mktemp("direct"))
    col = client.create_collection("docs", fields=FIELDS, indexes={"language": None}, dim=16)
    docs = [
        {"id": d["id"], "vec": d["vec"], "language": d["language"], "rank": i, "tags": {"n": i, "even": i % 2 == 0}}
        for i, d in enumerate(make_docs(300))
    ]
    col.index(docs)
    col.index([{**d, "rank": -d["rank"]} for d in docs[:40]], flush=False)  # newer versions, unflushed
    col.delete(ids=["doc5", "doc6"])
    yield client, col
    client.close()


def _queries(n: int = 8) -> list[np.ndarray]:
    q = np.random.default_rng(9).standard_normal((n, 16)).astype(np.float32)
    return list(q / np.linalg.norm(q, axis=1, keepdims=True))


def test_the_embedded_engine_reads_in_process(lite):
    client, _ = lite
    assert isinstance(client.engine.local, _lite_direct.LiteDirect)


@pytest.mark.parametrize("expr", ["", 'language == "fr"', "rank < 0 or tags[\"even\"] == true"])
@pytest.mark.parametrize("fields", [["id"], ["language", "rank", "tags"], ["vec"]])
def test_search_returns_what_pymilvus_returns(lite, expr, fields):
    client, _ = lite
    query = dict(data=_queries(), filter=expr, limit=10, output_fields=fields, search_params=PARAMS, anns_field="vec")
    direct = client.engine.local.search("docs", **query)
    remote = client.engine.milvus.search("docs", **query)
    assert len(direct) == len(remote) == 8
    for got, want in zip(direct, remote, strict=True):
        assert [h["id"] for h in got] == [h["id"] for h in want]
        # 1e-6: a segment searched by brute force while its graph builds scores in another order of sums
        assert [h["distance"] for h in got] == pytest.approx([h["distance"] for h in want], abs=1e-6)
        for g, w in zip(got, want, strict=True):
            for name in fields:
                if name != "id":
                    assert g["entity"][name] == w["entity"][name]


def test_get_returns_what_pymilvus_returns(lite):
    client, _ = lite
    ids = ["doc1", "doc5", "doc200", "nope", "doc39", "doc1"]
    fields = ["id", "vec", "language", "rank", "tags"]
    direct = client.engine.local.get("docs", ids, fields)
    remote = client.engine.milvus.get("docs", ids=ids, output_fields=fields)
    assert [r["id"] for r in direct] == [r["id"] for r in remote]
    assert "doc5" not in [r["id"] for r in direct]  # deleted
    for g, w in zip(direct, remote, strict=True):
        assert {k: g[k] for k in fields if k != "vec"} == {k: w[k] for k in fields if k != "vec"}
        assert g["vec"] == pytest.approx(w["vec"], abs=0)
    assert next(r for r in direct if r["id"] == "doc1")["rank"] == -1  # the unflushed upsert


def test_errors_are_those_of_the_grpc_path(lite):
    client, col = lite
    engine = client.engine
    bad = dict(data=_queries(1), filter="language === 'fr'", limit=3, output_fields=["id"],
               search_params=PARAMS, anns_field="vec")
    with pytest.raises(InvalidInputError) as direct:
        engine.read("search", engine.local.search, "docs", **bad)
    with pytest.raises(InvalidInputError) as remote:
        engine.read("search", engine.milvus.search, "docs", **bad)
    assert str(direct.value) == str(remote.value)
    with pytest.raises(InvalidInputError, match="filter_expr"):
        col.similar(ids=["doc1"], filter_expr="language === 'fr'")
    with pytest.raises(NotFoundError):
        engine.read("search", engine.local.search, "missing", **{**bad, "filter": ""})


def test_other_engine_versions_read_through_pymilvus(tmp_path, monkeypatch):
    monkeypatch.setattr(milvus_lite, "__version__", "3.9.0")
    client = Client(codops="direct", password="", uri="", data_dir=tmp_path)
    try:
        assert client.engine.local is None
        col = client.create_collection("docs", dim=16)
        col.index([{"id": d["id"], "vec": d["vec"]} for d in make_docs(20)])
        hits = col.similar(ids=["doc3"], limit=1)
        assert hits[0]["id"] == "doc3"
    finally:
        client.close()


@pytest.fixture
def engine(tmp_path):
    """Milvus Lite's own in-process engine, without lookalike around it."""
    from milvus_lite import MilvusLite

    db = MilvusLite(str(tmp_path / "engine"))
    yield db
    db.close()


def _engine_records(n: int, seed: int) -> list[dict]:
    vecs = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    return [{"id": f"d{i}", "vec": v, "language": ("en", "fr")[i % 2], "n": None if i % 3 == 0 else i,
             "meta": {"i": i, "t": ["x"] * (i % 2)}} for i, v in enumerate(vecs)]


def test_column_writes_store_what_the_engines_insert_stores(engine):
    columns = engine.create_collection("columns", lite_schema(16))
    rows = engine.create_collection("rows", lite_schema(16))
    for seed, n in ((1, 50), (2, 30)):
        records = _engine_records(n, seed)
        assert _lite_direct.writes_columns(columns, records, upsert=True)
        _lite_direct.write_columns(columns, records)
        rows.insert(_lite_direct._engine_rows(records))
    assert [len(b) for b in columns._memtable._insert_batches] == [50, 30]
    for ours, theirs in zip(columns._memtable._insert_batches, rows._memtable._insert_batches, strict=True):
        assert ours.equals(theirs)
    ids = [f"d{i}" for i in range(50)]
    assert columns.get(ids) == rows.get(ids)  # the second write superseded d0..d29
    columns.flush()
    rows.flush()
    (ours,), (theirs,) = columns._segment_cache.values(), rows._segment_cache.values()
    assert ours.table.equals(theirs.table)


def test_column_writes_refuse_what_the_engine_refuses_and_store_nothing(engine):
    from milvus_lite.exceptions import SchemaValidationError

    col = engine.create_collection("docs", lite_schema(16))
    records = _engine_records(5, 3)
    records[3]["language"] = "much too long"
    with pytest.raises(SchemaValidationError) as ours:
        _lite_direct.write_columns(col, records)
    with pytest.raises(SchemaValidationError) as theirs:
        col.insert(_lite_direct._engine_rows(records))
    assert str(ours.value) == str(theirs.value)
    records[3]["language"] = "en"
    records[2]["vec"] = records[2]["vec"][:8]
    with pytest.raises(SchemaValidationError, match="vec"):
        _lite_direct.write_columns(col, records)
    assert col.num_entities == 0 and col._next_seq == 1


def test_writes_the_engine_completes_go_through_its_own_insert(engine):
    col = engine.create_collection("docs", lite_schema(16))
    partial = [{k: v for k, v in r.items() if k != "n"} for r in _engine_records(3, 4)]
    assert _lite_direct.writes_columns(col, partial, upsert=False)
    assert not _lite_direct.writes_columns(col, partial, upsert=True)  # the engine fills n in
    auto = engine.create_collection("auto", lite_schema(16, auto_id=True))
    assert not _lite_direct.writes_columns(auto, _engine_records(3, 4), upsert=False)
