"""The build window: a segment without its graph is searched exactly at BLAS speed with the engine's
results, and a compaction's new segment is served by the replaced segments' graphs until its own
graph lands (patches/build_window.py).

The engine's background worker is held (a task that waits on an event, queued on the engine's own
single-thread executor) so that a segment stays without its graph for as long as a test needs.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import lite_schema

milvus_lite = pytest.importorskip("milvus_lite")
from milvus_lite import MilvusLite  # noqa: E402
from milvus_lite.index.brute_force import BruteForceIndex  # noqa: E402
from milvus_lite.index.faiss_hnsw import FaissHnswIndex  # noqa: E402

from lookalike.engines.lite import patches  # noqa: E402
from lookalike.engines.lite.patches import build_window  # noqa: E402
from lookalike.engines.lite.patches import search as search_patch  # noqa: E402

pytestmark = pytest.mark.skipif(
    not patches.apply(), reason=f"tests of the engine patches, not applied: {patches.describe()['detail']}"
)

DIM = 24
LANGS = ("en", "fr", "de", "fr", "it")
# None, a broad filter (the whole block is scanned and masked) and a narrow one (the few rows
# are gathered first).
FILTERS = (None, 'language == "fr"', "n >= 2950")


class Oracle:
    """What the collection holds: pk -> (vector, language, n); exact search in float64."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.rows: dict[str, tuple[np.ndarray, str, int]] = {}

    def write(self, records: list[dict]) -> None:
        for r in records:
            self.rows[r["id"]] = (np.asarray(r["vec"], dtype=np.float64), r["language"], r["n"])

    def delete(self, pks: list[str]) -> None:
        for pk in pks:
            self.rows.pop(pk, None)

    def score(self, vec: np.ndarray, query: np.ndarray) -> float:
        """What the engine reports as a hit's distance: IP and COSINE similarity, L2 squared distance."""
        q = query.astype(np.float64)
        if self.metric == "IP":
            return float(vec @ q)
        if self.metric == "COSINE":
            return float(vec @ q / (np.linalg.norm(vec) * np.linalg.norm(q)))
        return float(np.sum((vec - q) ** 2))

    def top(self, query: np.ndarray, k: int, expr: str | None) -> list[tuple[str, float]]:
        keep = [pk for pk, (_, lang, n) in self.rows.items()
                if expr is None or (expr.startswith("language") and lang == "fr")
                or (expr.startswith("n >=") and n >= 2950)]
        scores = np.array([self.score(self.rows[pk][0], query) for pk in keep])
        order = np.argsort(scores if self.metric == "L2" else -scores, kind="stable")[:k]
        return [(keep[i], float(scores[i])) for i in order]


def _records(rng: np.random.Generator, pks: list[str], start: int) -> list[dict]:
    vecs = rng.standard_normal((len(pks), DIM)).astype(np.float32)
    return [{"id": pk, "vec": vecs[i].tolist(), "language": LANGS[(start + i) % 5], "n": start + i,
             "meta": {"i": start + i}} for i, pk in enumerate(pks)]


@contextlib.contextmanager
def held(col) -> Iterator[None]:
    """The engine's background worker (compaction, graph builds) held until the block ends."""
    release, started = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait()

    done = col._bg_executor.submit(hold)
    started.wait()
    try:
        yield
    finally:
        release.set()
        done.result()


def _open(tmp_path, metric: str):
    db = MilvusLite(str(tmp_path / "lite"))
    col = db.create_collection("docs", lite_schema(DIM))
    col.create_index("vec", {"index_type": "HNSW", "metric_type": metric, "params": {"M": 8, "efConstruction": 64}})
    col.create_index("language", {"index_type": "INVERTED"})
    col.load()
    return db, col


def _search(col, queries: np.ndarray, expr: str | None, k: int = 10, ef: int = 2000):
    return col.search([q.tolist() for q in queries], top_k=k, expr=expr, output_fields=["n"],
                      search_params={"ef": ef})


def _check(hits, queries: np.ndarray, oracle: Oracle, expr: str | None) -> None:
    for q, got in zip(queries, hits, strict=True):
        want = oracle.top(q, 10, expr)
        assert [h["id"] for h in got] == [pk for pk, _ in want], expr
        for h, (pk, score) in zip(got, want, strict=True):
            assert h["distance"] == pytest.approx(score, rel=1e-4, abs=1e-4)
            assert h["entity"]["n"] == oracle.rows[pk][2]


