"""Keywords and meaning together: the checks of a hybrid query's parameters and the two fusions.

A hybrid query searches two *routes* (the vector index, "dense", and a full-text field's BM25,
"keywords"), each with the same filter and exclusions, and fuses their ranked lists here, in the
library, so the fusion is the same on every engine and each hit can say where it came from:

- ``rrf`` (reciprocal rank fusion, Milvus's ``RRFRanker``): score = Σ over the routes that
  returned the hit of 1 / (k + rank), ranks counted from 1.
- ``weighted`` (Milvus's ``WeightedRanker`` with ``norm_score=True``): score = Σ over the routes
  that returned the hit of weight × normalised score, each route's score normalised as Milvus
  normalises it (``normalised``); a route that did not return the hit adds 0.

Equal fused scores (``tie_key``). RRF ties whenever two hits' ranks give the same sum, most often
a hit that only one route returned at rank r against a hit that only the other returned at rank r.
Ties go first to the hit with the better best rank (one route's confident pick before two routes'
lukewarm ones), then to the keyword route, then to the dense one. Why keywords before meaning: the
dense route ranks every document, related or not, while the keyword route returns only documents
that share a word with the query; at equal rank, the keyword hit has evidence the dense one may
lack (on rare-token queries, an identifier found only by its words, this is the difference
between the answer at rank 1 and at rank 2: the README's hybrid figures). Weighted ties go by the
rank in the heavier route, then in the other (keywords first when the weights are equal), so that
weights [0, 1] give the keyword ranking exactly and [1, 0] the dense one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import InvalidInputError
from .schema import CollectionSpec, shown

FUSIONS = ("rrf", "weighted")
ROUTES = ("dense", "keywords")  # the order of fusion_weights: [meaning, keywords]
DEFAULT_K = 60  # Milvus's RRFRanker default
MAX_KEYWORDS = 10_000  # characters: a query, not a document


@dataclasses.dataclass(frozen=True)
class Fusion:
    """A checked fusion: its method, RRF's constant, and the weights [meaning, keywords]."""

    method: str = "rrf"
    k: int = DEFAULT_K
    weights: tuple[float, float] = (1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Route:
    """One route's hits, best first: their ids, their scores as the engine gave them (a
    similarity, an L2 distance, a BM25 score) and the metric that says how to normalise them."""

    name: str
    ids: Sequence[Any]
    scores: Sequence[float]
    metric: str


def check_keywords(keywords: Any) -> str:
    """The keywords of a query: a string with at least one non-space character."""
    if not isinstance(keywords, str) or not keywords.strip():
        raise InvalidInputError(f"keywords must be a non-empty string of words, not {shown(keywords)}")
    if len(keywords) > MAX_KEYWORDS:
        raise InvalidInputError(
            f"keywords must be at most {MAX_KEYWORDS} characters, not {len(keywords)}: {shown(keywords)}"
        )
    return keywords


def keywords_field(spec: CollectionSpec, requested: Any) -> str:
    """The full-text field a query's keywords search: ``requested``, or the collection's only one.

    Raises:
        InvalidInputError: the collection has no full-text field, ``requested`` is not one, or
            there are several and none was named.
    """
    fields = spec.full_text_fields
    if not fields:
        raise InvalidInputError(
            "keywords: the collection has no full-text field (declare a varchar field with "
            "enable_analyzer=True when creating the collection)"
        )
    if requested is None:
        if len(fields) > 1:
            raise InvalidInputError(
                f"keywords_field: the collection has several full-text fields ({', '.join(fields)}): name one"
            )
        return fields[0]
    if requested not in fields:
        raise InvalidInputError(
            f"keywords_field = {shown(requested)} is not a full-text field of the collection "
            f"(full-text fields: {', '.join(fields)})"
        )
    return str(requested)


def check_fusion(fusion: Any, fusion_k: Any, fusion_weights: Any) -> Fusion:
    """The checked fusion parameters (each error names its parameter)."""
    if fusion not in FUSIONS:
        raise InvalidInputError(f"fusion must be one of {', '.join(FUSIONS)}, not {shown(fusion)}")
    if isinstance(fusion_k, bool) or not isinstance(fusion_k, int) or fusion_k < 1:
        raise InvalidInputError(
            f"fusion_k must be an integer ≥ 1 (RRF's constant, 60 by default), not {shown(fusion_k)}"
        )
    if fusion_weights is None:
        return Fusion(fusion, fusion_k)
    if fusion != "weighted":
        raise InvalidInputError(
            f"fusion_weights = {shown(fusion_weights)} apply to fusion='weighted', not {fusion!r}"
        )
    if (isinstance(fusion_weights, (str, bytes)) or not isinstance(fusion_weights, Sequence)
            or len(fusion_weights) != len(ROUTES)):
        raise InvalidInputError(
            f"fusion_weights must be two numbers [meaning, keywords], not {shown(fusion_weights)}"
        )
    for weight in fusion_weights:
        if (isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight)
                or weight < 0):
            raise InvalidInputError(
                f"fusion_weights must be two finite numbers ≥ 0 [meaning, keywords], not {shown(fusion_weights)}"
            )
    if not any(fusion_weights):
        raise InvalidInputError(f"fusion_weights must not both be 0, not {shown(fusion_weights)}")
    return Fusion(fusion, fusion_k, (float(fusion_weights[0]), float(fusion_weights[1])))


