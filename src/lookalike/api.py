"""The in-house helper's five calls (and their companions) over a process-wide default client.

Code written for the original helper runs with only its import line changed. Each function is a
thin call on :class:`~lookalike.client.Client`; none has logic of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pymilvus import FieldSchema

from .client import Client
from .config import Settings
from .retrieval import SimilarRequest

_default: Client | None = None
_lock = threading.Lock()


def connect(settings: Settings | None = None, **overrides: Any) -> Client:
    """Open the default client from the environment (``CODOPS``, ``CODOPS_<CODE>_MILVUS_PASSWORD``,
    ``LOOKALIKE_MILVUS_URI``, ``LOOKALIKE_DATA_DIR``); later calls return the same client unless
    other settings are given, which replace it."""
    global _default
    with _lock:
        wanted = settings or (Settings.from_env(**overrides) if overrides or _default is None else None)
        if _default is not None and (wanted is None or wanted == _default.settings):
            return _default
        if _default is not None:
            _default.close()
        _default = Client(wanted)
        return _default


def disconnect() -> None:
    """Close the default client (the next call connects again)."""
    global _default
    with _lock:
        if _default is not None:
            _default.close()
            _default = None


def default_client() -> Client:
    """The default client, connecting from the environment on first use."""
    return _default if _default is not None else connect()


def create_collection(
    name: str,
    fields: Iterable[FieldSchema | Mapping[str, Any]] = (),
    indexes: Mapping[str, Any] | None = None,
    dim: int | None = None,
    *,
    embedder: Any = None,
):
    """Create a collection, or return the existing one with the same schema (see Client.create_collection)."""
    return default_client().create_collection(name, fields, indexes, dim, embedder=embedder)


def index(
    name: str,
    documents: Iterable[Mapping[str, Any]],
    normalize: bool = True,
    upsert: bool = True,
    flush: bool = True,
    progress: bool | None = None,
) -> int:
    """Store documents (dicts with ``id``, ``vec`` and metadata); returns how many were written."""
    return default_client().index(name, documents, normalize=normalize, upsert=upsert, flush=flush, progress=progress)


def get_documents(name: str, ids: Sequence[str], output_fields: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Documents by id, in the order asked; ids not stored are left out."""
    return default_client().get_documents(name, ids, output_fields)


def retrieve_similar(
    name: str, request: SimilarRequest | Mapping[str, Any] | None = None, **parameters: Any
) -> list[dict[str, Any]]:
    """``[{'id': ..., 'distance': ...}]``, best first, for the mean of ``ids``, ``vectors`` or ``texts``.

    The parameters are :class:`lookalike.SimilarRequest`'s fields, as keywords (``ids=[...]``,
    ``filter_expr=...``, ``limit=...``, ...) or as one request object.
    """
    return default_client().retrieve_similar(name, request, **parameters)


def retrieve_similar_batch(
    name: str, requests: Sequence[SimilarRequest | Mapping[str, Any]], **shared: Any
) -> list[list[dict[str, Any]]]:
    """Many users' requests in one call (each a dict of ``retrieve_similar``'s parameters or a
    :class:`lookalike.SimilarRequest`): their hits in order, each equal to the single call."""
    return default_client().retrieve_similar_batch(name, requests, **shared)


def delete_documents(name: str, ids: Sequence[str] | None = None, filter_expr: str | None = None) -> int:
    """Delete by ids and/or filter; returns how many documents were deleted."""
    return default_client().delete_documents(name, ids, filter_expr)


def drop_collection(name: str) -> bool:
    return default_client().drop_collection(name)


def list_collections() -> list[str]:
    return default_client().list_collections()


def count(name: str, filter_expr: str | None = None) -> int:
    return default_client().count(name, filter_expr)


def describe(name: str) -> dict[str, Any]:
    return default_client().describe(name)


def wait_for_index(name: str, timeout: float | None = None) -> dict[str, Any]:
    """Wait until the vector index covers every document flushed before the call; returns
    ``indexed_rows``, ``pending_rows`` and ``built`` (IndexTimeoutError after ``timeout`` seconds)."""
    return default_client().wait_for_index(name, timeout)


def map_sample(name: str, **options: Any) -> dict[str, Any]:
    """A 2-D map (PCA) of a sample of the collection: ``sample``, ``seed``, ``color_field``, and
    ``ids`` and ``texts`` to place on it (see :func:`lookalike.projection.map_sample`)."""
    return default_client().map_sample(name, **options)


def cluster(
    name: str,
    k: int | None = None,
    threshold: float | None = None,
    filter_expr: str | None = None,
    field: str | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Clusters of the documents by k-means (``k``) or a similarity ``threshold``: per cluster its
    ``label``, ``size``, ``medoid``, ``ids`` and ``terms`` (see :func:`lookalike.clusters.cluster`)."""
    return default_client().cluster(name, k=k, threshold=threshold, filter_expr=filter_expr, field=field, seed=seed)


def near_duplicates(name: str, threshold: float = 0.95, filter_expr: str | None = None) -> dict[str, Any]:
    """Pairs of documents at or above ``threshold``, and their groups
    (see :func:`lookalike.duplicates.near_duplicates`)."""
    return default_client().near_duplicates(name, threshold=threshold, filter_expr=filter_expr)
