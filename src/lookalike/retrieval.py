"""Similar items out: resolve the query (ids, vectors or texts) to one vector, search, shape results.

With ``keywords``, a full-text (BM25) search too: alone, it is the query; beside ids, vectors or
texts, both routes are searched and fused (``fusion.py``) before the later stages."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import fusion as fusing
from . import recommend
from .documents import MIN_COSINE_NORM, as_vector, check_exclusions, check_ids, id_filter
from .engines.base import Hits
from .errors import InvalidInputError, NotFoundError
from .schema import DEFAULT_NLIST, ID_FIELD, ID_MAX_LENGTH, SEARCH_PARAMS, VECTOR_FIELD, CollectionSpec, shown

if TYPE_CHECKING:
    from .collection import Collection

MAX_LIMIT = 16384  # Milvus's top-k ceiling


def check_limit(limit: Any, maximum: int = MAX_LIMIT) -> int:
    """The number of results asked for: an integer in [1, maximum] (a service may set a lower
    maximum than Milvus's; the HTTP service does, with this rule and message)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise InvalidInputError(f"limit must be an integer in [1, {maximum}], not {shown(limit)}")
    return limit


def check_output_fields(spec: CollectionSpec, output_fields: Any) -> list[str]:
    """Validate requested fields; ``id`` is always returned and need not be named."""
    if output_fields is None:
        return []
    if isinstance(output_fields, str) or not isinstance(output_fields, Sequence):
        raise InvalidInputError(f"output_fields must be a list of field names, not {shown(output_fields)}")
    known = spec.field_names
    for name in output_fields:
        if name not in known:
            raise InvalidInputError(
                f"output_fields: unknown field {shown(name)} (the collection has {', '.join(known)})"
            )
    return [name for name in output_fields if name != ID_FIELD]


def as_query_vectors(vectors: Any, spec: CollectionSpec, parameter: str = "vectors") -> np.ndarray:
    """One vector or a list of vectors → a checked (n, dim) float32 matrix (as given, not
    normalised), each row held to the rules of stored vectors (see :func:`as_vector`)."""
    try:
        matrix = np.asarray(vectors)
    except (TypeError, ValueError):  # ragged lists
        matrix = None
    if matrix is None or matrix.dtype.kind not in "iuf":
        raise InvalidInputError(f"{parameter} must be a vector or a list of vectors of numbers, not {shown(vectors)}")
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise InvalidInputError(f"{parameter} must be a vector or a non-empty list of vectors, not {shown(vectors)}")
    min_norm = MIN_COSINE_NORM if spec.metric == "COSINE" else 0.0
    return np.stack([
        as_vector(row, spec.dim, f"{parameter}[{i}]", normalize=False, min_norm=min_norm)
        for i, row in enumerate(matrix)
    ])


def check_filter(filter_expr: Any) -> str | None:
    """A filter expression: a string, or None for none."""
    if filter_expr is not None and not isinstance(filter_expr, str):
        raise InvalidInputError(
            f"filter_expr must be a string, not {type(filter_expr).__name__} ({shown(filter_expr)})"
        )
    return filter_expr


def combine_filters(*expressions: str | None) -> str:
    parts = [e for e in expressions if e]
    if len(parts) <= 1:
        return parts[0] if parts else ""
    return " and ".join(f"({e})" for e in parts)


# HNSW's search breadth when the caller sets none. A filter leaves fewer candidates per visited
# node, and the mean of several items lies between clusters, far from where the graph is dense:
# both need a wider search for the same recall (measured in bench/: recall@10 with
# `language == "fr"` on the DDTP corpus 0.931 at ef 64, 0.964 at ef 128; the mean of 5 ids at
# 100k × 768, 0.81 at ef 64, 0.95 at ef 128, 0.99 at ef 256).
DEFAULT_EF, WIDE_EF = 64, 128


def search_params_for(
    spec: CollectionSpec, search_params: Mapping[str, Any] | None, limit: int, wide: bool
) -> dict[str, Any]:
    """The engine's search parameters: the caller's, checked, with HNSW's ef defaulted.

    Args:
        search_params: ``{'ef': 128}``, or pymilvus's ``{'params': {'ef': 128}, 'metric_type': 'IP'}``
            (see :func:`check_search_params`); None for the defaults.
        limit: the number of results; HNSW's ef is raised to it.
        wide: the query is filtered or a mean of several items (a wider default ef).

    Returns:
        ``{'metric_type': <the collection's>, 'params': {...}}``.
    """
    params = check_search_params(spec, search_params)
    if spec.vector_index.index_type == "HNSW":
        # A server refuses ef below the limit (Milvus wants ef >= topK): never ask for fewer
        # candidates than results, whether ef is the caller's or ours.
        params["ef"] = max(params.get("ef", WIDE_EF if wide else DEFAULT_EF), limit)
    return {"metric_type": spec.metric, "params": params}


def check_search_params(spec: CollectionSpec, search_params: Any) -> dict[str, int]:
    """The caller's search parameters, flattened and checked against the collection's index.

    Each index type takes the keys of ``schema.SEARCH_PARAMS`` (HNSW ``ef`` in [1, 32768],
    IVF_FLAT/IVF_SQ8 ``nprobe`` in [1, nlist], FLAT none), as integers, at the top level or
    under pymilvus's ``'params'``; ``'metric_type'`` is accepted when it is the collection's.
    Anything else is refused, naming the key and its value: the engines ignore unknown keys
    silently, and a wrong type failed deep inside them.
    """
    if search_params is None:
        return {}
    if not isinstance(search_params, Mapping):
        raise InvalidInputError(f"search_params must be a dict such as {{'ef': 128}}, not {shown(search_params)}")
    index_type = spec.vector_index.index_type
    allowed = SEARCH_PARAMS.get(index_type, {})
    takes = f"the collection's {index_type} index takes {', '.join(allowed) or 'no search parameter'}"
    params: dict[str, int] = {}

    def check(key: Any, value: Any, container: str) -> None:
        where = f"{container}[{shown(key)}]"
        if key not in allowed:
            raise InvalidInputError(
                f"{container}: unknown key {shown(key)} = {shown(value)} "
                f"({takes}; 'metric_type' and a nested 'params' dict are accepted too)"
            )
        low, high = allowed[key]
        if high is None:  # nprobe: at most the index's nlist
            high = int(spec.vector_index.params.get("nlist", DEFAULT_NLIST))
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidInputError(f"{where} must be an integer in [{low}, {high}] ({takes}), not {shown(value)}")
        if params.get(key, value) != value:
            raise InvalidInputError(f"{where} = {value} contradicts {key} = {params[key]} given beside it")
        params[key] = value

    for key, value in search_params.items():
        if key == "metric_type":
            if not isinstance(value, str) or value.upper() != spec.metric:
                raise InvalidInputError(
                    f"search_params['metric_type'] = {shown(value)} is not the collection's metric "
                    f"{spec.metric!r} (leave it out: searches always use the collection's metric)"
                )
        elif key == "params":
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise InvalidInputError(
                    f"search_params['params'] must be a dict such as {{'ef': 128}}, not {shown(value)}"
                )
            for inner, inner_value in value.items():
                check(inner, inner_value, "search_params['params']")
        else:
            check(key, value, "search_params")
    return params


@dataclasses.dataclass(frozen=True)
class SimilarRequest:
    """Every parameter of ``retrieve_similar``: the one type that carries a query from the Python
    calls, the CLI and the HTTP service to :class:`SimilarQuery`, which checks it.

    Adding a query parameter is one field here and its check and use in ``SimilarQuery``.

    Attributes:
        ids: stored ids; several are averaged into one query.
        vectors: one vector or several (averaged).
        texts: texts embedded with the collection's model (several: averaged).
        filter_expr: a Milvus boolean expression the hits must match.
        limit: how many hits, in [1, 16384].
        exclude_ids: True leaves out every id given as an example (``ids`` and ``negative_ids``);
            a list of ids (any length) leaves out those ids.
        output_fields: metadata fields returned with each hit.
        search_params: the index's search parameters, e.g. ``{"ef": 128}`` for HNSW.
        negative_ids: stored ids the hits should be unlike.
        strategy: ``"average_vector"`` (query = 2·mean(positives) − mean(negatives)) or
            ``"best_score"`` (each candidate scored against its nearest positive and negative).
        weights: one per id (or per vector/text): the query is their weighted mean.
        group_by: a scalar field; at most ``group_size`` hits per value, ``limit`` counts groups.
        group_size: hits per group, at least 1.
        diversity: maximal marginal relevance in [0, 1]; 0 is the plain ranking, 1 the most diverse.
        candidates: how many nearest neighbours the rescoring stages work over (default a few
            times ``offset + limit``).
        recency: ``{"field", "scale", "decay"=0.5, "function"="exp", "origin"=now, "offset"=0}``:
            Milvus's decay ranker over a numeric field.
        min_score: drop hits scoring below it (above it for L2).
        offset: hits (or groups, with ``group_by``) skipped, for paging; ``offset + limit`` ≤ 16384.
        explain: each hit gets an ``explain`` dict saying how its score was made.
        keywords: words searched in a full-text field (BM25): alone, a keyword search; beside
            ids, vectors or texts, both routes searched and fused.
        fusion: how the two routes are fused: ``"rrf"`` (Σ 1/(fusion_k + rank)) or
            ``"weighted"`` (``fusion_weights`` over per-route normalised scores).
        fusion_k: RRF's constant, an integer ≥ 1 (60, as Milvus's RRFRanker).
        fusion_weights: ``[meaning, keywords]``, each ≥ 0, for ``fusion="weighted"`` (default [1, 1]).
        keywords_field: the full-text field searched (needed only when there are several).
    """

    ids: Sequence[str] | None = None
    vectors: Any = None
    texts: Sequence[str] | None = None
    filter_expr: str | None = None
    limit: int = 10
    exclude_ids: bool | Sequence[str] = False
    output_fields: Sequence[str] | None = None
    search_params: Mapping[str, Any] | None = None
    negative_ids: Sequence[str] | None = None
    strategy: str = "average_vector"
    weights: Sequence[float] | None = None
    group_by: str | None = None
    group_size: int = 1
    diversity: float | None = None
    candidates: int | None = None
    recency: Mapping[str, Any] | None = None
    min_score: float | None = None
    offset: int = 0
    explain: bool = False
    keywords: str | None = None
    fusion: str = "rrf"
    fusion_k: int = 60
    fusion_weights: Sequence[float] | None = None
    keywords_field: str | None = None

    @classmethod
    def of(cls, request: SimilarRequest | Mapping[str, Any] | None = None, **parameters: Any) -> SimilarRequest:
        """A request from a ``SimilarRequest``, a dict of parameters, or keyword parameters.

        Raises:
            InvalidInputError: a parameter ``retrieve_similar`` does not take, or a request given
                both whole and as keywords.
        """
        if isinstance(request, SimilarRequest):
            if parameters:
                raise InvalidInputError(
                    f"pass a SimilarRequest or keyword parameters, not both (got {', '.join(sorted(parameters))})"
                )
            return request
        if request is not None and not isinstance(request, Mapping):
            raise InvalidInputError(f"a similarity request must be a SimilarRequest or a dict, not {shown(request)}")
        values = {**(request or {}), **parameters}
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InvalidInputError(
                f"retrieve_similar has no parameter {', '.join(map(repr, unknown))} (it takes {', '.join(known)})"
            )
        return cls(**values)


# Exclusion lists up to this long go into the engine's filter expression; longer ones are
# over-fetched and dropped here (Milvus's `id not in [...]` slows with the list's length and
# has an expression size limit; see bench/recommend.py for the measured figures).
EXCLUDE_IN_EXPRESSION = 64
# Over-fetch for a long list: first a quarter more than the hits needed (at least OVERFETCH_FIRST
# more; each hit Milvus Lite returns costs ~5-10 µs at 100k × 768, so extra rounds for a query
# whose neighbourhood is excluded beat a wide first round for every query), then growing
# OVERFETCH_FACTOR-fold up to OVERFETCH_FACTOR times the hits needed (at least OVERFETCH_MIN).
OVERFETCH_FIRST, OVERFETCH_FACTOR, OVERFETCH_MIN = 16, 4, 1000
# The rescoring stages' pool when `candidates` is not given: this many times the hits asked for
# (each group counting `group_size`), at least MIN_CANDIDATES.
CANDIDATES_FACTOR, MIN_CANDIDATES = 4, 100


@dataclasses.dataclass
class _Plan:
    """A checked request, ready to fetch: what the engine is asked, and what is done after."""

    request: SimilarRequest
    queries: list[np.ndarray]  # average_vector: one; best_score: each example's vector (see deferred)
    # best_score's negatives when it has positives: searched only when the positives' neighbours
    # cannot settle the page (SimilarQuery.best_score_pool)
    deferred: list[np.ndarray]
    positives: np.ndarray  # best_score's examples (empty otherwise)
    negatives: np.ndarray
    labels: list[str]  # each query's name in `explain` (an id, or "vectors[i]" / "texts[i]")
    expr: str  # filter and short exclusions
    excluded: list[str]  # a long exclusion list, dropped after fetching
    fetch: int  # hits per query asked of the engine (after exclusions)
    wide: bool  # filtered, or a mean of several examples: HNSW's wider default ef
    fields: list[str]  # the caller's output fields
    wanted: list[str]  # fields the search returns: the caller's and the stages'
    params: dict[str, Any]
    limit: int
    offset: int
    recency: recommend.Recency | None
    min_score: float | None
    diversity: float | None
    rescored: bool  # a stage reorders the candidates (a pool is fetched)
    keywords: str | None = None  # the keyword route's query (None: no keyword route)
    keywords_field: str | None = None
    fusion: fusing.Fusion | None = None

    @property
    def needs_vectors(self) -> bool:
        """The stages compare the candidates' vectors (best_score, MMR)."""
        return self.diversity is not None or self.request.strategy == "best_score"

    @property
    def key(self) -> tuple[Any, ...] | None:
        """Plans with the same key share one engine call (None: this one fetches alone)."""
        if self.excluded or not self.queries:
            return None
        return (self.expr, self.fetch, tuple(self.wanted), repr(sorted(self.params["params"].items())))


class SimilarQuery:
    """Resolves the query of ``retrieve_similar`` and runs it on one collection: the stages of
    :mod:`lookalike.recommend` in order (filter and exclusions → candidates from the index, and
    with ``keywords`` from the full-text field, fused → recency → ``min_score`` → group caps → MMR
    → ``offset``/``limit``)."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self.spec = collection.spec
        self.sign = -1.0 if self.spec.metric == "L2" else 1.0  # scores: higher is better

    def __call__(self, request: SimilarRequest) -> list[dict[str, Any]]:
        """The hits of ``request``, best first.

        Args:
            request: the query's parameters (checked here, each error naming its parameter).

        Returns:
            ``[{'id', 'distance', <output fields>..., 'explain'?}]``, best first.
        """
        return self.batch([request])[0]

    def batch(self, requests: Sequence[SimilarRequest]) -> list[list[dict[str, Any]]]:
        """The hits of each request, in order; requests whose engine calls differ only in their
        query vectors share one call (nq > 1)."""
        with self.collection.engine.search_slot():
            return self._batch(requests)

    def _batch(self, requests: Sequence[SimilarRequest]) -> list[list[dict[str, Any]]]:
        plans = [self.plan(request) for request in requests]
        fetched: list[list[Hits] | None] = [None] * len(plans)
        shared: dict[Any, list[int]] = {}
        for position, plan in enumerate(plans):
            if plan.key is None:
                fetched[position] = self.fetch_queries(plan, plan.queries)
            else:
                shared.setdefault(plan.key, []).append(position)
        for positions in shared.values():
            first = plans[positions[0]]
            queries = [q for i in positions for q in plans[i].queries]
            hits = self.engine_hits(queries, first.expr, first.fetch, first.wanted, first.params,
                                    first.request.filter_expr)
            for i in positions:
                fetched[i], hits = hits[: len(plans[i].queries)], hits[len(plans[i].queries):]
        keyword_hits = [self.fetch_keywords(plan) if plan.keywords is not None else None for plan in plans]
        return [self.finish(plan, hits, words)  # type: ignore[arg-type]
                for plan, hits, words in zip(plans, fetched, keyword_hits, strict=True)]

    # -- checking --------------------------------------------------------------------------

    def plan(self, request: SimilarRequest) -> _Plan:
        """Check every parameter of ``request`` and resolve its query vectors."""
        r = request
        strategy = r.strategy
        if strategy not in recommend.STRATEGIES:
            raise InvalidInputError(f"strategy must be one of {', '.join(recommend.STRATEGIES)}, not {shown(strategy)}")
        negative_ids = check_ids(r.negative_ids, "negative_ids") if r.negative_ids is not None else []
        given = [name for name in ("ids", "vectors", "texts") if getattr(r, name) is not None]
        keywords = fusing.check_keywords(r.keywords) if r.keywords is not None else None
        fusion = fusing.check_fusion(r.fusion, r.fusion_k, r.fusion_weights)
        dense = bool(given) or bool(negative_ids and strategy == "best_score")  # a vector route
        if len(given) > 1 or (not dense and (keywords is None or negative_ids)):
            if negative_ids and not given:
                raise InvalidInputError(
                    f"strategy 'average_vector' needs positive examples (ids, vectors or texts) beside "
                    f"negative_ids = {shown(negative_ids)}; strategy='best_score' takes negatives alone"
                )
            raise InvalidInputError(
                "retrieve_similar needs exactly one of ids, vectors or texts, or keywords"
                + (f" (got {' and '.join(given)})" if given else "")
            )
        if keywords is not None:
            # the engine first: on a server without full-text search, no collection has a full-text field
            self.collection.engine.check_full_text("keywords")
            field_searched = fusing.keywords_field(self.spec, r.keywords_field)
        elif r.keywords_field is not None:
            raise InvalidInputError(f"keywords_field = {shown(r.keywords_field)} needs keywords beside it")
        else:
            field_searched = None
        limit = check_limit(r.limit)
        offset = r.offset
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidInputError(f"offset must be an integer ≥ 0, not {shown(offset)}")
        if offset + limit > MAX_LIMIT:
            raise InvalidInputError(f"offset + limit must be at most {MAX_LIMIT}, not {offset} + {limit}")
        filter_expr = check_filter(r.filter_expr)
        fields = check_output_fields(self.spec, r.output_fields)
        group_size = r.group_size
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise InvalidInputError(f"group_size must be an integer ≥ 1, not {shown(group_size)}")
        if r.group_by is not None:
            field = self.spec.field(r.group_by) if isinstance(r.group_by, str) else None
            if field is None or field.type not in recommend.GROUPABLE_TYPES:
                groupable = [f.name for f in self.spec.fields if f.type in recommend.GROUPABLE_TYPES]
                raise InvalidInputError(
                    f"group_by = {shown(r.group_by)} is not a field of the collection that can group "
                    f"(bool, integer or varchar fields: {', '.join(groupable) or 'none'})"
                )
        diversity = r.diversity
        if diversity is not None and (isinstance(diversity, bool) or not isinstance(diversity, (int, float))
                                      or not 0 <= diversity <= 1):
            raise InvalidInputError(f"diversity must be a number in [0, 1] (0: plain ranking), not {shown(diversity)}")
        min_score = r.min_score
        if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))
                                      or not math.isfinite(min_score)):
            raise InvalidInputError(f"min_score must be a number, not {shown(min_score)}")
        if not isinstance(r.explain, bool):
            raise InvalidInputError(f"explain must be true or false, not {shown(r.explain)}")
        if keywords is not None and diversity is not None:
            # MMR trades a hit's score against its similarity to those chosen: a fused or BM25
            # score is on another scale than a vector similarity.
            raise InvalidInputError(f"diversity = {shown(diversity)} does not combine with keywords")
        recency = recommend.check_recency(self.spec, r.recency)
        shown_group = group_size if r.group_by is not None else 1
        rescored = bool(recency or r.group_by is not None or diversity is not None or strategy == "best_score"
                        or keywords is not None)
        candidates = r.candidates
        if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, int)
                                       or not offset + limit <= candidates <= MAX_LIMIT):
            raise InvalidInputError(
                f"candidates must be an integer in [offset + limit = {offset + limit}, {MAX_LIMIT}], "
                f"not {shown(candidates)}"
            )
        if candidates is None:
            candidates = min(MAX_LIMIT, max(MIN_CANDIDATES, CANDIDATES_FACTOR * (offset + limit) * shown_group))
        fetch = candidates if rescored else offset + limit

        # the examples
        query_ids: list[str] = []
        labels: list[str] = []
        if r.ids is not None:
            query_ids = check_ids(r.ids)
            if not query_ids:
                raise InvalidInputError("ids is empty")
            matrix = self.stored_vectors(query_ids, "ids")
            labels = list(query_ids)
        elif r.texts is not None:
            matrix = self.collection.embed_query(r.texts)
            labels = [f"texts[{i}]" for i in range(len(matrix))]
        elif r.vectors is not None:
            matrix = as_query_vectors(r.vectors, self.spec)
            labels = [f"vectors[{i}]" for i in range(len(matrix))]
        else:
            matrix = np.zeros((0, self.spec.dim), dtype=np.float32)
        negatives = self.stored_vectors(negative_ids, "negative_ids") if negative_ids else matrix[:0]
        weights = recommend.check_weights(r.weights, len(matrix), given[0] if given else "ids")
        if weights is not None and strategy == "best_score":
            raise InvalidInputError(
                f"weights = {shown(r.weights)} apply to strategy 'average_vector', not 'best_score'"
            )

        exclude = r.exclude_ids
        if isinstance(exclude, bool):
            excluded = [*query_ids, *negative_ids] if exclude else []
        elif isinstance(exclude, str) or not isinstance(exclude, Sequence):
            raise InvalidInputError(f"exclude_ids must be true, false or a list of ids, not {shown(exclude)}")
        else:
            excluded = check_exclusions(exclude)
        short = len(excluded) <= EXCLUDE_IN_EXPRESSION
        # (a string no id can be leaves nothing out: it stays out of the engine's expression)
        expressed = [i for i in dict.fromkeys(excluded) if 0 < len(i) <= ID_MAX_LENGTH] if short else []
        expr = combine_filters(filter_expr, id_filter(expressed, negate=True) if expressed else None)

        deferred: list[np.ndarray] = []
        if strategy == "best_score":
            queries = [self.unit(v) for v in (*matrix, *negatives)]
            labels = [*labels, *negative_ids]
            if len(matrix) and len(negatives) and not (recency or r.group_by is not None or diversity is not None
                                                       or keywords is not None):
                # the candidates near a negative rank below the positives' neighbours that outscore
                # their nearest negative (best_score_pool): searched only when those are too few
                queries, deferred = queries[: len(matrix)], queries[len(matrix):]
        elif dense:
            queries = [recommend.query_vector(matrix, negatives, weights, self.spec.metric)]
        else:  # keywords alone
            queries = []
        # the fields the stages read come with the hits, as columns (Engine.search_hits)
        vectors = diversity is not None or strategy == "best_score"
        wanted = list(fields)
        for extra in (r.group_by, recency.field if recency else None, VECTOR_FIELD if vectors else None):
            if extra and extra not in wanted:
                wanted.append(extra)
        averaged = len(matrix) + len(negatives) > 1 and strategy == "average_vector"
        wide = bool(expr) or averaged
        params = search_params_for(self.spec, r.search_params, fetch, wide=wide)
        return _Plan(
            request=r, queries=queries, deferred=deferred,
            positives=matrix if strategy == "best_score" else matrix[:0],
            negatives=negatives if strategy == "best_score" else negatives[:0],
            labels=labels, expr=expr, excluded=[] if short else excluded, fetch=fetch, wide=wide,
            fields=fields, wanted=wanted, params=params, limit=limit, offset=offset, recency=recency,
            min_score=min_score, diversity=None if diversity is None else float(diversity), rescored=rescored,
            keywords=keywords, keywords_field=field_searched, fusion=fusion if keywords is not None else None,
        )

    def unit(self, vector: np.ndarray) -> np.ndarray:
        """A query vector as the engine searches it: normalised for IP/COSINE."""
        return recommend.query_vector(vector[None, :], None, None, self.spec.metric)

    def stored_vectors(self, ids: list[str], parameter: str = "ids") -> np.ndarray:
        """The vectors of ``ids``, in their order; NotFoundError names the ones not stored."""
        found = self.collection.columns_by_id(ids, [VECTOR_FIELD])
        missing = [i for i in ids if i not in found]
        if missing:
            listed = ", ".join(repr(i) for i in missing[:10])
            raise NotFoundError(
                f"{len(missing)} of the {parameter} are not stored in {self.collection.name!r}: {listed}"
                + (" ..." if len(missing) > 10 else "")
            )
        return np.asarray([found[i][VECTOR_FIELD] for i in ids], dtype=np.float32)

    # -- fetching ----------------------------------------------------------------------------

    def fetch_queries(self, plan: _Plan, queries: list[np.ndarray]) -> list[Hits]:
        """Each of ``queries``' ``plan.fetch`` nearest neighbours, as ``plan`` asks for them."""
        if plan.excluded or not queries:  # (keywords alone: none)
            return [self.fetch_dense(plan, query) for query in queries]
        return self.engine_hits(queries, plan.expr, plan.fetch, plan.wanted, plan.params, plan.request.filter_expr)

    def fetch_dense(self, plan: _Plan, query: np.ndarray) -> Hits:
        """``plan.fetch`` nearest neighbours of ``query``, none of them in the long exclusion list."""

        def search(expr: str, size: int, skip: Sequence[str] = ()) -> Hits:
            # the excluded ids pushed into `expr` or masked filter the search as any filter does
            params = search_params_for(self.spec, plan.request.search_params, size,
                                       wide=plan.wide or bool(expr) or bool(skip))
            return self.engine_hits([query], expr, size, plan.wanted, params, plan.request.filter_expr, skip)[0]

        return self.fetch_excluding(plan, search, masks=self.collection.engine.masks_ids)

    def fetch_keywords(self, plan: _Plan) -> Hits:
        """The keyword route: ``plan.fetch`` best BM25 hits of ``plan.keywords``, with the same
        filter and exclusions as the vector route."""

        def search(expr: str, size: int) -> Hits:
            # the keyword route needs no vectors (diversity, which would, is refused with keywords)
            wanted = [f for f in plan.wanted if f != VECTOR_FIELD or f in plan.fields]
            try:
                hits = self.collection.engine.keyword_search(
                    self.collection.name, texts=[plan.keywords or ""], field=plan.keywords_field or "",
                    filter=expr, limit=size, output_fields=wanted or [ID_FIELD],
                )
            except InvalidInputError as exc:
                if plan.request.filter_expr:
                    raise InvalidInputError(f"filter_expr {plan.request.filter_expr!r} was rejected: {exc}") from None
                raise
            return Hits.of(hits[0], wanted)

        if not plan.excluded:
            return search(plan.expr, plan.fetch)
        return self.fetch_excluding(plan, search)

    def fetch_excluding(self, plan: _Plan, search: Callable[..., Hits], masks: bool = False) -> Hits:
        """``plan.fetch`` hits of ``search(expr, size[, skip])`` none of which is in the long
        exclusion list.

        Over-fetches and drops the excluded ids here. When too many of them were among the
        first round's hits, an engine that ``masks`` ids searches once more with the whole list
        masked (``skip``); otherwise, or if that round still falls short, the over-fetch grows,
        and past a few times ``need`` (returning thousands of hits costs more than a short
        expression) the excluded ids seen in the hits join the filter expression instead: each
        round either fetches more or excludes more, and the expression holds only the excluded
        ids near the query, never the whole list."""
        need, excluded = plan.fetch, plan.excluded
        pushed: list[str] = []
        size = min(MAX_LIMIT, need + min(len(excluded), max(need // 4, OVERFETCH_FIRST)))
        cap = min(MAX_LIMIT, need + len(excluded), max(OVERFETCH_FACTOR * need, OVERFETCH_MIN))
        masked = tried_mask = False
        while True:
            expr = combine_filters(plan.expr, id_filter(pushed, negate=True) if pushed else None)
            hits = search(expr, size, excluded) if masked else search(expr, size)
            ids = hits.ids.tolist()
            # the few hits looked up in the long list, not the list hashed into a set: one pass
            # at C speed, a third of the cost of building the set (measured: 85 vs 236 µs at 10,000)
            dropped = set(ids).intersection(excluded)
            kept = [k for k, hit in enumerate(ids) if hit not in dropped]
            # (a masked search may come back short though more rows match: HNSW's walk can end
            # inside the masked neighbourhood, so only an unmasked round proves the end)
            if len(kept) >= need or (len(hits) < size and not masked):
                return hits.take(kept[:need])
            if masks and not tried_mask:
                # the query's neighbourhood is excluded: masking the list's rows (~0.1-0.5 µs an
                # id) costs less than the rounds (measured in bench/README.md)
                masked = tried_mask = True
                continue
            masked = False
            if size < cap:
                size = min(cap, OVERFETCH_FACTOR * size)
            else:
                pushed += [hit for hit in ids if hit in dropped]

    def engine_hits(
        self, queries: list[np.ndarray], expr: str, limit: int, wanted: list[str],
        params: dict[str, Any], filter_expr: str | None, skip: Sequence[str] = (),
    ) -> list[Hits]:
        """One engine call for all ``queries``: per query, its hits with the ``wanted`` fields as
        columns (``skip``: Engine.search_hits's ``skip_ids``)."""
        try:
            return self.collection.engine.search_hits(
                self.collection.name,
                data=queries,
                filter=expr,
                limit=limit,
                # Never []: Milvus Lite reads [] as "every field" and ships each hit's vector.
                output_fields=wanted or [ID_FIELD],
                search_params=params,
                anns_field=VECTOR_FIELD,
                skip_ids=skip,
            )
        except InvalidInputError as exc:
            if filter_expr:
                raise InvalidInputError(f"filter_expr {filter_expr!r} was rejected: {exc}") from None
            raise

    def engine_search(
        self, queries: list[np.ndarray], expr: str, limit: int, wanted: list[str],
        params: dict[str, Any], filter_expr: str | None,
    ) -> list[list[dict[str, Any]]]:
        """:meth:`engine_hits` as rows ``{'id', 'distance', <wanted fields>}``, per query."""
        return [[hits.row(i) for i in range(len(hits))]
                for hits in self.engine_hits(queries, expr, limit, wanted, params, filter_expr)]

    # -- the stages ------------------------------------------------------------------------

    def finish(self, plan: _Plan, per_query: list[Hits], keyword_hits: Hits | None = None) -> list[dict[str, Any]]:
        """The stages after the engine, in the documented order, over the fetched candidates
        (with ``keyword_hits``, the keyword route's, fused with the vector route's first).

        The candidates stay columns (ids, scores, fields, vectors) through the stages; only the
        page's hits become dicts, and only theirs get an ``explain``."""
        r = plan.request
        # candidates: one query's hits, or for best_score the union of every example's
        cand = _union(per_query, plan.wanted)
        if not plan.rescored and plan.min_score is None:  # the engine's ranking as it is
            page = cand.take(slice(plan.offset, plan.offset + plan.limit))
            return [self.shape(plan, page.row(i), {"similarity": float(page.distances[i])}) for i in range(len(page))]
        vectors = self.vectors_of(cand) if plan.needs_vectors else None
        explained: Callable[[int], dict[str, Any]]
        if r.strategy == "best_score":
            cand, vectors, scores, parts = self.best_score_pool(plan, per_query, cand, vectors)
            has_p, has_n = len(plan.positives) > 0, len(plan.negatives) > 0

            def explained(i: int) -> dict[str, Any]:
                return recommend.explain_entry(
                    similarity=float(scores[i]),
                    nearest_positive=plan.labels[parts.nearest_positive[i]] if has_p else None,
                    positive_similarity=self.sign * float(parts.positive[i]) if has_p else None,
                    nearest_negative=plan.labels[len(plan.positives) + parts.nearest_negative[i]] if has_n else None,
                    negative_similarity=self.sign * float(parts.negative[i]) if has_n else None,
                )
        else:
            scores = self.sign * cand.distances
            similarity = cand.distances

            def explained(i: int) -> dict[str, Any]:
                return {"similarity": float(similarity[i])}
        sign = self.sign
        if keyword_hits is not None:  # fused scores (or BM25's alone): higher is better
            cand, scores, origins = self.fuse(plan, cand, scores, keyword_hits)
            sign = 1.0

            def explained(i: int) -> dict[str, Any]:
                return dict(origins[i])
        factors = None
        if plan.recency is not None:
            values = cand.fields[plan.recency.field]
            factors = recommend.decay_factors(np.asarray([np.nan if v is None else v for v in values]), plan.recency)
            factors = np.nan_to_num(factors, nan=0.0)  # no date: decayed away
            scores = scores * factors
        order = [int(i) for i in np.argsort(-scores, kind="stable")]
        if plan.min_score is not None:
            order = [i for i in order if scores[i] >= sign * plan.min_score]
        groups = list(cand.fields[r.group_by]) if r.group_by is not None else None
        if groups is not None:
            order = recommend.cap_groups(order, groups, r.group_size)
        steps: dict[int, tuple[int, float]] = {}  # MMR's step and value of each pick
        if plan.diversity is not None:
            order = self.diversify(plan, order, scores, vectors, groups, steps)
        chosen = recommend.page(order, groups, plan.offset, plan.limit)
        out = []
        for i in chosen:
            explain = {}
            if r.explain:  # made only when asked for: a few µs a hit
                explain = explained(i)
                if factors is not None:
                    explain["decay"] = float(factors[i])
                if i in steps:
                    explain["mmr_step"], explain["mmr_value"] = steps[i]
                if groups is not None:
                    explain["group"] = groups[i]
                explain["score"] = float(sign * scores[i])
            out.append(self.shape(plan, {**cand.row(i), "distance": float(sign * scores[i])}, explain))
        return out

    def vectors_of(self, cand: Hits) -> np.ndarray:
        """The candidates' vectors, one row each."""
        return np.asarray(cand.fields[VECTOR_FIELD], dtype=np.float32).reshape(len(cand), self.spec.dim)

    def best_score_pool(
        self, plan: _Plan, per_query: list[Hits], cand: Hits, vectors: np.ndarray,
    ) -> tuple[Hits, np.ndarray, np.ndarray, recommend.BestScoreParts]:
        """best_score's candidates, their vectors, scores and score parts: the union of every
        example's neighbours, the negatives' searched only when they could change the page.

        Why they rarely can: a candidate outside positive j's ``fetch`` neighbours is no more
        similar to it than the last of them (c_j), so its score is at most sigmoid(max_j c_j). The
        positives' neighbours with p > n and p ≥ max_j c_j score at least that, and come first in
        the union (a stable sort keeps them ahead on ties): with ``offset + limit`` of them (past
        ``min_score``) the page is the one the whole union gives. Exact on an exact index; on
        HNSW as approximate as the union itself."""
        scores, parts = recommend.best_scores(vectors, plan.positives, plan.negatives, self.spec.metric)
        if not plan.deferred or self.page_is_settled(plan, per_query, scores, parts):
            return cand, vectors, scores, parts
        per_query = [*per_query, *self.fetch_queries(plan, plan.deferred)]
        cand = _union(per_query, plan.wanted)
        vectors = self.vectors_of(cand)
        return cand, vectors, *recommend.best_scores(vectors, plan.positives, plan.negatives, self.spec.metric)

    def page_is_settled(self, plan: _Plan, per_query: list[Hits], scores: np.ndarray,
                        parts: recommend.BestScoreParts) -> bool:
        """Whether the positives' neighbours alone give best_score's page (see best_score_pool)."""
        threshold = -np.inf
        for positive, hits in zip(plan.positives, per_query, strict=True):
            if len(hits) < plan.fetch:  # every item the filter lets through is among them
                return True
            # the search ran with the unit vector; IP scores the example as given
            scale = float(np.linalg.norm(positive)) if self.spec.metric == "IP" else 1.0
            threshold = max(threshold, scale * float(np.min(self.sign * hits.distances)))
        threshold += 1e-3 * max(1.0, abs(threshold))  # the engine's float32 against numpy's float64
        settled = (parts.positive > parts.negative) & (parts.positive >= threshold)
        if plan.min_score is not None:
            settled &= scores >= self.sign * plan.min_score
        return int(np.count_nonzero(settled)) >= plan.offset + plan.limit

    def fuse(self, plan: _Plan, cand: Hits, scores: np.ndarray,
             keyword_hits: Hits) -> tuple[Hits, np.ndarray, list[dict[str, Any]]]:
        """The vector route's candidates (``scores`` higher is better) and the keyword route's
        hits fused into one candidate list with its scores and ``explain`` entries.

        Keywords alone: the BM25 scores as they are. Both: ``plan.fusion`` over the two routes'
        ranks (RRF) or normalised scores (weighted), see :mod:`lookalike.fusion`."""
        pool = Hits.concat([keyword_hits, cand])
        # an id in both routes: the vector route's hit (which carries its vector)
        at = {hit: k for k, hit in enumerate(pool.ids.tolist())}
        routes = []
        if plan.queries:
            order = [int(i) for i in np.argsort(-scores, kind="stable")]
            # a route's score as its engine gives it (an L2 distance stays a distance);
            # best_score's scores, in (-1, 1), normalise as cosines do
            metric = "COSINE" if plan.request.strategy == "best_score" else self.spec.metric
            routes.append(fusing.Route("dense", [cand.ids[i] for i in order],
                                       [float(self.sign * scores[i]) for i in order], metric))
        words, bm25 = keyword_hits.ids.tolist(), keyword_hits.distances.tolist()
        routes.append(fusing.Route("keywords", words, bm25, "BM25"))
        if not plan.queries:  # keywords alone: nothing to fuse, the BM25 ranking is the ranking
            fused = [(hit, score, {"keywords": {"rank": rank, "score": score}})
                     for rank, (hit, score) in enumerate(zip(words, bm25, strict=True), start=1)]
        else:
            fused = fusing.fuse(routes, plan.fusion or fusing.Fusion())
        return (pool.take([at[hit] for hit, _, _ in fused]),
                np.asarray([score for _, score, _ in fused], dtype=np.float64),
                [dict(origins) for _, _, origins in fused])

    def diversify(self, plan: _Plan, order: list[int], scores: np.ndarray, vectors: np.ndarray,
                  groups: list[Any] | None, steps: dict[int, tuple[int, float]]) -> list[int]:
        """MMR's selection order, as far as the page needs it: ``offset + limit`` picks, or with
        groups until the first ``offset + limit`` groups have all their (capped) members; each
        pick's step and MMR value go into ``steps``."""
        wanted_groups = plan.offset + plan.limit
        remaining: dict[Any, int] = {}
        if groups is not None:
            for i in order:
                remaining[groups[i]] = remaining.get(groups[i], 0) + 1
        picked: list[int] = []
        seen: list[Any] = []
        for step, (i, value) in enumerate(recommend.mmr(order, scores, vectors, plan.diversity or 0.0,
                                                        self.spec.metric)):
            picked.append(i)
            steps[i] = (step, value)
            if groups is None:
                if len(picked) >= wanted_groups:
                    break
                continue
            if groups[i] not in seen:
                seen.append(groups[i])
            remaining[groups[i]] -= 1
            if len(seen) >= wanted_groups and all(remaining[g] == 0 for g in seen[:wanted_groups]):
                break
        return picked

    def shape(self, plan: _Plan, row: Mapping[str, Any], explain: dict[str, Any]) -> dict[str, Any]:
        """A hit as the caller sees it: ``id``, ``distance``, the output fields, ``explain``."""
        out = {"id": row["id"], "distance": float(row["distance"])}
        for name in plan.fields:
            value = row.get(name)
            out[name] = [float(x) for x in value] if name == VECTOR_FIELD and value is not None else value
        if plan.request.explain:
            out["explain"] = explain
        return out


def _union(per_query: list[Hits], wanted: list[str]) -> Hits:
    """The hits of every query, each id once (its first hit: best_score's union of every
    example's neighbours)."""
    if len(per_query) == 1:
        return per_query[0]
    if not per_query:  # keywords alone
        return Hits.of([], wanted)
    joined = Hits.concat(per_query)
    first: dict[str, int] = {}
    for k, hit in enumerate(joined.ids.tolist()):
        first.setdefault(hit, k)
    return joined if len(first) == len(joined) else joined.take(list(first.values()))
