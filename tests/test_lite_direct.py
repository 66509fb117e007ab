"""The embedded engine's in-process search and get return what the same calls through pymilvus
and gRPC return, and fail the same way."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_docs
from pymilvus import DataType, FieldSchema

from lookalike import Client, _lite_direct
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
