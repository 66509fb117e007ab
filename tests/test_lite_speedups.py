"""The Milvus Lite search speedups return exactly what the unpatched engine returns.

A collection is spread over several sealed segments and a memtable, with upserts across them,
flushed and unflushed deletes, and re-inserts after deletes; every search runs twice, through
the patched engine and through the engine's own functions, and once against a numpy oracle.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from conftest import lite_schema

milvus_lite = pytest.importorskip("milvus_lite")
from milvus_lite import CollectionSchema, DataType, FieldSchema, MilvusLite  # noqa: E402
from milvus_lite.engine import collection as engine_collection  # noqa: E402
from milvus_lite.index.brute_force import BruteForceIndex  # noqa: E402
from milvus_lite.index.faiss_hnsw import FaissHnswIndex  # noqa: E402
from milvus_lite.search import executor_indexed  # noqa: E402

from lookalike.engines.lite import patches  # noqa: E402
from lookalike.engines.lite.patches import search as lite_search  # noqa: E402
from lookalike.engines.lite.patches import writes as lite_writes  # noqa: E402

pytestmark = pytest.mark.skipif(
    not patches.apply(), reason=f"tests of the engine patches, not applied: {patches.describe()['detail']}"
)

DIM = 16
LANGS = ("en", "fr", "de", "fr", "it")
FILTERS = (None, 'language == "fr"', 'language in ["de", "it"] and n >= 100')


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class Oracle:
    """What the collection should hold: pk -> (vector, language, n)."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[np.ndarray, str, int]] = {}

    def write(self, records: list[dict]) -> None:
        for r in records:
            self.rows[r["id"]] = (np.asarray(r["vec"], dtype=np.float32), r["language"], r["n"])

    def delete(self, pks: list[str]) -> None:
        for pk in pks:
            self.rows.pop(pk, None)

    def top(self, query: np.ndarray, k: int, expr: str | None) -> list[str]:
        keep = [
            pk for pk, (_, lang, n) in self.rows.items()
            if expr is None
            or (expr.startswith("language ==") and lang == "fr")
            or (expr.startswith("language in") and lang in ("de", "it") and n >= 100)
        ]
        scores = np.array([float(self.rows[pk][0] @ query) for pk in keep])
        return [keep[i] for i in np.argsort(-scores, kind="stable")[:k]]


def _records(rng: np.random.Generator, pks: list[str], start: int) -> list[dict]:
    vecs = _unit(rng, len(pks))
    return [
        {"id": pk, "vec": vecs[i].tolist(), "language": LANGS[(start + i) % 5], "n": start + i}
        for i, pk in enumerate(pks)
    ]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A collection with 3 segments plus memtable rows, upserts and both kinds of tombstone."""
    rng = np.random.default_rng(3)
    db = MilvusLite(str(tmp_path_factory.mktemp("lite")))
    schema = CollectionSchema(fields=[
        FieldSchema(name="id", dtype=DataType.VARCHAR, is_primary=True, max_length=32),
        FieldSchema(name="vec", dtype=DataType.FLOAT_VECTOR, dim=DIM),
        FieldSchema(name="language", dtype=DataType.VARCHAR, max_length=8),
        FieldSchema(name="n", dtype=DataType.INT64),
    ])
    col = db.create_collection("docs", schema)
    col.create_index("vec", {"index_type": "HNSW", "metric_type": "IP",
                             "params": {"M": 8, "efConstruction": 64}})
    col.create_index("language", {"index_type": "INVERTED"})
    col.load()
    oracle = Oracle()

    def write(pks: list[str], start: int, upsert: bool = False) -> None:
        recs = _records(rng, pks, start)
        (col.upsert if upsert else col.insert)(recs)
        oracle.write(recs)

    def delete(pks: list[str]) -> None:
        col.delete(pks)
        oracle.delete(pks)

    write([f"a{i}" for i in range(200)], 0)
    col.flush()
    write([f"a{i}" for i in range(0, 60)], 200, upsert=True)  # newer versions in segment 2
    write([f"b{i}" for i in range(150)], 260)
    delete([f"a{i}" for i in range(60, 80)])  # tombstones flushed with segment 2
    col.flush()
    write([f"a{i}" for i in range(0, 20)], 410, upsert=True)  # a third version of a0..a19
    write([f"c{i}" for i in range(120)], 430)
    col.flush()
    # Unflushed state: memtable rows superseding segment rows, memtable tombstones for rows
    # in segments, and pks deleted then written again.
    write([f"b{i}" for i in range(0, 30)], 550, upsert=True)
    write([f"d{i}" for i in range(40)], 580)
    delete([f"b{i}" for i in range(30, 45)] + [f"c{i}" for i in range(0, 10)] + ["d0", "d1"])
    write(["c0", "c1", "a60"], 620, upsert=True)
    # Segment graphs build in the engine's background worker; a segment searched before its graph
    # is ready is scanned exactly instead, so results would depend on timing.
    col._wait_for_bg()
    yield col, oracle
    db.close()


def _original_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route searches through the engine's own functions for the rest of the test."""
    # inspect.unwrap: past every group wrapping the search (build_window's hand-off too)
    monkeypatch.setattr(engine_collection, "execute_search_with_index",
                        inspect.unwrap(engine_collection.execute_search_with_index))
    monkeypatch.setattr(FaissHnswIndex, "search", FaissHnswIndex.search.__wrapped__)


