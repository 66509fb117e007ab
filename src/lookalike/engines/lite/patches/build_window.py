"""The build window of Milvus Lite 3.2.2: a segment without its HNSW graph yet, searched at BLAS speed.

What it fixes. ``index()`` returns once a segment is written; the engine builds the segment's
graph in the background (~75 s at 100k rows of 768 floats on two cores), and until then searches
the segment with ``BruteForceIndex``: per query it normalises a copy of the whole vector block
(COSINE), or forms the (queries x rows x dim) difference tensor (L2), then loops over the hits
in Python. At 100k x 768 a query took 150-400 ms against 21 ms for numpy's exact search over the
same vectors (issue 17). A compaction made it worse: its merged segment replaced the inputs at
once, so the inputs' graphs stopped serving and every query went back to the slow scan until the
merged segment's graph was built.

How. ``BruteForceIndex.search`` ranks the rows with one matrix product over the segment's own
vector block (no copy; the squared norms COSINE and L2 need are computed once per block and kept
while the block lives), applies the mask of live and filter-matching rows, takes a shortlist of
``top_k + SHORTLIST_MARGIN`` rows per query and computes their distances with the engine's own
``compute_distances``: the same distances as the engine's, over the same rows, so the same
results (ties in distance broken by row, as the engine's merge does). A compaction hands off as
a Milvus server does: when a compaction replaces segments that have their graphs by segments
that have none yet, searches keep using the replaced segments, graphs and all, until every new
segment has its graph. The replaced segments hold exactly the merged rows and more (older
versions, deleted rows, whose tombstones the compaction may have dropped): each row they hold that
the merged segments do not is masked by a tombstone one sequence number above it, so that later
writes of that id stay visible. A row is therefore searched once, in the old segments or the new.

Measured (bench/build_window.py, bench/README.md): see the build-window table there.

Upstream: the BLAS scan would be offered to ``milvus_lite/index/brute_force.py``; the hand-off to
``engine/collection.py`` (``_refresh_segment_cache`` and the search's segment snapshot).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

#: Rows ranked by the matrix product beyond ``top_k`` whose exact distance is computed: float32
#: rounding of the product can reorder rows only within ~1e-6 of each other, far fewer than this.
SHORTLIST_MARGIN = 32
#: Below this share of valid rows the scan gathers them instead of scanning every row.
GATHER_BELOW = 0.125


def targets() -> list[tuple[Any, str, Callable[[Any], Any]]]:
    """The (owner, attribute, make replacement from original) patches of this module."""
    from milvus_lite.engine import collection as engine_collection
    from milvus_lite.index.brute_force import BruteForceIndex
    from milvus_lite.search import executor_indexed

    # collection.py imported the search by name: both bindings (the same function, the search
    # group's) get the one replacement.
    made: dict[int, Callable[..., Any]] = {}

    def handing_off(current: Callable[..., Any]) -> Callable[..., Any]:
        return made.setdefault(id(current), _make_search_handing_off(current))

    return [
        (BruteForceIndex, "search", _make_blas_search),
        (executor_indexed, "execute_search_with_index", handing_off),
        (engine_collection, "execute_search_with_index", handing_off),
        (engine_collection.Collection, "_refresh_segment_cache", _make_refresh_recording_handoffs),
        (engine_collection.Collection, "_ensure_loaded_segments_indexed", _make_builds_ending_handoffs),
    ]


# ── the exact scan ──────────────────────────────────────────────────────────


class _NormCache:
    """Squared row norms of vector blocks, kept while each block lives (keyed by the block's id,
    with a weak reference that drops the entry when the block is freed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._norms: dict[int, tuple[weakref.ref, np.ndarray]] = {}

    def squared(self, block: np.ndarray) -> np.ndarray:
        key = id(block)
        with self._lock:
            hit = self._norms.get(key)
            if hit is not None and hit[0]() is block:
                return hit[1]
        norms = np.einsum("ij,ij->i", block, block)
        try:
            ref = weakref.ref(block, lambda _ref, key=key: self._drop(key, _ref))
        except TypeError:  # a view of a block that cannot be referenced weakly: not kept
            return norms
        with self._lock:
            self._norms[key] = (ref, norms)
        return norms

    def _drop(self, key: int, ref: weakref.ref) -> None:
        with self._lock:
            if key in self._norms and self._norms[key][0] is ref:
                del self._norms[key]


_norms = _NormCache()


def _rank_scores(queries: np.ndarray, block: np.ndarray, metric: str, squared: np.ndarray | None) -> np.ndarray:
    """(nq, rows) scores ordering each query's rows as the metric's distance does (smaller first);
    ``squared``: the rows' squared norms (COSINE and L2)."""
    products = queries @ block.T
    if metric == "IP":
        return -products
    if metric == "COSINE":
        norms = np.sqrt(squared)
        return -products / np.where(norms == 0, 1.0, norms)
    if metric == "L2":
        return squared - 2.0 * products
    raise ValueError(f"unsupported metric {metric!r}")


def _make_blas_search(original: Callable[..., Any]) -> Callable[..., Any]:
    """Build the replacement for ``BruteForceIndex.search`` (same signature, same results)."""
    from milvus_lite.search.distance import compute_distances

    def search(self: Any, queries: np.ndarray, top_k: int, valid_mask: np.ndarray | None = None,
               params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self.metric not in ("IP", "COSINE", "L2"):
            return original(self, queries, top_k, valid_mask, params)
        queries = np.atleast_2d(queries).astype(np.float32, copy=False)
        nq = int(queries.shape[0])
        # The engine's padding: -1 and +inf past the rows found.
        result_ids, result_dists = np.full((nq, top_k), -1, np.int64), np.full((nq, top_k), np.inf, np.float32)
        if self.num_vectors == 0 or top_k <= 0:
            return result_ids, result_dists
        if valid_mask is not None and valid_mask.shape[0] != self.num_vectors:
            raise ValueError(f"valid_mask length {valid_mask.shape[0]} != num_vectors {self.num_vectors}")
        block = self._vectors
        rows = None if valid_mask is None else np.flatnonzero(valid_mask)
        if rows is not None and rows.size == 0:
            return result_ids, result_dists
        ranked_queries = queries
        if self.metric == "COSINE":
            q_norms = np.linalg.norm(queries, axis=1, keepdims=True)
            ranked_queries = queries / np.where(q_norms == 0, 1.0, q_norms)
        if rows is not None and rows.size < GATHER_BELOW * self.num_vectors:
            # Few valid rows: rank only them (a small copy), then map back to block rows.
            subset = block[rows]
            squared = None if self.metric == "IP" else np.einsum("ij,ij->i", subset, subset)
            scores = _rank_scores(ranked_queries, subset, self.metric, squared)
            candidates_of = rows
        else:
            squared = None if self.metric == "IP" else _norms.squared(block)
            scores = _rank_scores(ranked_queries, block, self.metric, squared)
            if rows is not None:
                scores[:, ~valid_mask.astype(bool)] = np.inf
            candidates_of = None
        valid = scores.shape[1] if rows is None or candidates_of is not None else int(rows.size)
        shortlist = min(valid, top_k + SHORTLIST_MARGIN)
        if shortlist < scores.shape[1]:
            picked = np.argpartition(scores, shortlist - 1, axis=1)[:, :shortlist]
        else:
            picked = np.broadcast_to(np.arange(scores.shape[1]), (nq, scores.shape[1]))
        for q in range(nq):
            local = np.sort(picked[q])
            if candidates_of is None and rows is not None:
                local = local[np.isfinite(scores[q, local])]
            ids = local if candidates_of is None else candidates_of[local]
            # The engine's distance over the shortlist; ties go to the lower row.
            dists = np.asarray(compute_distances(queries[q], block[ids], self.metric), dtype=np.float32)
            order = np.argsort(dists, kind="stable")[: min(top_k, ids.size)]
            result_ids[q, : order.size] = ids[order]
            result_dists[q, : order.size] = dists[order]
        return result_ids, result_dists

    search.__doc__ = original.__doc__
    search.__wrapped__ = original  # type: ignore[attr-defined]
    return search


# ── the compaction hand-off ─────────────────────────────────────────────────


class _Handoff:
    """Segments a compaction wrote (``new``, some without their graph yet) and the segments they
    replaced (``old``, with their graphs), with the tombstones that hide from ``old`` every
    row ``new`` does not hold (pk -> one above its highest sequence number in ``old``).

    The new segments are known by id and by a weak reference to their sequence numbers (a
    segment cannot be referenced weakly itself): when one is freed before its graph lands (the
    collection closed or dropped, the segment compacted again), the hand-off ends and frees ``old``.
    """

    def __init__(self, new: list[Any], old: list[Any], hidden: dict[Any, int], vector_field: str) -> None:
        self.old = tuple(old)
        self.hidden = hidden
        self.vector_field = vector_field
        # Every row served by a graph (an old segment flushed just before the compaction may have
        # none yet: it is scanned exactly, as it was before the compaction).
        self.graphs_only = all(vector_field in seg.indexes for seg in old)
        self.new_seqs = {id(seg): weakref.ref(seg.seqs, self._freed) for seg in new}
        self.waiting = {id(seg) for seg in new}  # new segments without their graph yet

    def holds(self, segment: Any) -> bool:
        ref = self.new_seqs.get(id(segment))
        return ref is not None and ref() is segment.seqs

    def _freed(self, _ref: weakref.ref) -> None:
        _end(self)


_handoffs_lock = threading.RLock()  # re-entered by a weak reference's callback
_handoffs: dict[int, _Handoff] = {}  # id(new segment) -> its hand-off, while it waits for graphs


def handed_off(segment: Any) -> bool:
    """Whether searches serve all of ``segment``'s rows from the graphs of the segments it replaced."""
    with _handoffs_lock:
        handoff = _handoffs.get(id(segment))
        return handoff is not None and handoff.holds(segment) and bool(handoff.waiting) and handoff.graphs_only


def _end(handoff: _Handoff) -> None:
    with _handoffs_lock:
        handoff.waiting.clear()
        for key in handoff.new_seqs:
            if _handoffs.get(key) is handoff:
                del _handoffs[key]


def _handoff_of(old: list[Any], new: list[Any], vector_field: str) -> _Handoff | None:
    """The hand-off from ``old`` to ``new``, when ``new`` holds exactly ``old``'s surviving rows
    (a compaction: each of its rows is its id's newest row in ``old``); None otherwise."""
    if not old or not new or not any(vector_field in seg.indexes for seg in old):
        return None
    if all(vector_field in seg.indexes for seg in new):
        return None
    newest: dict[Any, int] = {}
    for seg in old:
        for pk, seq in zip(seg.pks, seg.seqs.tolist(), strict=True):
            if seq > newest.get(pk, -1):
                newest[pk] = seq
    kept: set[Any] = set()
    for seg in new:
        for pk, seq in zip(seg.pks, seg.seqs.tolist(), strict=True):
            if newest.get(pk) != seq or pk in kept:
                return None  # not a compaction of ``old`` (a flush, or rows from elsewhere)
            kept.add(pk)
    hidden = {pk: newest[pk] + 1 for pk in newest.keys() - kept}
    handoff = _Handoff(new, old, hidden, vector_field)
    handoff.waiting -= {id(seg) for seg in new if vector_field in seg.indexes}
    return handoff


def _make_refresh_recording_handoffs(original: Callable[..., Any]) -> Callable[..., Any]:
    """Build the replacement for ``Collection._refresh_segment_cache``: after the engine's own
    refresh, a compaction's replaced and new segments (per partition) become a hand-off, and a
    hand-off whose new segment left the cache ends."""

    def _refresh_segment_cache(self: Any) -> None:
        before = dict(self._segment_cache)
        original(self)
        after = self._segment_cache
        gone = [seg for key, seg in before.items() if key not in after]
        added = [seg for key, seg in after.items() if key not in before]
        for seg in gone:
            with _handoffs_lock:
                handoff = _handoffs.get(id(seg))
            if handoff is not None and handoff.holds(seg):
                _end(handoff)
        if not gone or not added:
            return
        for partition in {seg.partition for seg in added}:
            handoff = _handoff_of([s for s in gone if s.partition == partition],
                                  [s for s in added if s.partition == partition], self._vector_name)
            if handoff is not None and handoff.waiting:
                with _handoffs_lock:
                    for key in handoff.new_seqs:
                        _handoffs[key] = handoff

    _refresh_segment_cache.__doc__ = original.__doc__
    _refresh_segment_cache.__wrapped__ = original  # type: ignore[attr-defined]
    return _refresh_segment_cache


def _graphs_landed(segments: Iterable[Any]) -> None:
    """End the hand-offs whose new segments, among ``segments``, all have their graph now."""
    for seg in segments:
        with _handoffs_lock:
            handoff = _handoffs.get(id(seg))
            if handoff is None or not handoff.holds(seg) or handoff.vector_field not in seg.indexes:
                continue
            handoff.waiting.discard(id(seg))
            done = not handoff.waiting
        if done:
            _end(handoff)


def _make_builds_ending_handoffs(original: Callable[..., Any]) -> Callable[..., Any]:
    """Build the replacement for ``Collection._ensure_loaded_segments_indexed`` (the background
    worker's graph builds): once the new segments of a hand-off have their graphs, it ends and
    the replaced segments are freed."""

    def _ensure_loaded_segments_indexed(self: Any) -> int:
        built = original(self)
        _graphs_landed(self._segments_snapshot())
        return built

    _ensure_loaded_segments_indexed.__doc__ = original.__doc__
    _ensure_loaded_segments_indexed.__wrapped__ = original  # type: ignore[attr-defined]
    return _ensure_loaded_segments_indexed


def _make_search_handing_off(original: Callable[..., Any]) -> Callable[..., Any]:
    """Build the replacement for ``execute_search_with_index``: new segments of a pending hand-off
    (all of them in this snapshot) are searched through the segments they replaced."""

    def execute_search_with_index(query_vectors: np.ndarray, segments: Iterable[Any], memtable: Any,
                                  delta_index: Any, *args: Any, **kwargs: Any) -> list[list[dict]]:
        segments = list(segments)
        with _handoffs_lock:
            found = {id(h): h for seg in segments if (h := _handoffs.get(id(seg))) is not None
                     and h.holds(seg) and h.waiting}
            # A hand-off applies when this read's snapshot holds every one of its new segments.
            present = {id(seg) for seg in segments}
            active = [h for h in found.values() if h.new_seqs.keys() <= present]
        if active:
            replaced = {key for h in active for key in h.new_seqs}
            segments = [seg for seg in segments if id(seg) not in replaced]
            segments += [seg for h in active for seg in h.old]
            delta_index = _with_hidden(delta_index, active)
        return original(query_vectors, segments, memtable, delta_index, *args, **kwargs)

    execute_search_with_index.__doc__ = original.__doc__
    execute_search_with_index.__wrapped__ = original  # type: ignore[attr-defined]
    return execute_search_with_index


def _with_hidden(delta_index: Any, handoffs: list[_Handoff]) -> Any:
    """A copy of the read's tombstones with the hand-offs' hiding ones added (the higher of two
    for one id)."""
    merged = delta_index.frozen_copy()
    tombstones = merged._map
    for handoff in handoffs:
        for pk, seq in handoff.hidden.items():
            if seq > tombstones.get(pk, -1):
                tombstones[pk] = seq
    return merged
