"""Segments searched in parallel (patches/parallel.py) answer exactly what the one-after-another
search answers: FLAT and HNSW, filters, deletes, upserts and memtable rows; and searches stay
right while other threads write and flush."""

from __future__ import annotations

import functools
import threading

import numpy as np
import pytest
from conftest import lite_schema

milvus_lite = pytest.importorskip("milvus_lite")
from milvus_lite import MilvusLite  # noqa: E402

import lookalike  # noqa: E402
from lookalike.engines.lite import patches  # noqa: E402
from lookalike.engines.lite.patches import parallel  # noqa: E402
from lookalike.engines.lite.patches import search as lite_search  # noqa: E402

pytestmark = pytest.mark.skipif(
    not patches.apply(), reason=f"tests of the engine patches, not applied: {patches.describe()['detail']}"
)

DIM = 16
FILTERS = (None, 'language == "fr"', 'language in ["de", "it"] and n >= 100')
LANGS = ("en", "fr", "de", "fr", "it")


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _records(rng: np.random.Generator, pks: list[str], start: int) -> list[dict]:
    vecs = _unit(rng, len(pks))
    return [{"id": pk, "vec": vecs[i].tolist(), "language": LANGS[(start + i) % 5], "n": start + i,
             "meta": {"row": start + i}} for i, pk in enumerate(pks)]


@pytest.fixture(scope="module", params=["HNSW", "FLAT"])
def collection(request, tmp_path_factory):
    """Three sealed segments and memtable rows, with upserts across them and both kinds of tombstone."""
    rng = np.random.default_rng(11)
    db = MilvusLite(str(tmp_path_factory.mktemp("parallel")))
    col = db.create_collection("docs", lite_schema(DIM))
    params = {"M": 8, "efConstruction": 64} if request.param == "HNSW" else {}
    col.create_index("vec", {"index_type": request.param, "metric_type": "IP", "params": params})
    col.create_index("language", {"index_type": "INVERTED"})
    col.load()
    col.insert(_records(rng, [f"a{i}" for i in range(300)], 0))
    col.flush()
    col.upsert(_records(rng, [f"a{i}" for i in range(0, 80)], 300))  # newer versions in segment 2
    col.insert(_records(rng, [f"b{i}" for i in range(250)], 380))
    col.delete([f"a{i}" for i in range(100, 130)])  # tombstones flushed with segment 2
    col.flush()
    col.insert(_records(rng, [f"c{i}" for i in range(200)], 630))
    col.flush()
    # The engine compacts four segments of a size class into one: three stay three.
    col.upsert(_records(rng, [f"b{i}" for i in range(0, 40)], 830))
    col.insert(_records(rng, [f"d{i}" for i in range(150)], 870))
    # Unflushed: memtable rows superseding segment rows, memtable tombstones, re-inserts.
    col.upsert(_records(rng, [f"c{i}" for i in range(0, 30)], 1020))
    col.insert(_records(rng, [f"e{i}" for i in range(60)], 1050))
    col.delete([f"b{i}" for i in range(40, 60)] + [f"d{i}" for i in range(0, 10)] + ["e0"])
    col.upsert(_records(rng, ["d0", "d1", "a100"], 1110))
    col._wait_for_bg()  # every graph built: results must not depend on build timing
    yield col
    db.close()


def _searches(col, sequential: bool, **kwargs) -> list[list[dict]]:
    """The same searches with the pool (as patched) or with the one-after-another step."""
    rng = np.random.default_rng(5)
    queries = _unit(rng, 12).tolist()
    step = lite_search.search_sources
    if sequential:
        lite_search.search_sources = step.__wrapped__
    try:
        return [col.search(queries, top_k=15, expr=expr, output_fields=["n", "meta"], search_params={"ef": 32},
                           **kwargs) for expr in FILTERS]
    finally:
        lite_search.search_sources = step


def test_the_collection_spans_several_segments_searched_by_the_pool(collection):
    segments, _ = collection._read_snapshot()
    assert len([s for s in segments if s.num_rows]) >= 3
    assert lite_search.search_sources.__wrapped__ is not None  # the parallel group is in place
    seen: list[str] = []
    pool_started = threading.Event()

    def noting(search, *source):
        name = threading.current_thread().name
        seen.append(name)
        if name.startswith("lookalike-search"):
            pool_started.set()
        else:  # the caller's share ends once the pool has one: nothing is taken back before
            pool_started.wait(timeout=60)
        return search(*source)

    step = lite_search.search_sources
    lite_search.search_sources = lambda search, sources: step(lambda *s: noting(search, *s), sources)
    try:
        collection.search(_unit(np.random.default_rng(1), 1).tolist(), top_k=5)
    finally:
        lite_search.search_sources = step
    assert any(name.startswith("lookalike-search") for name in seen), seen