@pytest.mark.parametrize("metric", ["IP", "COSINE", "L2"])
def test_a_segment_without_its_graph_is_searched_exactly(tmp_path, monkeypatch, metric):
    db, col = _open(tmp_path, metric)
    rng = np.random.default_rng(7)
    oracle = Oracle(metric)
    try:
        with held(col):
            first = _records(rng, [f"a{i}" for i in range(3000)], 0)
            col.insert(first)
            oracle.write(first)
            col.flush()
            newer = _records(rng, [f"a{i}" for i in range(0, 3000, 7)], 3000)  # new versions, in a second segment
            col.upsert(newer)
            oracle.write(newer)
            gone = [f"a{i}" for i in range(1, 3000, 11)]
            col.delete(gone)  # tombstones
            oracle.delete(gone)
            col.flush()
            unflushed = _records(rng, [f"m{i}" for i in range(50)], 2960)  # memtable rows
            col.insert(unflushed)
            oracle.write(unflushed)
            assert all("vec" not in seg.indexes for seg in col._segment_cache.values())
            queries = rng.standard_normal((6, DIM)).astype(np.float32)
            for expr in FILTERS:
                _check(_search(col, queries, expr), queries, oracle, expr)
                _check(_search(col, queries[:1], expr), queries[:1], oracle, expr)
                # the engine's own scan finds the same rows at the same distances
                fast = _search(col, queries, expr)
                with monkeypatch.context() as m:
                    m.setattr(BruteForceIndex, "search", inspect.unwrap(BruteForceIndex.search))
                    slow = _search(col, queries, expr)
                assert [[h["id"] for h in r] for r in fast] == [[h["id"] for h in r] for r in slow]
                for a, b in zip(fast, slow, strict=True):
                    assert [h["distance"] for h in a] == pytest.approx([h["distance"] for h in b], rel=1e-5, abs=1e-5)
            # more rows asked than the filter leaves: every matching row, none twice
            few = _search(col, queries[:2], "n >= 3400", k=100)
            want = {pk for pk, (_, _, n) in oracle.rows.items() if n >= 3400}
            assert 0 < len(want) < 100
            assert all(len(r) == len(want) and {h["id"] for h in r} == want for r in few)
    finally:
        db.close()


def test_the_scan_agrees_with_the_engine_on_ties_and_zero_vectors():
    rng = np.random.default_rng(2)
    block = rng.standard_normal((400, DIM)).astype(np.float32)
    block[10:20] = block[5]  # ten copies of one row: a tie
    block[30] = 0.0  # a zero vector
    query = np.stack([block[5], np.zeros(DIM, np.float32), rng.standard_normal(DIM).astype(np.float32)])
    for metric in ("IP", "COSINE", "L2"):
        index = BruteForceIndex.build(block, metric)
        ids, dists = index.search(query, 12)
        want_ids, want_dists = inspect.unwrap(BruteForceIndex.search)(index, query, 12)
        np.testing.assert_allclose(dists, want_dists, rtol=1e-5, atol=1e-5)
        for row in range(len(query)):
            # equal distances in another order are the same answer; ours breaks ties by row
            pairs = list(zip(np.round(dists[row], 4), ids[row], strict=True))
            assert sorted(pairs) == pairs
            assert set(ids[row][dists[row] < want_dists[row].max() - 1e-4]) == set(
                want_ids[row][want_dists[row] < want_dists[row].max() - 1e-4])


def test_queries_in_threads_while_the_graph_lands(tmp_path):
    db, col = _open(tmp_path, "IP")
    rng = np.random.default_rng(5)
    records = _records(rng, [f"r{i}" for i in range(4000)], 0)
    for r in records:  # unit vectors: each row is its own vector's nearest under IP
        r["vec"] = (np.asarray(r["vec"]) / np.linalg.norm(r["vec"])).tolist()
    vectors = np.asarray([r["vec"] for r in records], dtype=np.float32)
    failures: list[str] = []
    phases: set[bool] = set()
    stop = threading.Event()

    def ask(seed: int) -> None:
        local = np.random.default_rng(seed)
        while not stop.is_set():
            rows = local.integers(0, len(records), 3)
            graph = any("vec" in seg.indexes for seg in col._segment_cache.values())
            hits = _search(col, vectors[rows], None, ef=400)
            phases.add(graph)
            for row, per_query in zip(rows, hits, strict=True):
                ids = [h["id"] for h in per_query]
                if len(ids) != 10 or len(set(ids)) != 10:
                    failures.append(f"lost or duplicated: {ids}")
                if ids[0] != f"r{row}":
                    failures.append(f"r{row} did not find itself first: {ids[:3]}")

    try:
        with held(col):
            col.insert(records)
            col.flush()
            threads = [threading.Thread(target=ask, args=(seed,)) for seed in range(4)]
            for thread in threads:
                thread.start()
            while False not in phases:
                threading.Event().wait(0.01)
        col._wait_for_bg()  # the graph is built and attached while the threads search
        while True not in phases:
            threading.Event().wait(0.01)
        stop.set()
        for thread in threads:
            thread.join()
        assert not failures, failures[:5]
        assert phases == {False, True}
    finally:
        stop.set()
        db.close()