def _search(col, queries: np.ndarray, expr: str | None, output_fields=None, ef: int = 600):
    return col.search(
        [q.tolist() for q in queries], top_k=10, expr=expr, output_fields=output_fields,
        search_params={"ef": ef},
    )


def test_the_search_patches_wrap_the_engine_once():
    assert hasattr(engine_collection.execute_search_with_index, "__wrapped__")
    assert executor_indexed.execute_search_with_index is engine_collection.execute_search_with_index
    assert not hasattr(FaissHnswIndex.search.__wrapped__, "__wrapped__")
    assert not hasattr(engine_collection.Collection._num_entities.__wrapped__, "__wrapped__")


def test_engine_has_the_state_under_test(engine):
    col, _ = engine
    assert len(col._segment_cache) >= 3  # several sealed segments
    assert col._memtable.size() > 0  # and unflushed rows and tombstones
    assert len(col._memtable.delete_index_snapshot()) > 0


@pytest.mark.parametrize("expr", FILTERS)
def test_same_results_as_the_unpatched_engine(engine, monkeypatch, expr):
    col, _ = engine
    queries = _unit(np.random.default_rng(11), 12)
    for fields in (None, ["id"], ["language"], ["*"]):
        fast = _search(col, queries, expr, fields, ef=32)
        with monkeypatch.context() as m:
            _original_engine(m)
            slow = _search(col, queries, expr, fields, ef=32)
        assert fast == slow


@pytest.mark.parametrize("expr", FILTERS)
def test_results_match_a_numpy_oracle(engine, expr):
    col, oracle = engine
    queries = _unit(np.random.default_rng(5), 20)
    hits = _search(col, queries, expr, ["language", "n"])  # ef above the row count: exact
    for q, got in zip(queries, hits, strict=True):
        assert [h["id"] for h in got] == oracle.top(q, 10, expr)
        for h in got:
            vec, lang, n = oracle.rows[h["id"]]
            assert h["entity"] == {"language": lang, "n": n}
            assert h["distance"] == pytest.approx(float(vec @ q), abs=1e-5)  # IP: similarity


def test_row_count_matches_the_unpatched_engine_and_the_oracle(engine, monkeypatch):
    col, oracle = engine
    fast = col.num_entities
    with monkeypatch.context() as m:
        m.setattr(engine_collection.Collection, "_num_entities", engine_collection.Collection._num_entities.__wrapped__)
        slow = col.num_entities
    assert fast == slow == len(oracle.rows)


def test_deleted_and_superseded_versions_never_come_back(engine):
    col, oracle = engine
    # Query with each stored vector: a row's own vector finds the row first, if it is live.
    pks = sorted(oracle.rows)
    vecs = np.stack([oracle.rows[pk][0] for pk in pks])
    hits = _search(col, vecs, None, ["n"])
    assert [h[0]["id"] for h in hits] == pks
    assert all(h[0]["entity"]["n"] == oracle.rows[pk][2] for h, pk in zip(hits, pks, strict=True))
    found = {h["id"] for per_query in hits for h in per_query}
    assert found <= set(oracle.rows)


