"""Near-duplicates: pairs of documents at or above a similarity threshold, and their groups.

Found through the index, never by comparing all pairs: the documents stream past in batches
(``Collection.iterate``), each batch is one batched self-search through the collection's search
path (nq = the batch) for its nearest neighbours scoring at or above the threshold, and the pairs
found are joined into groups by union-find (two documents share a group when a chain of pairs
links them). A document whose every neighbour asked for passed the threshold is searched again
with twice as many, so no pair is lost to the limit. The work is n searches of the index, each
about log n on HNSW: minutes at 100k documents on 2 cores (README, "Clusters and
near-duplicates"), where all pairs would be n²/2 comparisons.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidInputError
from .retrieval import MAX_LIMIT, SimilarQuery, search_params_for
from .schema import ID_FIELD, VECTOR_FIELD, shown

if TYPE_CHECKING:
    from .collection import Collection

DEFAULT_THRESHOLD = 0.95
# Queries per engine call: large enough that the engine's per-call cost vanishes, small enough
# to keep one batch's vectors and hits a few MB.
BATCH_SIZE = 1000
# Neighbours asked for per document at first (itself included); doubled for the few that fill it.
FIRST_LIMIT = 8
# Runs longer than this many documents show a progress bar on a terminal.
PROGRESS_FROM = 10_000


def check_threshold(threshold: Any, metric: str, parameter: str = "threshold") -> float:
    """``threshold`` as a float in the metric's range, else InvalidInputError naming ``parameter``.

    IP and COSINE: a similarity in [-1, 1] (IP collections hold unit vectors unless indexed with
    ``normalize=False``); L2: a squared distance >= 0, the engine's L2 score.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise InvalidInputError(f"{parameter} must be a number, not {shown(threshold)}")
    low, high = (0.0, math.inf) if metric == "L2" else (-1.0, 1.0)
    if not low <= threshold <= high:
        kind = "a squared L2 distance, >= 0" if metric == "L2" else f"a {metric} similarity, in [-1, 1]"
        raise InvalidInputError(f"{parameter} must be {kind} for this {metric} collection, got {threshold}")
    return float(threshold)


def checked_count(collection: Collection, filter_expr: str | None) -> int:
    """How many documents are read: an empty collection gives 0, a filter matching nothing in a
    collection that has documents is refused (InvalidInputError naming ``filter_expr``)."""
    found = collection.count(filter_expr)
    if not found and filter_expr and collection.count():
        raise InvalidInputError(f"filter_expr {filter_expr!r} matches no document")
    return found


def vector_batches(
    collection: Collection, filter_expr: str | None, total: int, progress: bool | None, desc: str,
    batch_size: int = BATCH_SIZE,
) -> Iterator[tuple[list[str], np.ndarray]]:
    """The ids and vectors (float32 rows) of the documents matching ``filter_expr``, a batch at a
    time, with a tqdm bar of ``total`` documents on a terminal for long runs."""
    if progress is None:
        progress = sys.stderr.isatty() and total > PROGRESS_FROM
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="doc", desc=desc, file=sys.stderr)
    ids: list[str] = []
    vectors: list[list[float]] = []
    try:
        for row in collection.iterate(batch_size, [VECTOR_FIELD], filter_expr):
            ids.append(row[ID_FIELD])
            vectors.append(row[VECTOR_FIELD])
            if len(ids) == batch_size:
                yield ids, np.asarray(vectors, dtype=np.float32)
                if bar is not None:
                    bar.update(len(ids))
                ids, vectors = [], []
        if ids:
            yield ids, np.asarray(vectors, dtype=np.float32)
            if bar is not None:
                bar.update(len(ids))
    finally:
        if bar is not None:
            bar.close()


def near_duplicates(
    collection: Collection,
    threshold: float = DEFAULT_THRESHOLD,
    filter_expr: str | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """The pairs of documents scoring at or above ``threshold``, and the groups they link.

    Args:
        collection: the collection searched.
        threshold: a similarity in [-1, 1] for IP and COSINE (pairs at or above it); for L2 a
            squared distance >= 0 (pairs at or below it).
        filter_expr: only documents matching it, paired with each other.
        progress: a progress bar (default: on a terminal, past 10,000 documents).

    Returns:
        ``{"pairs": [{"a", "b", "score"}], "groups": [[id, ...]]}``: each pair once, ``a < b``,
        best score first (then by ids); each group the sorted ids of a connected set of two or
        more documents, largest group first (then by first id). The engine's index finds the
        pairs, so on an approximate index (HNSW) a pair may be missed where the index misses a
        neighbour; a FLAT index finds every one.
    """
    metric = collection.spec.metric
    threshold = check_threshold(threshold, metric)
    total = checked_count(collection, filter_expr)
    scores: dict[tuple[str, str], float] = {}
    for ids, vectors in vector_batches(collection, filter_expr, total, progress, "near-duplicates"):
        _pairs_of_batch(collection, ids, vectors, threshold, filter_expr, scores)
    better = -1.0 if metric == "L2" else 1.0
    pairs = [{"a": a, "b": b, "score": score}
             for (a, b), score in sorted(scores.items(), key=lambda item: (-better * item[1], item[0]))]
    return {"pairs": pairs, "groups": groups_of(scores)}


def _pairs_of_batch(
    collection: Collection, ids: list[str], vectors: np.ndarray, threshold: float,
    filter_expr: str | None, scores: dict[tuple[str, str], float],
) -> None:
    """Add the pairs of one batch's documents to ``scores`` (keyed by the sorted pair).

    The batch goes to the engine as one search (``SimilarQuery.engine_search``, the engine call
    of ``similar_batch`` without its per-request planning and shaping, which cost as much as the
    search itself here: the queries are stored vectors, checked already).
    """
    query = SimilarQuery(collection)
    sign = -1.0 if collection.spec.metric == "L2" else 1.0  # compared as "higher is closer"
    limit = FIRST_LIMIT
    todo = list(range(len(ids)))
    while todo:
        params = search_params_for(collection.spec, None, limit, wide=bool(filter_expr))
        hits = query.engine_search(list(vectors[todo]), filter_expr or "", limit, [], params, filter_expr)
        full = []
        for position, found in zip(todo, hits, strict=True):
            own = ids[position]
            close = [hit for hit in found if sign * hit["distance"] >= sign * threshold]
            for hit in close:
                if hit[ID_FIELD] != own:
                    scores[min(own, hit[ID_FIELD]), max(own, hit[ID_FIELD])] = float(hit["distance"])
            if len(close) == limit:  # every neighbour asked for passed: there may be more
                full.append(position)
        if limit >= MAX_LIMIT:
            return
        todo, limit = full, min(2 * limit, MAX_LIMIT)


def groups_of(pairs: Any) -> list[list[str]]:
    """The connected components of the pairs (an iterable of (a, b)), by union-find with path
    halving; each sorted, largest first, then by first id."""
    parent: dict[str, str] = {}

    def root(item: str) -> str:
        parent.setdefault(item, item)
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[str, list[str]] = {}
    for item in parent:
        members.setdefault(root(item), []).append(item)
    return sorted((sorted(group) for group in members.values()), key=lambda group: (-len(group), group[0]))
