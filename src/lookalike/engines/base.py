"""The one interface between lookalike and a vector engine.

``Client`` and ``Collection`` call only the methods of :class:`Engine`; what differs between the
embedded Milvus Lite (``lite/engine.py``) and a Milvus server (``server.py``) lives in those two
classes: consistency levels, scalar index names, retries, locking, features a 2.3 server lacks.

Every method raises lookalike's errors (``lookalike.errors``), never the engine's: the caller's
mistake is an ``InvalidInputError``, a missing collection a ``NotFoundError``, an engine that
cannot be reached or opened an ``EngineUnavailableError``, and a failure of the engine or its
disk a ``StorageError`` naming the data directory or server and what to do.

A new engine feature (grouping, rerankers, full-text search) is a new method here, implemented
by both engines (the server one may raise ``InvalidInputError`` naming the server version it
needs), and called from retrieval or the collection.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..schema import ID_FIELD, CollectionSpec


@dataclass(frozen=True)
class IndexState:
    """How far the vector index of a collection has got: rows in flushed segments that have their
    graph, and rows in flushed segments still waiting for it (searched exactly meanwhile). Writes
    not flushed yet are in neither: the engines search them exactly until a flush."""

    indexed_rows: int
    pending_rows: int

    @property
    def built(self) -> bool:
        """Whether every flushed row is indexed."""
        return self.pending_rows == 0

    def to_json(self) -> dict[str, Any]:
        return {"indexed_rows": self.indexed_rows, "pending_rows": self.pending_rows, "built": self.built}


@dataclass(frozen=True)
class Hits:
    """One query's hits as columns, best first: what a search returns without a dict per hit.

    Attributes:
        ids: the hits' ids, an object array.
        distances: their distances as ``search`` gives them (float64).
        fields: per requested field, its values in hit order (a vector field: a 2-D float32 array
            on Milvus Lite, a list of lists elsewhere).
    """

    ids: np.ndarray
    distances: np.ndarray
    fields: dict[str, Any]

    @classmethod
    def of(cls, hits: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> Hits:
        """``search``'s hits of one query (``{'id', 'distance', 'entity'}``) as columns."""
        entities = [hit.get("entity") or {} for hit in hits]
        ids = np.empty(len(hits), dtype=object)
        ids[:] = [hit.get("id", entity.get(ID_FIELD)) for hit, entity in zip(hits, entities, strict=True)]
        return cls(ids, np.asarray([float(hit["distance"]) for hit in hits], dtype=np.float64),
                   {name: [entity.get(name) for entity in entities] for name in fields if name != ID_FIELD})

    @classmethod
    def concat(cls, parts: Sequence[Hits]) -> Hits:
        """The hits of ``parts`` one after another, with the fields they all have."""
        names = [name for name in parts[0].fields if all(name in part.fields for part in parts)]
        return cls(np.concatenate([part.ids for part in parts]),
                   np.concatenate([part.distances for part in parts]),
                   {name: _joined([part.fields[name] for part in parts]) for name in names})

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: Sequence[int] | np.ndarray | slice) -> Hits:
        """The hits at ``rows`` (positions, or a slice), in that order."""
        index = rows if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        return Hits(self.ids[index], self.distances[index],
                    {name: _taken(values, index) for name, values in self.fields.items()})

    def row(self, i: int) -> dict[str, Any]:
        """Hit ``i`` as a dict ``{'id', 'distance', <fields>}``."""
        row = {name: values[i] for name, values in self.fields.items()}
        row["id"], row["distance"] = self.ids[i], float(self.distances[i])
        return row


def _taken(values: Any, index: np.ndarray | slice) -> Any:
    if isinstance(values, np.ndarray) or isinstance(index, slice):
        return values[index]
    return [values[i] for i in index]


def _joined(columns: list[Any]) -> Any:
    if all(isinstance(c, np.ndarray) for c in columns):
        return np.concatenate(columns)
    return [value for column in columns for value in column]