def test_segment_masks_are_cached_per_segment_set(engine):
    col, _ = engine
    segments = [s for s in col._segment_cache.values() if s.num_rows]
    first = lite_search._segment_set_masks(segments)
    assert lite_search._segment_set_masks(segments) is first
    # a0..a19 live in the third segment only; their older versions are masked out.
    stale = sum(int((~m).sum()) for m in first.masks if m is not None)
    assert stale == 60 + 20


def test_skipped_pks_are_left_out_as_a_filter_leaves_rows_out(engine):
    """lookalike's exclusion mask (``skip_pks``): live, superseded, deleted, memtable and never
    written pks skipped, alone and with each filter, against the oracle."""
    col, oracle = engine
    queries = _unit(np.random.default_rng(7), 8)
    skip = {*sorted(oracle.rows)[::3], "a70", "b40", "c5", "never-written"}
    assert skip & {f"b{i}" for i in range(30)} and skip & {f"d{i}" for i in range(2, 40)}  # memtable rows too
    segments, tombstones = col._read_snapshot()
    for expr in FILTERS:
        compiled = col._compile_filter(expr) if expr else None
        hits = executor_indexed.execute_search_with_index(
            query_vectors=queries, segments=segments, memtable=col._memtable, delta_index=tombstones, top_k=10,
            metric_type=col.resolve_search_metric("vec", None), pk_field="id", vector_field="vec",
            compiled_filter=compiled, indexed_filter_plan=col._indexed_filter_plan(compiled),
            search_params={"ef": 600}, skip_pks=sorted(skip),  # ef above the row count: exact
        )
        for q, got in zip(queries, hits, strict=True):
            assert [h["id"] for h in got] == [pk for pk in oracle.top(q, len(oracle.rows), expr) if pk not in skip][:10]


