"""The rescoring stages of a recommendation, as small pure functions over candidate arrays.

``retrieval.py`` fetches candidates from the engine and runs these in the documented order:
filter and exclusions → candidates from the index → recency → ``min_score`` → group caps → MMR →
``offset``/``limit``. Every stage works on *scores* where higher is better: a similarity for IP
and COSINE, minus the distance for L2 (Milvus's L2 is the squared Euclidean distance).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from .errors import InvalidInputError
from .schema import CollectionSpec, shown

DECAY_FUNCTIONS = ("exp", "gauss", "linear")
STRATEGIES = ("average_vector", "best_score")
NUMERIC_TYPES = ("int8", "int16", "int32", "int64", "float", "double")
GROUPABLE_TYPES = ("bool", "int8", "int16", "int32", "int64", "varchar")


def similarities(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """The (len(a), len(b)) matrix of scores between two sets of vectors, higher is closer:
    the inner product (IP), the cosine (COSINE), minus the squared distance (L2)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if metric == "L2":
        return -(np.sum(a * a, axis=1)[:, None] + np.sum(b * b, axis=1)[None, :] - 2.0 * a @ b.T)
    if metric == "COSINE":
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
    return a @ b.T


def query_vector(
    positives: np.ndarray, negatives: np.ndarray | None, weights: np.ndarray | None, metric: str
) -> np.ndarray:
    """``average_vector``: the weighted mean of the positives, or with negatives
    2·mean(positives) − mean(negatives); re-normalised for IP and COSINE, kept as is for L2."""
    pos = np.asarray(positives, dtype=np.float64)
    if weights is None and len(pos) == 1:  # one example, the common query: its own vector
        query = pos[0]
    else:
        w = np.ones(len(pos)) if weights is None else np.asarray(weights, dtype=np.float64)
        query = (w[:, None] * pos).sum(axis=0) / w.sum()
    if negatives is not None and len(negatives):
        query = 2.0 * query - np.asarray(negatives, dtype=np.float64).mean(axis=0)
    if metric != "L2":
        norm = float(np.linalg.norm(query))
        if norm == 0.0 or not math.isfinite(norm):
            raise InvalidInputError("the query vectors cancel out: their (weighted) mean is the zero vector")
        query = query / norm
    return query.astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def best_scores(
    candidates: np.ndarray, positives: np.ndarray, negatives: np.ndarray, metric: str
) -> tuple[np.ndarray, BestScoreParts]:
    """``best_score``: p = max similarity to any positive, n = max similarity to any negative;
    the score is sigmoid(p) if p > n, else −sigmoid(n) (Qdrant's). No positives: −sigmoid(n).

    Returns:
        The scores, and the parts they were made of (for ``explain``).
    """
    # one similarity matrix against every example: the candidates converted once
    sims = similarities(candidates, np.concatenate([positives, negatives]), metric)
    parts = BestScoreParts(*_nearest(sims[:, : len(positives)]), *_nearest(sims[:, len(positives):]))
    p, n = parts.positive, parts.negative
    scores = np.where(p > n, sigmoid(np.where(np.isfinite(p), p, 0.0)), -sigmoid(np.where(np.isfinite(n), n, 0.0)))
    return scores, parts


class BestScoreParts(NamedTuple):
    """Per candidate: its similarity to its nearest positive and nearest negative (−inf where
    there are none) and which example that is (its index, −1 where there are none)."""

    positive: np.ndarray
    nearest_positive: np.ndarray
    negative: np.ndarray
    nearest_negative: np.ndarray


