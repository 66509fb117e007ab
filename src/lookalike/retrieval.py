"""Similar items out: resolve the query (ids, vectors or texts) to one vector, search, shape results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .documents import as_vector, check_ids, id_filter
from .errors import InvalidInputError, NotFoundError
from .schema import ID_FIELD, VECTOR_FIELD, CollectionSpec

if TYPE_CHECKING:
    from .collection import Collection

MAX_LIMIT = 16384  # Milvus's top-k ceiling


def check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(f"limit must be an integer in [1, {MAX_LIMIT}], not {limit!r}")
    return limit


def check_output_fields(spec: CollectionSpec, output_fields: Any) -> list[str]:
    """Validate requested fields; ``id`` is always returned and need not be named."""
    if output_fields is None:
        return []
    if isinstance(output_fields, str) or not isinstance(output_fields, Sequence):
        raise InvalidInputError("output_fields must be a list of field names")
    known = spec.field_names
    for name in output_fields:
        if name not in known:
            raise InvalidInputError(f"output_fields: unknown field {name!r} (the collection has {', '.join(known)})")
    return [name for name in output_fields if name != ID_FIELD]


def mean_vector(vectors: np.ndarray, spec: CollectionSpec) -> np.ndarray:
    """The mean of several query vectors; re-normalised for IP/COSINE (for L2 the mean is kept
    as it is, since normalising would move it off the stored vectors' scale)."""
    mean = vectors.mean(axis=0) if vectors.shape[0] > 1 else vectors[0]
    if spec.metric == "L2":
        return mean.astype(np.float32)
    norm = float(np.linalg.norm(mean))
    if norm == 0.0:
        raise InvalidInputError("the query vectors cancel out: their mean is the zero vector")
    return (mean / norm).astype(np.float32)


def as_query_vectors(vectors: Any, spec: CollectionSpec, parameter: str = "vectors") -> np.ndarray:
    """One vector or a list of vectors → a checked (n, dim) float32 matrix."""
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{parameter} must be a vector or a list of vectors of numbers") from None
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise InvalidInputError(f"{parameter} must be a vector or a non-empty list of vectors")
    return np.stack(
        [as_vector(row, spec.dim, f"{parameter}[{i}]", normalize=False) for i, row in enumerate(matrix)]
    )


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
    """Accept ``{'ef': 128}`` or pymilvus's ``{'params': {...}}``; the metric is the collection's."""
    if search_params is not None and not isinstance(search_params, Mapping):
        raise InvalidInputError("search_params must be a dict such as {'ef': 128}")
    search_params = search_params or {}
    params = dict(search_params.get("params") or {})
    params.update({k: v for k, v in search_params.items() if k not in ("params", "metric_type")})
    if spec.vector_index.index_type == "HNSW" and "ef" not in params:
        # ef below the limit is refused by a server: never ask for fewer candidates than results
        params["ef"] = max(WIDE_EF if wide else DEFAULT_EF, limit)
    return {"metric_type": spec.metric, "params": params}


class SimilarQuery:
    """Resolves the query of ``retrieve_similar`` and runs it on one collection."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self.spec = collection.spec

    def __call__(
        self,
        ids: Sequence[str] | None = None,
        vectors: Any = None,
        texts: Sequence[str] | None = None,
        filter_expr: str | None = None,
        limit: int = 10,
        exclude_ids: bool = False,
        output_fields: Sequence[str] | None = None,
        search_params: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        given = [name for name, value in (("ids", ids), ("vectors", vectors), ("texts", texts)) if value is not None]
        if len(given) != 1:
            raise InvalidInputError(
                "retrieve_similar needs exactly one of ids, vectors or texts"
                + (f" (got {' and '.join(given)})" if given else "")
            )
        limit = check_limit(limit)
        fields = check_output_fields(self.spec, output_fields)
        query_ids: list[str] = []
        if ids is not None:
            query_ids = check_ids(ids)
            if not query_ids:
                raise InvalidInputError("ids is empty")
            matrix = self.stored_vectors(query_ids)
        elif texts is not None:
            matrix = self.collection.embed_query(texts)
        else:
            matrix = as_query_vectors(vectors, self.spec)
        query = mean_vector(matrix, self.spec)
        expr = combine_filters(filter_expr, id_filter(query_ids, negate=True) if exclude_ids and query_ids else None)
        return self.search([query], expr, limit, fields, search_params, filter_expr, averaged=len(matrix) > 1)[0]

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
        params = search_params_for(self.spec, search_params, limit, wide=bool(expr) or averaged)
        engine = self.collection.engine
        try:
            hits = engine.search(
                self.collection.name,
                f"search {self.collection.name!r}",
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
