"""Similar items out: resolve the query (ids, vectors or texts) to one vector, search, shape results."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .documents import MIN_COSINE_NORM, as_vector, check_ids, id_filter, vector_norm
from .errors import InvalidInputError, NotFoundError
from .schema import DEFAULT_NLIST, ID_FIELD, SEARCH_PARAMS, VECTOR_FIELD, CollectionSpec, shown

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


def mean_vector(vectors: np.ndarray, spec: CollectionSpec) -> np.ndarray:
    """The mean of several query vectors; re-normalised for IP/COSINE (for L2 the mean is kept
    as it is, since normalising would move it off the stored vectors' scale)."""
    # float64: the sum of several large vectors must not overflow on its way to the mean
    mean = np.asarray(vectors, dtype=np.float64).mean(axis=0)
    if spec.metric == "L2":
        return mean.astype(np.float32)
    norm = vector_norm(mean)
    if norm == 0.0:
        raise InvalidInputError("the query vectors cancel out: their mean is the zero vector")
    return (mean / norm).astype(np.float32)


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
        exclude_ids: leave the query's own ids out of the hits.
        output_fields: metadata fields returned with each hit.
        search_params: the index's search parameters, e.g. ``{"ef": 128}`` for HNSW.
    """

    ids: Sequence[str] | None = None
    vectors: Any = None
    texts: Sequence[str] | None = None
    filter_expr: str | None = None
    limit: int = 10
    exclude_ids: bool = False
    output_fields: Sequence[str] | None = None
    search_params: Mapping[str, Any] | None = None

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


class SimilarQuery:
    """Resolves the query of ``retrieve_similar`` and runs it on one collection."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self.spec = collection.spec

    def __call__(self, request: SimilarRequest) -> list[dict[str, Any]]:
        """The hits of ``request``, best first.

        Args:
            request: the query's parameters (checked here, each error naming its parameter).

        Returns:
            ``[{'id', 'distance', <output fields>...}]``, best first.
        """
        given = [name for name in ("ids", "vectors", "texts") if getattr(request, name) is not None]
        if len(given) != 1:
            raise InvalidInputError(
                "retrieve_similar needs exactly one of ids, vectors or texts"
                + (f" (got {' and '.join(given)})" if given else "")
            )
        limit = check_limit(request.limit)
        filter_expr = check_filter(request.filter_expr)
        fields = check_output_fields(self.spec, request.output_fields)
        if not isinstance(request.exclude_ids, bool):
            raise InvalidInputError(f"exclude_ids must be true or false, not {shown(request.exclude_ids)}")
        query_ids: list[str] = []
        if request.ids is not None:
            query_ids = check_ids(request.ids)
            if not query_ids:
                raise InvalidInputError("ids is empty")
            matrix = self.stored_vectors(query_ids)
        elif request.texts is not None:
            matrix = self.collection.embed_query(request.texts)
        else:
            matrix = as_query_vectors(request.vectors, self.spec)
        query = mean_vector(matrix, self.spec)
        excluded = id_filter(query_ids, negate=True) if request.exclude_ids and query_ids else None
        expr = combine_filters(filter_expr, excluded)
        return self.search([query], expr, limit, fields, request.search_params, filter_expr,
                           averaged=len(matrix) > 1)[0]

    def stored_vectors(self, ids: list[str]) -> np.ndarray:
        """The vectors of ``ids``, in their order; NotFoundError names the ones not stored."""
        # the engine's rows as they are: no round trip of each vector through Python floats
        found = {row[ID_FIELD]: row[VECTOR_FIELD] for row in self.collection.rows_by_id(ids, [ID_FIELD, VECTOR_FIELD])}
        missing = [i for i in ids if i not in found]
        if missing:
            shown = ", ".join(repr(i) for i in missing[:10])
            raise NotFoundError(
                f"{len(missing)} of the query ids are not stored in {self.collection.name!r}: {shown}"
                + (" ..." if len(missing) > 10 else "")
            )
        return np.asarray([found[i] for i in ids], dtype=np.float32)

    def search(
        self,
        queries: list[np.ndarray],
        expr: str,
        limit: int,
        fields: list[str],
        search_params: Mapping[str, Any] | None,
        filter_expr: str | None,
        averaged: bool = False,
    ) -> list[list[dict[str, Any]]]:
        """One engine call for all ``queries`` (nq > 1 is much faster than one call each);
        ``averaged``: the query is the mean of several items (a wider default search)."""
        check_filter(filter_expr)
        params = search_params_for(self.spec, search_params, limit, wide=bool(expr) or averaged)
        engine = self.collection.engine
        try:
            hits = engine.search(
                self.collection.name,
                data=queries,
                filter=expr,
                limit=limit,
                # Never []: Milvus Lite reads [] as "every field" and ships each hit's vector.
                output_fields=fields or [ID_FIELD],
                search_params=params,
                anns_field=VECTOR_FIELD,
            )
        except InvalidInputError as exc:
            if filter_expr:
                raise InvalidInputError(f"filter_expr {filter_expr!r} was rejected: {exc}") from None
            raise
        return [[_result(hit, fields) for hit in per_query] for per_query in hits]


def _result(hit: Mapping[str, Any], fields: list[str]) -> dict[str, Any]:
    entity = hit.get("entity") or {}
    out = {"id": hit.get("id", entity.get(ID_FIELD)), "distance": float(hit["distance"])}
    for name in fields:
        value = entity.get(name)
        out[name] = [float(x) for x in value] if name == VECTOR_FIELD and value is not None else value
    return out
