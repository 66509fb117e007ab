"""The embedded engine, opened in process: no gRPC server, the index parameters as asked, errors
that tell the truth, and the column writes storing what the engine's own insert stores."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import lite_schema, make_docs

from lookalike import Client
from lookalike.engines.errors import translate_lite_error
from lookalike.engines.lite import direct as _lite_direct
from lookalike.engines.lite import patches
from lookalike.engines.lite.engine import LiteEngine
from lookalike.errors import (
    ConflictError,
    EngineUnavailableError,
    InvalidInputError,
    NotFoundError,
    StorageError,
)

milvus_lite = pytest.importorskip("milvus_lite")

FIELDS = [
    {"name": "language", "type": "varchar", "max_length": 16},
    {"name": "rank", "type": "int64"},
    {"name": "tags", "type": "json"},
]


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    """A FLAT collection with flushed rows, unflushed upserts and a delete, on its own data directory."""
    client = Client(codops="direct", password="", uri="", data_dir=tmp_path_factory.mktemp("direct"))
    col = client.create_collection("docs", fields=FIELDS, indexes={"vec": {"index_type": "FLAT", "metric_type": "IP"},
                                                                   "language": None}, dim=16)
    docs = [
        {"id": d["id"], "vec": d["vec"], "language": d["language"], "rank": i, "tags": {"n": i, "even": i % 2 == 0}}
        for i, d in enumerate(make_docs(300))
    ]
    col.index(docs)
    col.index([{**d, "rank": -d["rank"]} for d in docs[:40]], flush=False)  # newer versions, unflushed
    col.delete(ids=["doc5", "doc6"])
    yield client, col, docs
    client.close()


def test_the_embedded_engine_runs_in_process_without_a_server(lite):
    from milvus_lite.server_manager import server_manager_instance

    client, _, _ = lite
    assert isinstance(client.engine, LiteEngine)
    assert server_manager_instance._servers == {}  # pymilvus's loopback gRPC server never started


def test_search_get_and_count_see_flushed_unflushed_and_deleted_rows(lite):
    _, col, docs = lite
    live = {d["id"]: d for d in docs if d["id"] not in ("doc5", "doc6")}
    ids = list(live)
    matrix = np.asarray([live[i]["vec"] for i in ids], dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    query = matrix[7]
    want = [ids[i] for i in np.argsort(-(matrix @ query), kind="stable")[:10]]
    hits = col.similar(vectors=query, limit=10, output_fields=["rank", "tags"])
    assert [h["id"] for h in hits] == want  # FLAT: exact
    rank = {h["id"]: h["rank"] for h in hits}
    assert all(rank[i] == (-int(i[3:]) if int(i[3:]) < 40 else int(i[3:])) for i in rank)
    assert col.count() == 298 and col.count("rank < 0") == 37  # doc0: -0
    got = col.get(["doc1", "doc5", "nope", "doc39", "doc200"], ["rank", "tags"])
    assert got == [{"id": "doc1", "rank": -1, "tags": {"n": 1, "even": False}},
                   {"id": "doc39", "rank": -39, "tags": {"n": 39, "even": False}},
                   {"id": "doc200", "rank": 200, "tags": {"n": 200, "even": True}}]
    assert sorted(d["id"] for d in col.iterate(batch_size=7, output_fields=["id"])) == sorted(ids)


def test_refusals_are_the_callers_and_missing_collections_not_found(lite):
    client, col, _ = lite
    with pytest.raises(InvalidInputError, match="filter_expr"):
        col.similar(ids=["doc1"], filter_expr="language === 'fr'")
    with pytest.raises(InvalidInputError, match="filter_expr"):
        col.count("no_such_field > 3")
    with pytest.raises(NotFoundError, match="missing"):
        client.engine.count("missing")


HNSW_CHECK = """
import json, sys
from lookalike import Client
from lookalike.engines.lite import patches
with Client(codops="hnsw", data_dir=sys.argv[1]) as client:
    col = client.create_collection("g", indexes={"vec": {"index_type": "HNSW", "metric_type": "L2", "M": 24,
                                                         "efConstruction": 100}}, dim=8)
    col.index([{"id": str(i), "vec": [float(i % 7), 1.0, float(i), 0, 0, 0, 0, 1]} for i in range(500)])
    client.engine.wait_for_index("g")
    db = client.engine._db
    (segment,) = db.get_collection("g", database_name="org_hnsw")._segment_cache.values()
    graph = segment.index._index.hnsw
    print(json.dumps({"patched": patches.is_applied(), "M": graph.nb_neighbors(1),
                      "efConstruction": graph.efConstruction}))
"""


@pytest.mark.parametrize("switch", ["1", "0"])
def test_hnsw_build_parameters_reach_the_faiss_index_patched_or_not(tmp_path, request, switch):
    env = {**os.environ, "LOOKALIKE_LITE_PATCHES": switch}
    run = subprocess.run([sys.executable, "-c", HNSW_CHECK, str(tmp_path)], cwd=str(request.path.parent), env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got == {"patched": switch == "1", "M": 24, "efConstruction": 100}


def test_engine_exceptions_become_errors_that_tell_the_truth(tmp_path):
    from milvus_lite import exceptions as lite
    from milvus_lite.search.filter.exceptions import FilterParseError

    where = str(tmp_path)

    def translated(exc: BaseException):
        return translate_lite_error(exc, data_dir=where, action="write to 'docs'")

    assert type(translated(lite.SchemaValidationError("field 'x' too long"))) is InvalidInputError
    assert type(translated(FilterParseError("bad", "a ==", 3))) is InvalidInputError
    assert type(translated(lite.CollectionNotFoundError("collection 'docs' does not exist"))) is NotFoundError
    assert type(translated(lite.CollectionAlreadyExistsError("exists"))) is ConflictError
    locked = translated(lite.DataDirLockedError("held"))
    assert isinstance(locked, EngineUnavailableError) and where in str(locked) and "one process" in str(locked)
    full = translated(OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(full, StorageError) and full.disk_full and full.http_status == 507
    assert where in str(full) and "free space" in str(full)
    for failure in (OSError(errno.EIO, "Input/output error"), lite.ManifestCorruptedError("both bad"),
                    RuntimeError("faiss: read error"), ValueError("parquet: truncated")):
        error = translated(failure)
        assert type(error) is StorageError and not error.disk_full, failure
        assert where in str(error) and ("backup" in str(error) or "disk" in str(error)), str(error)
    damage = StorageError(f"{where}/manifest.json is damaged")  # the durability patches raise these
    assert translated(damage) is damage


def test_writes_use_the_engines_own_insert_when_the_patches_are_off(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("column writes are for the patched engine only")

    monkeypatch.setattr(patches, "is_applied", lambda: False)
    monkeypatch.setattr("lookalike.engines.lite.engine.write_columns", refuse)
    with Client(codops="direct", data_dir=tmp_path) as client:
        col = client.create_collection("docs", dim=16)
        col.index([{"id": d["id"], "vec": d["vec"]} for d in make_docs(30)])
        assert col.count() == 30 and col.similar(ids=["doc3"], limit=1)[0]["id"] == "doc3"


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
        rows.insert(_lite_direct.engine_rows(records))
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
        col.insert(_lite_direct.engine_rows(records))
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