def test_rows_a_filter_keeps_up_to_ef_are_scanned_exactly(engine, monkeypatch):
    """A segment whose rows that pass the filter are no more than ef is scanned, not walked as a
    graph (which can miss a row it cannot reach); more rows than ef: the graph. Same answers as
    the oracle either way here."""
    col, oracle = engine
    kinds: list[str] = []
    graph_search, scan = FaissHnswIndex.search, BruteForceIndex.search

    def counted(kind, search):
        def wrapper(self, *args, **kwargs):
            kinds.append(kind)
            return search(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(FaissHnswIndex, "search", counted("graph", graph_search))
    monkeypatch.setattr(BruteForceIndex, "search", counted("scan", scan))
    queries = _unit(np.random.default_rng(9), 3)
    expr = 'language in ["de", "it"] and n >= 100'  # 17 to 64 rows of each segment (the counts say)
    segments = sum(1 for seg in col._segment_cache.values() if seg.num_rows)
    for ef, graphs in ((64, 0), (16, segments)):
        kinds.clear()
        for q, got in zip(queries, _search(col, queries, expr, ef=ef), strict=True):
            if ef == 64:
                assert [h["id"] for h in got] == oracle.top(q, 10, expr)
        assert kinds.count("graph") == graphs, (ef, kinds)


def test_search_through_pymilvus_with_ids_only(tmp_path):
    pymilvus = pytest.importorskip("pymilvus")
    client = pymilvus.MilvusClient(str(tmp_path / "milvus.db"))
    try:
        client.create_collection("c", dimension=DIM, metric_type="IP", id_type="string",
                                 max_length=16)
        vecs = _unit(np.random.default_rng(2), 50)
        client.insert("c", [{"id": f"x{i}", "vector": v.tolist()} for i, v in enumerate(vecs)])
        client.delete("c", ids=["x0"])
        res = client.search("c", [vecs[0].tolist(), vecs[1].tolist()], limit=3,
                            output_fields=["id"])
        assert res[0][0]["id"] != "x0"
        assert res[1][0]["id"] == "x1"
        assert set(res[1][0]["entity"]) == {"id"}  # no vector shipped back
    finally:
        client.close()
        # pymilvus leaves the engine's loopback server running for the process: stop it, or a
        # later test of this process sees it (test_lite_direct checks that none was started).
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(str(tmp_path / "milvus.db"))


def test_flushed_memtable_table_is_the_engines_own(tmp_path, monkeypatch):
    """The columnar flush writes the table the engine's cell-by-cell build writes: same rows,
    same order, same values and nulls, with rows superseded or deleted inside the memtable."""
    from milvus_lite.storage.memtable import MemTable

    db = MilvusLite(str(tmp_path))
    col = db.create_collection("docs", lite_schema(DIM))
    col.create_partition("other")
    rng = np.random.default_rng(5)

    def records(pks: list[str], start: int) -> list[dict]:
        return [
            {**r, "n": None if i % 4 == 0 else r["n"], "meta": {"i": start + i, "tags": ["x"] * (i % 3)}}
            for i, r in enumerate(_records(rng, pks, start))
        ]

    col.insert(records([f"a{i}" for i in range(50)], 0))
    col.insert(records([f"b{i}" for i in range(30)], 50), partition_name="other")
    col.upsert(records([f"a{i}" for i in range(10, 25)], 80))  # supersedes rows of the first batch
    col.delete([f"a{i}" for i in range(40, 45)] + ["b3"])
    col.insert(records(["a41", "b3"], 95))  # written again after the delete
    memtable = col._memtable
    assert len(memtable._insert_batches) == 4

    fast = memtable.flush(known_partitions=["_default", "other"])
    monkeypatch.setattr(MemTable, "_build_data_table", MemTable._build_data_table.__wrapped__)
    slow = memtable.flush(known_partitions=["_default", "other"])
    assert fast.keys() == slow.keys() == {"_default", "other"}
    for partition in fast:
        (fast_data, fast_delta), (slow_data, slow_delta) = fast[partition], slow[partition]
        assert fast_data.schema.equals(slow_data.schema, check_metadata=True)
        assert fast_data.equals(slow_data)
        assert (fast_delta is None) == (slow_delta is None)
    assert fast["_default"][0].num_rows == 50 - 5 + 2  # a41 and b3 written again, both here
    db.close()


def test_write_budgets_are_raised_unless_the_environment_sets_them():
    assert engine_collection.MEMTABLE_MEMORY_LIMIT >= lite_writes.MEMTABLE_BYTES
    assert engine_collection.WAL_SIZE_LIMIT >= lite_writes.WAL_BYTES
    mb = 1 << 20
    assert lite_writes.write_budgets({}, 128 * mb, 256 * mb) == (384 * mb, 1024 * mb)
    assert lite_writes.write_budgets({}, 2048 * mb, 4096 * mb) == (2048 * mb, 4096 * mb)
    chosen = {"MILVUS_LITE_MEMTABLE_MEMORY_LIMIT_BYTES": str(64 * mb)}
    assert lite_writes.write_budgets(chosen, 64 * mb, 256 * mb) == (64 * mb, 256 * mb)


def test_a_memtable_of_new_rows_flushes_without_a_copy(tmp_path, monkeypatch):
    from milvus_lite.storage.memtable import MemTable

    db = MilvusLite(str(tmp_path))
    col = db.create_collection("docs", lite_schema(DIM))
    rng = np.random.default_rng(6)
    for start in (0, 40, 70):
        records = _records(rng, [f"a{i}" for i in range(start, start + 30)], start)
        col.insert([{**r, "meta": {"i": r["n"]}} for r in records])
    memtable = col._memtable
    (fast, _), = memtable.flush(known_partitions=["_default"]).values()
    monkeypatch.setattr(MemTable, "_build_data_table", MemTable._build_data_table.__wrapped__)
    (slow, _), = memtable.flush(known_partitions=["_default"]).values()
    assert fast.equals(slow) and fast.schema.equals(slow.schema, check_metadata=True)
    vectors = fast.column("vec")
    assert [chunk.values.buffers()[1].address for chunk in vectors.chunks] == [
        batch.column("vec").values.buffers()[1].address for batch in memtable._insert_batches
    ]
    db.close()
