"""Several segments of one search at once: a small thread pool over a collection's HNSW graphs.

What it fixes. Milvus Lite keeps one HNSW graph per segment (lookalike's write budgets: one per
~130k rows of 768 floats) and searches them one after another, so at 1M rows a query walks ~8
graphs in turn: 21 ms against FAISS's 2.7 ms over one graph on two cores (issue 17).

How. The search group's per-source step (``search.search_sources``: each segment's graph, the
memtable's scan) is replaced by one that hands every source but the first to a process-wide pool
of ``SEARCH_THREADS`` threads and searches the first itself. FAISS and numpy release the GIL while
they search, so the graphs are walked in parallel. The parts come back in source order, and the
merge (top-k by distance, then source, then row: the engine's tie-break) is the search group's own,
so results are those of the one-after-another search (``tests/test_lite_parallel.py``). A search
with one source, the case up to ~130k rows, runs in its own thread as before.

A busy pool never makes a search wait: what the pool has not started by the time the calling
thread has done its own share, the calling thread takes back and does itself (``_fan_out``), so
under load (every core taken by other requests) a search costs what it costs without the pool.

Measured: bench/README.md, "Throughput and concurrency" (`bench/throughput.py --chunks N` makes
several segments and times the pool against the one-after-another search).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

#: Threads of the pool that searches the sources beyond the first (the caller searches the first).
SEARCH_THREADS = max(1, min(8, (os.cpu_count() or 1) - 1))

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def targets() -> list[tuple[Any, str, Callable[[Any], Any]]]:
    """The (owner, attribute, make replacement from original) patches of this module."""
    from . import search

    return [(search, "search_sources", _make_parallel_sources)]


def _executor() -> ThreadPoolExecutor:
    """The pool, started on first use (idle workers end with the interpreter; nothing to shut down)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="lookalike-search")
        return _pool


def _fan_out(calls: list[Callable[[], Any]]) -> list[Any]:
    """Each call's result, in order: the first on this thread, the others handed to the pool; any
    the pool has not started once this thread is done with the first, this thread takes back and
    runs itself (the last first, those the pool is least likely to reach). An exception is
    re-raised here, after every call the pool started has ended (the callers' state, masks and
    snapshots, must outlive them)."""
    pool = _executor()
    futures: list[Future[Any]] = [pool.submit(call) for call in calls[1:]]
    try:
        results: dict[int, Any] = {0: calls[0]()}
        for k in range(len(futures), 0, -1):
            if futures[k - 1].cancel():  # not started: the pool is busy, do it here
                results[k] = calls[k]()
        return [results[k] if k in results else futures[k - 1].result() for k in range(len(calls))]
    finally:
        for future in futures:
            future.cancel()
        # Not the cancelled ones: they count as done only once a worker has dequeued them, which
        # a busy pool may not do for a while.
        wait([future for future in futures if not future.cancelled()])


def _make_parallel_sources(original: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    """Build the replacement for ``search.search_sources`` (same arguments and result)."""

    def search_sources(search: Callable[..., Any], sources: list[tuple[Any, ...]]) -> list[Any]:
        if len(sources) < 2:
            return original(search, sources)
        return _fan_out([functools.partial(search, *source) for source in sources])

    search_sources.__doc__ = original.__doc__
    search_sources.__wrapped__ = original  # type: ignore[attr-defined]
    return search_sources
