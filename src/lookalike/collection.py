"""One collection of one organisation: the object that does the work of the five calls."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .documents import DocumentWriter, check_ids, id_filter
from .errors import ConflictError, InvalidInputError
from .retrieval import SimilarQuery, as_query_vectors, check_limit, check_output_fields, combine_filters
from .schema import ID_FIELD, VECTOR_FIELD, CollectionSpec

if TYPE_CHECKING:
    from .client import Client
    from .embedding import Embedder

# Ids per query expression when reading by id: keeps expressions short on both engines.
IDS_PER_QUERY = 1000


class Collection:
    """A collection's documents: index, get, similar, delete, count, describe.

    Get one from :meth:`Client.create_collection` or :meth:`Client.collection`.
    """

    def __init__(self, client: Client, name: str, spec: CollectionSpec, embedder: Embedder | None = None) -> None:
        self.client = client
        self.name = name
        self.spec = spec
        self._embedder = embedder
        self._embedder_lock = threading.Lock()

    def __repr__(self) -> str:
        spec = self.spec
        return f"Collection({self.name!r}, dim={spec.dim}, metric={spec.metric!r}, codops={self.client.codops!r})"

    @property
    def engine(self):
        return self.client.engine

    @property
    def read_options(self) -> dict[str, str]:
        return self.engine.read_options(self.name)

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
            engine.write(self.name, f"write to {self.name!r}", rows, upsert)

        writer = DocumentWriter(
            self.spec,
            write,
            existing=None if upsert else self.existing_ids,
            embed=self.embed_documents if self.spec.embedder else None,
            normalize=normalize,
        )
        written = writer(documents, progress)
        if flush and written:
            with engine.errors(f"flush {self.name!r}"):
                engine.milvus.flush(self.name)
        return written

    def delete(self, ids: Sequence[str] | None = None, filter_expr: str | None = None) -> int:
        """Delete documents by ids, by filter, or both (documents matching both); returns how many."""
        if ids is None and not filter_expr:
            raise InvalidInputError("delete needs ids, filter_expr, or both (refusing to delete everything)")
        expr = combine_filters(id_filter(check_ids(ids)) if ids is not None else None, filter_expr)
        if ids is not None and not ids:
            return 0
        matching = self._count(expr, filter_expr)
        if matching:
            with self.engine.errors(f"delete from {self.name!r}"):
                self.engine.milvus.delete(self.name, filter=expr)
            self.engine.read_strongly(self.name)
        return matching

    def drop(self) -> bool:
        return self.client.drop_collection(self.name)

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
            rows = self.engine.get(self.name, f"read {self.name!r}", batch, fields, id_filter(batch))
            found.update((row[ID_FIELD], row) for row in rows)
        return [found[i] for i in dict.fromkeys(ids) if i in found]

    def _read_fields(self, output_fields: Sequence[str] | None) -> list[str]:
        """Fields to read: all of them by default; ``id`` always."""
        if output_fields is None:
            return self.spec.field_names
        return [ID_FIELD, *check_output_fields(self.spec, output_fields)]

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are stored."""
        return {doc[ID_FIELD] for doc in self.get(ids, [ID_FIELD])}

    def similar(
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
        """Items most similar to some stored ids, vectors or texts (several: their mean), best first.

        Returns ``[{'id': ..., 'distance': ...}, ...]``; ``distance`` is the engine's score: a
        similarity for IP and COSINE (higher is closer), a distance for L2 (lower is closer).
        The query ids are included unless ``exclude_ids=True``.
        """
        return SimilarQuery(self)(ids, vectors, texts, filter_expr, limit, exclude_ids, output_fields, search_params)

    def similar_batch(
        self,
        vectors: Any,
        filter_expr: str | None = None,
        limit: int = 10,
        output_fields: Sequence[str] | None = None,
        search_params: Mapping[str, Any] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """One result list per query vector, in one engine call (no averaging)."""
        query = SimilarQuery(self)
        matrix = as_query_vectors(vectors, self.spec)
        if self.spec.metric != "L2":
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            if (norms == 0).any():
                raise InvalidInputError("vectors: a query vector is all zeros")
            matrix = matrix / norms
        fields = check_output_fields(self.spec, output_fields)
        return query.search(list(matrix), filter_expr or "", check_limit(limit), fields, search_params, filter_expr)

    def count(self, filter_expr: str | None = None) -> int:
        """How many documents are stored (matching ``filter_expr`` when given)."""
        return self._count(filter_expr or "", filter_expr)

    def _count(self, expr: str, filter_expr: str | None) -> int:
        try:
            rows = self.engine.read(f"count {self.name!r}", self.engine.milvus.query, self.name, filter=expr,
                                    output_fields=["count(*)"], **self.read_options)
        except InvalidInputError as exc:
            if filter_expr:
                raise InvalidInputError(f"filter_expr {filter_expr!r} was rejected: {exc}") from None
            raise
        return int(rows[0]["count(*)"])

    def iterate(self, batch_size: int = 1000, output_fields: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every document (all fields unless ``output_fields`` is given), in batches from the engine."""
        fields = self._read_fields(output_fields)
        with self.engine.errors(f"read {self.name!r}"):
            iterator = self.engine.milvus.query_iterator(self.name, batch_size=batch_size, output_fields=fields)
        try:
            while True:
                with self.engine.errors(f"read {self.name!r}"):
                    batch = iterator.next()
                if not batch:
                    return
                for row in batch:
                    yield _plain(row, fields)
        finally:
            iterator.close()

    def describe(self) -> dict[str, Any]:
        """The collection's spec (as JSON), its engine and its document count."""
        return {"name": self.name, **self.spec.to_json(), "metric": self.spec.metric,
                "engine": self.engine.kind, "count": self.count()}

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

        return embed_texts(self.embedder, texts, cache_dir=self.client.cache_dir)

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


def _plain(row: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """A result row with plain Python values, in the field order asked."""
    out = {}
    for name in fields:
        value = row.get(name)
        if name == VECTOR_FIELD and value is not None:
            value = [float(x) for x in value]
        out[name] = value
    return out