def test_parallel_results_equal_the_sequential_ones(collection):
    parallel_hits = _searches(collection, sequential=False)
    sequential_hits = _searches(collection, sequential=True)
    assert parallel_hits == sequential_hits
    assert all(len(per_query) == 15 for hits in parallel_hits for per_query in hits)
    deleted = {f"a{i}" for i in range(101, 130)} | {f"b{i}" for i in range(40, 60)} | {"e0"}
    assert not deleted & {hit["id"] for hits in parallel_hits for per_query in hits for hit in per_query}


def test_partitions_and_ranges_equal_too(collection):
    assert _searches(collection, False, partition_names=["_default"]) == _searches(
        collection, True, partition_names=["_default"])


def test_a_failing_source_raises_in_the_caller():
    def search(source: int) -> int:
        if source == 2:
            raise RuntimeError("source 2 failed")
        return source

    step = lite_search.search_sources
    assert step(search, [(0,), (1,), (3,)]) == [0, 1, 3]
    with pytest.raises(RuntimeError, match="source 2 failed"):
        step(search, [(0,), (1,), (2,), (3,)])
    assert parallel.SEARCH_THREADS >= 1


def test_a_busy_pool_never_makes_the_caller_wait():
    """What the pool has not started when the caller is done with its own share, the caller takes
    back and runs itself, in order; nothing runs twice."""
    release = threading.Event()
    blockers = [parallel._executor().submit(release.wait) for _ in range(parallel.SEARCH_THREADS)]
    ran: list[tuple[int, str]] = []

    def call(k: int) -> int:
        ran.append((k, threading.current_thread().name))
        return k * 10

    # Should the caller wait for the pool after all, the pool is freed late, not never: the
    # assertions below then fail on the threads' names instead of hanging.
    late = threading.Timer(60, release.set)
    late.start()
    try:
        assert parallel._fan_out([functools.partial(call, k) for k in range(4)]) == [0, 10, 20, 30]
    finally:
        late.cancel()
        release.set()
        for blocker in blockers:
            blocker.result(timeout=10)
    assert sorted(k for k, _ in ran) == [0, 1, 2, 3]
    assert {name for _, name in ran} == {threading.current_thread().name}


def test_searches_stay_right_while_other_threads_write_and_flush(tmp_path):
    """Readers hammer similar() while a writer indexes, flushes (new segments) and deletes."""
    rng = np.random.default_rng(2)
    base = _unit(rng, 1200)
    with lookalike.Client(codops="partest", password="x", uri="", data_dir=str(tmp_path)) as client:
        col = client.create_collection("docs", dim=DIM, indexes={"vec": {"index_type": "HNSW", "metric_type": "IP",
                                                                            "M": 8, "efConstruction": 32}})
        col.index([{"id": f"s{i}", "vec": base[i]} for i in range(400)], flush=True)
        stop = threading.Event()
        failures: list[str] = []
        counts = [0, 0, 0]

        def reader(t: int) -> None:
            while not stop.is_set():
                q = base[(t * 97 + counts[t]) % 400]
                hits = col.similar(vectors=q, limit=10)
                scores = [h["distance"] for h in hits]
                if len(hits) != 10 or scores != sorted(scores, reverse=True) or hits[0]["distance"] < 0.999:
                    failures.append(f"{t}: {hits}")
                counts[t] += 1

        readers = [threading.Thread(target=reader, args=(t,)) for t in range(3)]
        for thread in readers:
            thread.start()
        try:
            for start in range(400, 1200, 200):  # four more segments, and deletes of rows never queried
                col.index([{"id": f"s{i}", "vec": base[i]} for i in range(start, start + 200)], flush=True)
                col.delete(ids=[f"s{i}" for i in range(start, start + 20)])
        finally:
            stop.set()
            for thread in readers:
                thread.join()
        assert not failures, failures[:3]
        assert min(counts) > 0
        assert col.count() == 1200 - 4 * 20
