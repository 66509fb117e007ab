"""The facade: one organisation's view of Milvus, embedded or server, chosen from the settings."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pymilvus import FieldSchema

from . import transfer
from .collection import Collection, check_embedder
from .config import Settings
from .engines import open_engine
from .errors import ConflictError, InvalidInputError, NotFoundError
from .retrieval import SimilarRequest
from .schema import DEFAULT_DIM, CollectionSpec, build_spec, validate_name


class Client:
    """Connects to Milvus for one organisation and hands out its collections.

    ``Client()`` reads the environment (see :class:`Settings`); keyword arguments such as
    ``codops=``, ``password=``, ``uri=`` or ``data_dir=`` override it. With no URI the data lives
    in an embedded Milvus Lite under ``data_dir``; with ``uri='http://host:19530'`` on a server.
    Every organisation works in its own Milvus database and never sees another's.

    One ``Client`` may be shared by threads (the HTTP service does). It guarantees, for the
    embedded engine and a server alike: read-your-writes per thread (once ``index`` or ``delete``
    returns, the thread's next read sees it); an acknowledged write survives (also a close and
    reopen); a delete stays deleted. On the embedded engine a read also never sees a write or a
    flush half done (see ``engines/lite/engine.py``).
    """

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        if settings is not None and overrides:
            raise InvalidInputError("pass either settings or keyword overrides, not both")
        self.settings = settings or Settings.from_env(**overrides)
        self.engine = open_engine(self.settings)
        self._collections: dict[str, Collection] = {}
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Client(codops={self.codops!r}, engine={self.engine.kind!r}, location={self.engine.location!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def codops(self) -> str:
        return self.settings.codops

    @property
    def cache_dir(self) -> Path:
        """Where the embedding cache lives (beside the embedded data, or per user for a server)."""
        return self.settings.cache_dir

    def close(self) -> None:
        with self._lock:
            self._collections.clear()
            self.engine.close()

    # -- collections ----------------------------------------------------------------------

    def create_collection(
        self,
        name: str,
        fields: Iterable[FieldSchema | Mapping[str, Any]] = (),
        indexes: Mapping[str, Any] | None = None,
        dim: int | None = None,
        *,
        embedder: Any = None,
    ) -> Collection:
        """Create a collection (string ``id``, vector ``vec`` of ``dim``, and ``fields``) and its indexes.

        Safe to run again: an existing collection with the same schema is returned as it is
        (indexes requested for fields that have none yet are added); one with another schema
        raises ConflictError saying what differs. ``embedder`` (a built-in model name,
        ``'default'``, or an embedder object) binds a model and sets ``dim`` from it.
        """
        validate_name(name)
        model = None
        if embedder is not None:
            from .embedding import embedder_info, get_embedder

            model = get_embedder(embedder)
            if dim is not None and dim != model.dim:
                raise InvalidInputError(f"dim={dim} contradicts the embedder {model.name!r} (dim {model.dim})")
            dim = model.dim
        spec = build_spec(fields, indexes, DEFAULT_DIM if dim is None else dim, embedder_info(model) if model else None)
        with self._lock:
            if self.has_collection(name):
                return self._reconcile(name, spec, model)
            self.engine.create_collection(name, spec)
            self._collections[name] = self._collection_object(name, spec, model)
            return self._collections[name]

    def collection(self, name: str, embedder: Any = None) -> Collection:
        """An existing collection (NotFoundError if there is none by that name).

        ``embedder`` supplies the model object when the collection was built with a custom one;
        it must carry the recorded name and dimension.
        """
        validate_name(name)
        with self._lock:
            found = self._collections.get(name)
            if found is None:
                if not self.has_collection(name):
                    raise NotFoundError(f"collection {name!r} does not exist for organisation {self.codops!r}")
                found = self._collection_object(name, self.engine.read_spec(name))
                self.engine.load(name)
                self._collections[name] = found
            if embedder is not None:
                from .embedding import get_embedder

                found._embedder = check_embedder(name, found.spec, get_embedder(embedder))
            return found

    def has_collection(self, name: str) -> bool:
        validate_name(name)
        return self.engine.has_collection(name)

    def list_collections(self) -> list[str]:
        return self.engine.list_collections()

    def drop_collection(self, name: str) -> bool:
        """Drop a collection and its documents; False if there was none."""
        validate_name(name)
        with self._lock:
            self._collections.pop(name, None)
            return self.engine.drop_collection(name)

    def import_collection(self, path: str | Path, name: str | None = None, **options: Any) -> tuple[Collection, int]:
        """Recreate a collection from a file :meth:`Collection.export` wrote: schema, indexes, documents.

        Args:
            path: the export (JSON Lines or Parquet, with its schema header).
            name: the collection to create or fill (default: the exported name).
            options: ``format``, ``batch_size``, ``on_batch`` (see :func:`lookalike.transfer.import_collection`).

        Returns:
            The collection and how many documents were written.
        """
        return transfer.import_collection(self, path, name, **options)

    # -- name-first conveniences (the module functions call these) --------------------------

    def index(self, name: str, documents: Iterable[Mapping[str, Any]], **options: Any) -> int:
        return self.collection(name).index(documents, **options)

    def get_documents(
        self, name: str, ids: Iterable[str], output_fields: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        return self.collection(name).get(ids, output_fields)  # type: ignore[arg-type]

    def retrieve_similar(
        self, name: str, request: SimilarRequest | Mapping[str, Any] | None = None, **parameters: Any
    ) -> list[dict[str, Any]]:
        """:meth:`Collection.similar` of the collection ``name``."""
        return self.collection(name).similar(request, **parameters)

    def retrieve_similar_batch(
        self, name: str, requests: Sequence[SimilarRequest | Mapping[str, Any]], **shared: Any
    ) -> list[list[dict[str, Any]]]:
        """:meth:`Collection.similar_batch` of the collection ``name``."""
        return self.collection(name).similar_batch(requests, **shared)

    def delete_documents(self, name: str, ids: Iterable[str] | None = None, filter_expr: str | None = None) -> int:
        return self.collection(name).delete(ids, filter_expr)  # type: ignore[arg-type]

    def count(self, name: str, filter_expr: str | None = None) -> int:
        return self.collection(name).count(filter_expr)

    def describe(self, name: str) -> dict[str, Any]:
        return self.collection(name).describe()

    def wait_for_index(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        """:meth:`Collection.wait_for_index` of the collection ``name``."""
        return self.collection(name).wait_for_index(timeout)

    def map_sample(self, name: str, **options: Any) -> dict[str, Any]:
        """:meth:`Collection.map` of the collection ``name``."""
        return self.collection(name).map(**options)

    def cluster(self, name: str, **options: Any) -> list[dict[str, Any]]:
        """:meth:`Collection.cluster` of the collection ``name``."""
        return self.collection(name).cluster(**options)

    def near_duplicates(self, name: str, **options: Any) -> dict[str, Any]:
        """:meth:`Collection.near_duplicates` of the collection ``name``."""
        return self.collection(name).near_duplicates(**options)

    # -- internals ------------------------------------------------------------------------

    def _collection_object(self, name: str, spec: CollectionSpec, model: Any = None) -> Collection:
        return Collection(self.engine, name, spec, cache_dir=self.cache_dir, drop=self.drop_collection,
                          owner=self.codops, embedder=model)

    def _reconcile(self, name: str, requested: CollectionSpec, model: Any) -> Collection:
        """create_collection on an existing name: same schema → reuse; new scalar indexes → add."""
        existing = self.collection(name)
        diffs = existing.spec.differences(requested)
        if diffs:
            raise ConflictError(
                f"collection {name!r} exists with another schema: {'; '.join(diffs)}. "
                "Drop it first, or use another name."
            )
        added = {f: k for f, k in requested.scalar_indexes.items() if f not in existing.spec.scalar_indexes}
        if added:
            existing.spec = self.engine.add_scalar_indexes(name, existing.spec, added)
        if model is not None:
            existing._embedder = check_embedder(name, existing.spec, model)
        return existing
