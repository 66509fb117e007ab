"""One collection of one organisation: the object that does the work of the five calls."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import clusters, duplicates, projection, transfer
from .documents import DocumentWriter, check_ids, id_filter
from .errors import ConflictError, InvalidInputError
from .retrieval import (
    SimilarQuery,
    SimilarRequest,
    as_query_vectors,
    check_output_fields,
    combine_filters,
)
from .schema import ID_FIELD, VECTOR_FIELD, CollectionSpec

if TYPE_CHECKING:
    from .embedding import Embedder
    from .engines import Engine

# Ids per query expression when reading by id: keeps expressions short on both engines.
IDS_PER_QUERY = 1000


class Collection:
    """A collection's documents: index, get, similar, delete, count, describe.

    Get one from :meth:`Client.create_collection` or :meth:`Client.collection`, which hand it
    what it works with: the engine, the collection's spec, where embeddings are cached, and the
    client's way to drop it.
    """

    def __init__(
        self,
        engine: Engine,
        name: str,
        spec: CollectionSpec,
        *,
        cache_dir: Path,
        drop: Callable[[str], bool],
        owner: str = "",
        embedder: Embedder | None = None,
    ) -> None:
        """
        Args:
            engine: the open engine of the collection's organisation.
            name: the collection's name.
            spec: its recorded spec.
            cache_dir: where the embedding cache lives.
            drop: drops a collection by name (the client's, which forgets its own handle too).
            owner: the organisation's code, for ``repr``.
            embedder: the model bound to it, when the caller has it already.
        """
        self.engine = engine
        self.name = name
        self.spec = spec
        self.cache_dir = cache_dir
        self.owner = owner
        self._drop = drop
        self._embedder = embedder
        self._embedder_lock = threading.Lock()

    def __repr__(self) -> str:
        spec = self.spec
        return f"Collection({self.name!r}, dim={spec.dim}, metric={spec.metric!r}, codops={self.owner!r})"

    # -- writing --------------------------------------------------------------------------

    def index(
        self,
        documents: Iterable[Mapping[str, Any]],
        normalize: bool = True,
        upsert: bool = True,
        flush: bool = True,
        progress: bool | None = None,
    ) -> int:
        """Store documents (dicts with ``id``, ``vec`` and metadata); returns how many were written.

        ``upsert=True`` replaces documents with the same id; ``upsert=False`` refuses ids that are
        stored already (ConflictError) instead of storing a second copy. ``flush=True`` flushes
        once at the end. With a bound embedder, a document may carry ``text`` instead of ``vec``.
        """
        engine = self.engine

        def write(rows: list[dict[str, Any]]) -> None:
            engine.write(self.name, rows, upsert)

        writer = DocumentWriter(
            self.spec,
            write,
            existing=None if upsert else self.existing_ids,
            embed=self.embed_documents if self.spec.embedder else None,
            normalize=normalize,
        )
        written = writer(documents, progress)
        if flush and written:
            engine.flush(self.name)
        return written

    def delete(self, ids: Sequence[str] | None = None, filter_expr: str | None = None) -> int:
        """Delete documents by ids, by filter, or both (documents matching both); returns how many."""
        if ids is None and not filter_expr:
            raise InvalidInputError("delete needs ids, filter_expr, or both (refusing to delete everything)")
        expr = combine_filters(id_filter(check_ids(ids)) if ids is not None else None, filter_expr)
        if ids is not None and not ids:
            return 0
        with _rejected_filter(filter_expr):
            return self.engine.delete(self.name, expr)

    def drop(self) -> bool:
        """Drop this collection and its documents; False if it was gone already."""
        return self._drop(self.name)

    # -- reading --------------------------------------------------------------------------

    def get(self, ids: Sequence[str], output_fields: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Documents by id, in the order asked; ids not stored are left out.

        ``output_fields=None`` returns every field, the vector included.
        """
        fields = self._read_fields(output_fields)
        return [_plain(row, fields) for row in self.rows_by_id(check_ids(ids), fields)]

    def rows_by_id(self, ids: list[str], fields: list[str]) -> list[dict[str, Any]]:
        """The engine's rows for ``ids`` (checked ids), in their order, missing ones left out."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), IDS_PER_QUERY):
            batch = ids[start : start + IDS_PER_QUERY]
            rows = self.engine.get(self.name, batch, fields)
            found.update((row[ID_FIELD], row) for row in rows)
        return [found[i] for i in dict.fromkeys(ids) if i in found]

    def columns_by_id(self, ids: list[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        """``fields`` of the stored ``ids`` (checked ids) by id, missing ones left out; a vector is
        a row of the engine's array where it reads them directly (``Engine.columns``), else a list."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), IDS_PER_QUERY):
            found.update(self.engine.columns(self.name, ids[start : start + IDS_PER_QUERY], fields))
        return found

    def _read_fields(self, output_fields: Sequence[str] | None) -> list[str]:
        """Fields to read: all of them by default; ``id`` always."""
        if output_fields is None:
            return self.spec.field_names
        return [ID_FIELD, *check_output_fields(self.spec, output_fields)]

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are stored."""
        return {doc[ID_FIELD] for doc in self.get(ids, [ID_FIELD])}

    def similar(
        self, request: SimilarRequest | Mapping[str, Any] | None = None, **parameters: Any
    ) -> list[dict[str, Any]]:
        """Items most similar to some stored ids, vectors or texts (several: their mean), best first.

        Args:
            request: a :class:`SimilarRequest` (or a dict of its fields); or give its fields as
                keywords: ``ids``, ``vectors`` or ``texts``, ``filter_expr``, ``limit``,
                ``exclude_ids``, ``output_fields``, ``search_params``, and the recommendation
                parameters ``negative_ids``, ``strategy``, ``weights``, ``group_by``,
                ``group_size``, ``diversity``, ``candidates``, ``recency``, ``min_score``,
                ``offset``, ``explain`` (README, "Recommendations").

        Returns:
            ``[{'id': ..., 'distance': ...}, ...]``; ``distance`` is the hit's score: a similarity
            for IP and COSINE (higher is closer; after ``recency``, similarity × decay factor), a
            distance for L2 (lower is closer). The query ids are included unless ``exclude_ids``.
        """
        return SimilarQuery(self)(SimilarRequest.of(request, **parameters))

    def similar_batch(self, requests: Any, **shared: Any) -> list[list[dict[str, Any]]]:
        """Many requests in one call: one result list per request, in order, each equal to
        :meth:`similar` of that request; requests whose engine calls differ only in their query
        vector share one engine call (nq > 1, much faster than one call each).

        Args:
            requests: a list of requests, each a :class:`SimilarRequest` or a dict of its fields;
                or a list (or matrix) of vectors, each one request ``{"vectors": [v], **shared}``.
            shared: parameters for every dict request (a request's own keys win).

        Returns:
            The hits of each request.
        """
        items = list(requests) if isinstance(requests, (list, tuple)) else None
        if items is not None and items and all(isinstance(x, (SimilarRequest, Mapping)) for x in items):
            checked = []
            for item in items:
                if isinstance(item, SimilarRequest) and shared:
                    raise InvalidInputError(
                        f"parameters for every request ({', '.join(sorted(shared))}) go with dict requests, "
                        "not SimilarRequest objects"
                    )
                checked.append(SimilarRequest.of(item if isinstance(item, SimilarRequest) else {**shared, **item}))
        else:
            matrix = as_query_vectors(requests, self.spec)  # errors name vectors[i], as the vectors they are
            checked = [SimilarRequest.of({**shared, "vectors": row}) for row in matrix]
        return SimilarQuery(self).batch(checked)

    def count(self, filter_expr: str | None = None) -> int:
        """How many documents are stored (matching ``filter_expr`` when given)."""
        with _rejected_filter(filter_expr):
            return self.engine.count(self.name, filter_expr or "")

    def iterate(
        self, batch_size: int = 1000, output_fields: Sequence[str] | None = None, filter_expr: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every document (all fields unless ``output_fields`` is given; those matching
        ``filter_expr`` when given), in batches from the engine."""
        fields = self._read_fields(output_fields)
        with _rejected_filter(filter_expr):
            for batch in self.engine.iterate(self.name, batch_size, fields, filter_expr or ""):
                for row in batch:
                    yield _plain(row, fields)

    def map(self, sample: int = 2000, seed: int = 0, color_field: str | None = None,
            ids: Sequence[str] | None = None, texts: Sequence[str] | None = None) -> dict[str, Any]:
        """A 2-D map of a sample of the documents (PCA), with ``ids`` and ``texts`` placed on it:
        see :func:`lookalike.projection.map_sample` for the parameters and the answer."""
        return projection.map_sample(self, sample=sample, seed=seed, color_field=color_field, ids=ids, texts=texts)

    def cluster(self, k: int | None = None, threshold: float | None = None, filter_expr: str | None = None,
                field: str | None = None, seed: int = 0, progress: bool | None = None) -> list[dict[str, Any]]:
        """Group the documents by k-means (``k``) or by a similarity ``threshold``: per cluster its
        ``label``, ``size``, ``medoid``, ``ids`` and ``terms``; ``field`` receives each document's
        label. See :func:`lookalike.clusters.cluster` for the parameters and the answer."""
        return clusters.cluster(self, k=k, threshold=threshold, filter_expr=filter_expr, field=field, seed=seed,
                                progress=progress)

    def near_duplicates(self, threshold: float = duplicates.DEFAULT_THRESHOLD, filter_expr: str | None = None,
                        progress: bool | None = None) -> dict[str, Any]:
        """The pairs of documents at or above ``threshold`` (found by a batched self-search of the
        index) and the groups they link: ``{"pairs": [{"a", "b", "score"}], "groups": [[id, ...]]}``.
        See :func:`lookalike.duplicates.near_duplicates`."""
        return duplicates.near_duplicates(self, threshold=threshold, filter_expr=filter_expr, progress=progress)

    def export(self, path: str | Path, format: str | None = None, **options: Any) -> int:
        """Write every document and the schema to one self-describing file (JSON Lines or Parquet).

        Args:
            path: the file to write (``.jsonl`` or ``.parquet``); written whole or not at all.
            format: ``"jsonl"`` or ``"parquet"`` (default: from the suffix).
            options: ``batch_size``, ``on_batch`` (see :func:`lookalike.transfer.export_collection`).

        Returns:
            How many documents were written.
        """
        return transfer.export_collection(self, path, format, **options)

    def export_lines(self, batch_size: int = 1000) -> Iterator[str]:
        """The JSON Lines text :meth:`export` writes, line by line (the schema header first)."""
        return transfer.export_lines(self, batch_size=batch_size)

    def describe(self) -> dict[str, Any]:
        """The collection's spec (as JSON), its engine, its document count and its index state
        (``index``: see :meth:`wait_for_index`)."""
        return {"name": self.name, **self.spec.to_json(), "metric": self.spec.metric,
                "engine": self.engine.kind, "count": self.count(),
                "index": self.engine.index_state(self.name).to_json()}

    def wait_for_index(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the vector index covers every document flushed before the call (the engine
        builds it in the background after ``index()``; searches are correct, only slower, meanwhile).

        Args:
            timeout: seconds to wait at most (None: as long as it takes).

        Returns:
            ``indexed_rows`` and ``pending_rows`` (rows flushed by other writers meanwhile may be
            pending) and ``built`` (no row pending).

        Raises:
            IndexTimeoutError: ``timeout`` passed first (the build goes on).
        """
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not 0 <= timeout < float("inf")):
            raise InvalidInputError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
        return self.engine.wait_for_index(self.name, timeout).to_json()

    # -- text -----------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        """The model bound to this collection (loaded on first use)."""
        if not self.spec.embedder:
            raise InvalidInputError(
                f"collection {self.name!r} has no embedder: create it with embedder='default' to index or search text"
            )
        with self._embedder_lock:
            if self._embedder is None:
                from .embedding import BUILTIN_MODELS, get_embedder

                recorded = self.spec.embedder["name"]
                if recorded not in BUILTIN_MODELS:
                    raise InvalidInputError(
                        f"collection {self.name!r} was built with the custom model {recorded!r}: "
                        f"open it with client.collection({self.name!r}, embedder=<that model>)"
                    )
                self._embedder = check_embedder(self.name, self.spec, get_embedder(recorded))
            return self._embedder

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        from .embedding import embed_texts

        return embed_texts(self.embedder, texts, cache_dir=self.cache_dir)

    def embed_query(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
            raise InvalidInputError("texts must be a non-empty list of strings")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidInputError(f"texts[{i}] must be a non-empty string")
        return np.asarray(self.embedder.encode(list(texts), is_query=True), dtype=np.float32)


def check_embedder(name: str, spec: CollectionSpec, embedder: Embedder) -> Embedder:
    """Refuse a model other than the one that built the collection."""
    recorded = spec.embedder or {}
    if recorded and (recorded.get("name") != embedder.name or int(recorded.get("dim", -1)) != embedder.dim):
        raise ConflictError(
            f"collection {name!r} was built with model {recorded.get('name')!r} (dim {recorded.get('dim')}); "
            f"refusing to mix in vectors of {embedder.name!r} (dim {embedder.dim})"
        )
    return embedder


@contextlib.contextmanager
def _rejected_filter(filter_expr: str | None) -> Iterator[None]:
    """Name the caller's filter in the engine's refusal of it."""
    try:
        yield
    except InvalidInputError as exc:
        if filter_expr:
            raise InvalidInputError(f"filter_expr {filter_expr!r} was rejected: {exc}") from None
        raise


def _plain(row: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """A result row with plain Python values, in the field order asked."""
    out = {}
    for name in fields:
        value = row.get(name)
        if name == VECTOR_FIELD and value is not None:
            value = [float(x) for x in value]
        out[name] = value
    return out