def normalised(scores: Sequence[float], metric: str) -> np.ndarray:
    """Scores mapped into [0, 1], higher is better, as Milvus's WeightedRanker does
    (``norm_score=True``; milvus_lite/function/ops/merge_op.py): COSINE (1 + s)/2, IP
    1/2 + arctan(s)/π, BM25 2·arctan(s)/π, L2 (a distance) 1 − 2·arctan(d)/π."""
    s = np.asarray(scores, dtype=np.float64)
    if metric == "COSINE":
        return (1.0 + s) / 2.0
    if metric == "IP":
        return 0.5 + np.arctan(s) / np.pi
    if metric == "BM25":
        return 2.0 * np.arctan(s) / np.pi
    if metric == "L2":
        return 1.0 - 2.0 * np.arctan(s) / np.pi
    raise ValueError(f"no normalisation for metric {metric!r}")


def fuse(routes: Sequence[Route], fusion: Fusion) -> list[tuple[Any, float, dict[str, dict[str, Any]]]]:
    """The routes' hits fused into one ranking.

    Args:
        routes: each route's hits, best first (``Route.name`` one of ``ROUTES``).
        fusion: the checked method, k and weights.

    Returns:
        ``(id, fused score, {route: {'rank', 'score'}})`` best first; a hit lists only the
        routes that returned it; equal scores ordered by ``tie_key``.
    """
    fused: dict[Any, float] = {}
    origins: dict[Any, dict[str, dict[str, Any]]] = {}
    for route in routes:
        weight = fusion.weights[ROUTES.index(route.name)]
        if fusion.method == "rrf":
            parts = [1.0 / (fusion.k + rank) for rank in range(1, len(route.ids) + 1)]
        else:
            parts = (weight * normalised(route.scores, route.metric)).tolist()
        for rank, (hit, score, part) in enumerate(zip(route.ids, route.scores, parts, strict=True), start=1):
            fused[hit] = fused.get(hit, 0.0) + part
            origins.setdefault(hit, {})[route.name] = {"rank": rank, "score": float(score)}
    tie = tie_key(fusion)
    order = sorted(fused, key=lambda hit: (-fused[hit], *tie(origins[hit])))
    return [(hit, fused[hit], origins[hit]) for hit in order]


def tie_key(fusion: Fusion) -> Callable[[dict[str, dict[str, Any]]], tuple[float, ...]]:
    """What orders hits of equal fused score, smaller first (the module's docstring says why).

    Args:
        fusion: the checked fusion.

    Returns:
        A function of a hit's routes (``{route: {'rank', 'score'}}``): for RRF (best rank over
        the routes, keyword rank, dense rank); for weighted fusion the ranks in the routes by
        decreasing weight, keywords first on equal weights; a missing rank is inf.
    """
    # keywords before dense on equal weights: sorted() is stable over this order
    first, second = sorted(("keywords", "dense"), key=lambda route: -fusion.weights[ROUTES.index(route)])
    rrf = fusion.method == "rrf"

    def key(origin: dict[str, dict[str, Any]]) -> tuple[float, ...]:
        a = origin[first]["rank"] if first in origin else math.inf
        b = origin[second]["rank"] if second in origin else math.inf
        return (min(a, b), a, b) if rrf else (a, b)

    return key