def test_a_compaction_keeps_the_old_graphs_serving_until_the_new_one_is_built(tmp_path, monkeypatch):
    db, col = _open(tmp_path, "IP")
    rng = np.random.default_rng(9)
    oracle = Oracle("IP")
    try:
        # Three segments, each with its graph: the first's rows all deleted before the others
        # were written (so the compaction drops their tombstones with them), ten written again.
        first = _records(rng, [f"x{i}" for i in range(300)], 0)
        col.insert(first)
        col.flush()
        col._wait_for_bg()
        col.delete([f"x{i}" for i in range(300)])
        again = _records(rng, [f"x{i}" for i in range(10)], 300)
        oracle.write(again)
        for b in (1, 2):
            batch = _records(rng, [f"s{b}_{i}" for i in range(700)], 700 * b)
            col.insert(batch if b == 2 else again + batch)
            oracle.write(batch)
            col.flush()
            col._wait_for_bg()
        with held(col):
            # A fourth segment (its graph built by the engine's own function, called here) with
            # newer versions and tombstones.
            batch = _records(rng, [f"s1_{i}" for i in range(0, 700, 5)], 2100)
            col.upsert(batch)
            oracle.write(batch)
            deleted = [f"s2_{i}" for i in range(0, 700, 3)]
            col.delete(deleted)
            oracle.delete(deleted)
            col.flush()
            spec = col._index_specs["vec"]
            for seg in list(col._segment_cache.values()):
                if "vec" not in seg.indexes:
                    col._build_or_load_segment_index(seg, spec)
            old = list(col._segment_cache.values())
            assert len(old) == 4 and all("vec" in seg.indexes for seg in old)
            # The background worker's compaction step, run here: it merges the four segments.
            with col._maintenance_lock:
                for partition in col._manifest.list_partitions():
                    col._compaction_mgr.maybe_compact(partition, col._manifest, col._delta_index)
                col._refresh_segment_cache()
            (merged,) = col._segment_cache.values()
            assert "vec" not in merged.indexes and build_window.handed_off(merged)
            assert "x20" not in col._delta_index._map  # the tombstone is gone; its row is in old
            # Writes after the compaction: a delete and new versions of rows the merge holds.
            later = _records(rng, [f"s2_{i}" for i in range(0, 700, 4)], 2300)
            col.upsert(later)
            oracle.write(later)
            col.delete(["s1_5", "s2_8", "x3"])
            oracle.delete(["s1_5", "s2_8", "x3"])

            calls = {"graph": 0, "scan": 0}
            graph_search, scan = FaissHnswIndex.search, BruteForceIndex.search

            def counted(kind, search):
                def wrapper(self, *args, **kwargs):
                    calls[kind] += 1
                    return search(self, *args, **kwargs)
                return wrapper

            with monkeypatch.context() as m:
                # graphs even where the rows a filter keeps are fewer than ef (searched
                # exactly otherwise: test_lite_speedups): this test is about which graph serves
                m.setattr(search_patch, "EXACT_SCAN_MAX_ROWS", 0)
                m.setattr(FaissHnswIndex, "search", counted("graph", graph_search))
                m.setattr(BruteForceIndex, "search", counted("scan", scan))
                queries = rng.standard_normal((5, DIM)).astype(np.float32)
                for expr in (None, 'language == "fr"'):
                    _check(_search(col, queries, expr), queries, oracle, expr)
            # two queries: the old graphs of the three segments with live rows, and the memtable
            assert calls["graph"] == 2 * 3 and calls["scan"] == 2
            # Asked for more than there is: every live row once, none deleted (though the merge
            # dropped tombstones whose rows the old segments still hold), no older version.
            for hits in _search(col, queries, None, k=len(oracle.rows) + 50):
                assert {h["id"] for h in hits} == set(oracle.rows)
        col._wait_for_bg()  # the merged segment's graph: the hand-off ends
        assert "vec" in merged.indexes and not build_window.handed_off(merged)
        assert not any(h.holds(merged) for h in build_window._handoffs.values())
        _check(_search(col, queries, None), queries, oracle, None)
    finally:
        db.close()