def _nearest(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if sims.shape[1] == 0:
        return np.full(len(sims), -np.inf), np.full(len(sims), -1)
    return sims.max(axis=1), sims.argmax(axis=1)


@dataclasses.dataclass(frozen=True)
class Recency:
    """Milvus's decay ranker over a numeric field (see :func:`decay_factors`)."""

    field: str
    scale: float
    decay: float = 0.5
    function: str = "exp"
    origin: float = 0.0
    offset: float = 0.0


def check_recency(spec: CollectionSpec, recency: Any, now: float | None = None) -> Recency | None:
    """``recency`` checked: a dict with ``field`` (a numeric field), ``scale`` > 0, ``decay`` in
    (0, 1) (default 0.5), ``function`` (exp, gauss, linear; default exp), ``origin`` (default now,
    in Unix seconds) and ``offset`` ≥ 0 (default 0). L2 collections are refused: a distance
    multiplied by a factor < 1 would move old items closer."""
    if recency is None:
        return None
    if not isinstance(recency, Mapping):
        raise InvalidInputError(
            f"recency must be a dict such as {{'field': 'date', 'scale': 86400}}, not {shown(recency)}"
        )
    unknown = sorted(set(recency) - {f.name for f in dataclasses.fields(Recency)})
    if unknown:
        raise InvalidInputError(
            f"recency has no key {', '.join(map(repr, unknown))} "
            "(it takes field, scale, decay, function, origin, offset)"
        )
    name = recency.get("field")
    field = spec.field(name) if isinstance(name, str) else None
    if field is None or field.type not in NUMERIC_TYPES:
        numeric = [f.name for f in spec.fields if f.type in NUMERIC_TYPES]
        raise InvalidInputError(
            f"recency['field'] = {shown(name)} is not a numeric field of the collection "
            f"(numeric fields: {', '.join(numeric) or 'none'})"
        )
    if spec.metric == "L2":
        raise InvalidInputError(
            f"recency = {shown(dict(recency))}: decay applies to similarities (IP, COSINE); this collection's "
            "metric is L2, where multiplying a distance by a factor would favour old items"
        )

    def number(key: str, default: float | None, low: float, high: float, open_low: bool = False,
               open_high: bool = False) -> float:
        value = recency.get(key, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (low < value if open_low else low <= value) and (value < high if open_high else value <= high)
        if not ok:
            raise InvalidInputError(
                f"recency[{key!r}] must be a number in {'(' if open_low else '['}{low}, {high}"
                f"{')' if open_high else ']'}, not {shown(value)}"
            )
        return float(value)

    function = recency.get("function", "exp")
    if function not in DECAY_FUNCTIONS:
        raise InvalidInputError(
            f"recency['function'] must be one of {', '.join(DECAY_FUNCTIONS)}, not {shown(function)}"
        )
    now = time.time() if now is None else now
    return Recency(
        field=name,
        scale=number("scale", None, 0, math.inf, open_low=True, open_high=True),
        decay=number("decay", 0.5, 0, 1, open_low=True, open_high=True),
        function=function,
        origin=now if recency.get("origin") is None else number("origin", None, -math.inf, math.inf),
        offset=number("offset", 0, 0, math.inf, open_high=True),
    )


def decay_factors(values: np.ndarray, recency: Recency) -> np.ndarray:
    """Milvus's decay functions. With d = max(0, |x − origin| − offset):
    exp = exp(ln(decay)/scale · d); gauss = exp(ln(decay) · d²/scale²);
    linear = max(0, (s − d)/s) with s = scale/(1 − decay). Each is ``decay`` at d = scale."""
    x = np.asarray(values, dtype=np.float64)
    d = np.maximum(0.0, np.abs(x - recency.origin) - recency.offset)
    log_decay = math.log(recency.decay)
    if recency.function == "exp":
        return np.exp(log_decay / recency.scale * d)
    if recency.function == "gauss":
        return np.exp(log_decay * d * d / (recency.scale * recency.scale))
    s = recency.scale / (1.0 - recency.decay)
    return np.maximum(0.0, (s - d) / s)


def cap_groups(order: Sequence[int], groups: Sequence[Hashable], group_size: int) -> list[int]:
    """Of the candidates in ``order`` (best first), at most ``group_size`` per group value."""
    taken: dict[Hashable, int] = {}
    kept = []
    for i in order:
        if taken.get(groups[i], 0) < group_size:
            taken[groups[i]] = taken.get(groups[i], 0) + 1
            kept.append(i)
    return kept


def mmr(
    order: Sequence[int], scores: np.ndarray, vectors: np.ndarray, diversity: float, metric: str
) -> Iterator[tuple[int, float]]:
    """Maximal marginal relevance over the candidates ``order``: repeatedly the candidate d with
    the highest (1 − diversity)·score(d) − diversity·max over chosen s of sim(d, s) (the first
    pick: the best score). diversity 0 is the plain ranking, 1 the most diverse.

    Yields:
        ``(candidate, its MMR value)`` in selection order (the caller stops when it has enough).
    """
    pool = list(order)
    if not pool:
        return
    # the pool's rows taken first, then widened: the candidates' vectors may be many more
    vecs = np.asarray(vectors)[pool].astype(np.float64)
    if metric == "COSINE":  # normalised once here, not at every pick: the same similarities
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-30)
    squares = np.einsum("ij,ij->i", vecs, vecs) if metric == "L2" else None
    rel = (1.0 - diversity) * np.asarray(scores, dtype=np.float64)[pool]
    value = rel.copy()  # the first pick: no penalty yet
    penalty = np.full(len(pool), -np.inf)
    picked = np.zeros(len(pool), dtype=bool)
    for _ in range(len(pool)):
        best = int(np.argmax(value))  # ties: the earlier (better scored) candidate
        yield pool[best], float(value[best])
        picked[best] = True
        # similarities(vecs, vecs[best]) of every candidate: one matrix-vector product a pick
        sims = vecs @ vecs[best]
        if squares is not None:
            sims = 2.0 * sims - squares - squares[best]
        np.maximum(penalty, sims, out=penalty)
        np.subtract(rel, diversity * penalty, out=value)
        value[picked] = -np.inf


def page(
    ranked: Sequence[int], groups: Sequence[Hashable] | None, offset: int, limit: int
) -> list[int]:
    """``offset``/``limit`` over the ranked candidates; with groups they count groups: groups in
    the order of their first hit, each group's hits together in ranked order."""
    if groups is None:
        return list(ranked[offset : offset + limit])
    members: dict[Hashable, list[int]] = {}
    for i in ranked:
        members.setdefault(groups[i], []).append(i)
    chosen = list(members)[offset : offset + limit]
    return [i for g in chosen for i in members[g]]


def history_weights(
    history: Iterable[tuple[str, float]], half_life: float, now: float | None = None
) -> tuple[list[str], list[float]]:
    """Weights for ``retrieve_similar(ids=..., weights=...)`` from a viewing history.

    Each view of an item counts 0.5^(age / half_life), age = now − view time (same unit as
    ``half_life``, e.g. seconds); an item viewed several times sums its views.

    Args:
        history: ``(id, view time)`` pairs, view times in Unix seconds (or any one unit).
        half_life: how long until a view counts half, > 0.
        now: the present, default ``time.time()``.

    Returns:
        ``(ids, weights)``, ids in order of their first view.
    """
    if isinstance(half_life, bool) or not isinstance(half_life, (int, float)) or not 0 < half_life < math.inf:
        raise InvalidInputError(f"half_life must be a positive number, not {shown(half_life)}")
    now = time.time() if now is None else now
    weights: dict[str, float] = {}
    for position, entry in enumerate(history):
        try:
            item, seen = entry
            age = max(0.0, float(now) - float(seen))
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"history[{position}] must be an (id, view time) pair, not {shown(entry)}"
            ) from None
        weights[item] = weights.get(item, 0.0) + 0.5 ** (age / half_life)
    if not weights:
        raise InvalidInputError("history is empty")
    return list(weights), list(weights.values())


def check_weights(weights: Any, count: int, what: str) -> np.ndarray | None:
    """One finite weight ≥ 0 per example, not all zero."""
    if weights is None:
        return None
    try:
        array = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 1 or isinstance(weights, (str, bytes, Mapping)):
        raise InvalidInputError(f"weights must be a list of numbers, not {shown(weights)}")
    if len(array) != count:
        raise InvalidInputError(f"weights has {len(array)} values for {count} {what}: give one per {what.rstrip('s')}")
    if not np.all(np.isfinite(array)) or np.any(array < 0) or not array.sum() > 0:
        raise InvalidInputError(f"weights must be finite, ≥ 0 and not all zero, not {shown(weights)}")
    return array


def explain_entry(**parts: Any) -> dict[str, Any]:
    """An ``explain`` dict without the parts that do not apply (None)."""
    return {k: v for k, v in parts.items() if v is not None}