class Engine(ABC):
    """An open engine, seen from one organisation's database.

    Rows are dicts of field name to value; a vector is a sequence of floats (a numpy array on the
    way in is fine). Names are checked by the caller (``schema.validate_name``).
    """

    #: where the data lives, for messages: a data directory or a server URI (no secret in it)
    location: str
    #: which engine this is, as ``describe()`` reports it: ``"lite"`` or ``"server"`` (for display:
    #: what differs between engines is in their classes, never decided above this package)
    kind: str

    # -- collections -----------------------------------------------------------------------

    @abstractmethod
    def has_collection(self, name: str) -> bool:
        """Whether the organisation has a collection called ``name``."""

    @abstractmethod
    def list_collections(self) -> list[str]:
        """The organisation's collection names, sorted."""

    @abstractmethod
    def create_collection(self, name: str, spec: CollectionSpec) -> None:
        """Create ``name`` from ``spec``: its schema (string ``id``, vector ``vec``, the spec's
        fields), the spec recorded as a collection property, the vector index and the scalar
        indexes, loaded for search. Never leaves half a collection: if a step fails, what was
        created is dropped and the error raised."""

    @abstractmethod
    def drop_collection(self, name: str) -> bool:
        """Drop ``name`` and its documents.

        Returns:
            False if there was no such collection.
        """

    @abstractmethod
    def read_spec(self, name: str) -> CollectionSpec:
        """The spec lookalike recorded for ``name``, or one rebuilt from the engine's description
        of a collection lookalike did not create."""

    @abstractmethod
    def add_scalar_indexes(self, name: str, spec: CollectionSpec, added: Mapping[str, str | None]) -> CollectionSpec:
        """Index the fields of ``added`` (field -> index type, None for the engine's default) on a
        collection whose recorded spec is ``spec``, and record the new spec.

        Returns:
            The spec now recorded (``spec`` with ``added`` among its scalar indexes).
        """

    @abstractmethod
    def load(self, name: str) -> None:
        """Make ``name`` searchable (a collection reopened by a new process starts released)."""

    # -- documents -------------------------------------------------------------------------

    @abstractmethod
    def write(self, name: str, rows: list[dict[str, Any]], upsert: bool) -> None:
        """Store ``rows`` (checked by the caller); ``upsert`` replaces rows with the same id.
        When this returns, the rows are acknowledged: readable at once and kept across a crash."""

    @abstractmethod
    def flush(self, name: str) -> None:
        """Seal what was written into the engine's segments (its indexes are built from them)."""

    @abstractmethod
    def delete(self, name: str, expr: str) -> int:
        """Delete the documents matching the filter expression ``expr`` (never empty).

        Returns:
            How many documents matched and were deleted.
        """

    @abstractmethod
    def get(self, name: str, ids: Sequence[str], fields: list[str]) -> list[dict[str, Any]]:
        """The rows of ``ids`` (at most ~1000, checked) with ``fields``; ids not stored are left
        out, the order is not guaranteed."""

    def columns(self, name: str, ids: Sequence[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        """``fields`` of the stored ``ids`` (at most ~1000, checked) by id; ids not stored are left out."""
        return {row[ID_FIELD]: row for row in self.get(name, ids, [ID_FIELD, *fields])}

    @abstractmethod
    def search(
        self,
        name: str,
        *,
        data: Sequence[Any],
        filter: str,  # noqa: A002 - the engines' own keyword
        limit: int,
        output_fields: list[str],
        search_params: Mapping[str, Any],
        anns_field: str,
    ) -> list[list[dict[str, Any]]]:
        """Nearest neighbours of each query vector of ``data``.

        Args:
            data: the query vectors.
            filter: a filter expression, or "" for none.
            limit: hits per query.
            output_fields: fields to return in each hit's ``entity`` (never empty).
            search_params: ``{'metric_type': ..., 'params': {'ef': ...}}``.
            anns_field: the vector field searched.

        Returns:
            Per query, hits ``{'id', 'distance', 'entity'}`` best first.
        """

    def search_hits(
        self,
        name: str,
        *,
        data: Sequence[Any],
        filter: str,  # noqa: A002 - the engines' own keyword
        limit: int,
        output_fields: list[str],
        search_params: Mapping[str, Any],
        anns_field: str,
        skip_ids: Sequence[str] = (),
    ) -> list[Hits]:
        """:meth:`search`'s hits as columns, per query (the same hits, ids, distances and values).

        The reranking stages read a pool of candidates (~100 where a plain search returns 10):
        an engine that can hand out its hits as arrays (Milvus Lite) saves a dict per hit.

        Args:
            skip_ids: ids whose rows an engine that :attr:`masks_ids` leaves out of the search, as
                it leaves out rows that fail ``filter``; the others (this default) ignore them and
                the caller drops them from the hits.
        """
        hits = self.search(name, data=data, filter=filter, limit=limit, output_fields=output_fields,
                           search_params=search_params, anns_field=anns_field)
        return [Hits.of(per_query, output_fields) for per_query in hits]

    def search_slot(self) -> contextlib.AbstractContextManager[None]:
        """Held by a similarity request from its checks to its last hit. An engine that searches
        on this process's cores (the embedded one) admits a request per core at a time, so that
        threads beyond the cores wait instead of trading the GIL; this default, for an engine
        whose searches run elsewhere, admits every request at once."""
        return contextlib.nullcontext()

    @property
    def masks_ids(self) -> bool:
        """Whether :meth:`search_hits` leaves the rows of ``skip_ids`` out of the search (a long
        exclusion list as a bitmap over the rows, instead of rounds of over-fetching)."""
        return False

    @abstractmethod
    def check_full_text(self, what: str) -> None:
        """Raise ``InvalidInputError`` naming ``what`` (e.g. ``"keywords"``) and the engine's
        version if the engine has no full-text search; an engine that has it returns."""

    @abstractmethod
    def keyword_search(
        self,
        name: str,
        *,
        texts: Sequence[str],
        field: str,
        filter: str,  # noqa: A002 - the engines' own keyword
        limit: int,
        output_fields: list[str],
    ) -> list[list[dict[str, Any]]]:
        """Full-text (BM25) search of each text of ``texts`` in the full-text field ``field``
        (declared with ``enable_analyzer``; the engine analyses the text as it analysed the field).

        Args:
            texts: the keywords, one query each.
            field: a full-text field of the collection's spec.
            filter: a filter expression, or "" for none.
            limit: hits per query.
            output_fields: fields to return in each hit's ``entity`` (never empty).

        Returns:
            Per query, hits ``{'id', 'distance', 'entity'}``, ``distance`` the BM25 score, best
            (highest) first; documents sharing no term with the text are not hits.

        Raises:
            InvalidInputError: the engine has no full-text search (a server before Milvus 2.5).
        """

    @abstractmethod
    def count(self, name: str, expr: str = "") -> int:
        """How many documents match ``expr`` ("" for all)."""

    @abstractmethod
    def iterate(
        self, name: str, batch_size: int, fields: list[str], expr: str = ""
    ) -> Iterator[list[dict[str, Any]]]:
        """Every document with ``fields`` (those matching the filter ``expr``; "" for all), in
        batches of at most ``batch_size`` rows. Writes made while iterating may or may not be
        seen; each batch is read consistently."""

    @abstractmethod
    def index_state(self, name: str) -> IndexState:
        """The vector index's progress over the flushed rows of ``name`` (physical rows: an
        overwritten or deleted version counts until a compaction drops it)."""

    @abstractmethod
    def wait_for_index(self, name: str, timeout: float | None = None) -> IndexState:
        """Return once the vector index covers every row of ``name`` flushed before the call (the
        engines build it in the background after a flush; searches are correct meanwhile). Rows
        flushed by other writers during the wait may still be pending in the state returned.

        Raises:
            IndexTimeoutError: ``timeout`` seconds passed first (the build goes on).
        """

    @abstractmethod
    def close(self) -> None:
        """Let go of the engine (idempotent); the last client of an embedded engine closes it."""
