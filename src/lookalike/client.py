"""The facade: one organisation's view of Milvus, embedded or server, chosen from the settings."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pymilvus import DataType, FieldSchema

from .collection import Collection, check_embedder
from .config import Settings
from .engines import open_engine
from .errors import ConflictError, InvalidInputError, NotFoundError
from .schema import (
    DEFAULT_DIM,
    ID_FIELD,
    ID_MAX_LENGTH,
    SPEC_PROPERTY,
    VECTOR_FIELD,
    CollectionSpec,
    build_spec,
    spec_from_description,
    spec_loads,
    validate_name,
)


class Client:
    """Connects to Milvus for one organisation and hands out its collections.

    ``Client()`` reads the environment (see :class:`Settings`); keyword arguments such as
    ``codops=``, ``password=``, ``uri=`` or ``data_dir=`` override it. With no URI the data lives
    in an embedded Milvus Lite under ``data_dir``; with ``uri='http://host:19530'`` on a server.
    Every organisation works in its own Milvus database and never sees another's.
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
        return self.settings.data_dir / "embedding-cache"

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
            self._create(name, spec)
            self._collections[name] = Collection(self, name, spec, model)
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
                found = Collection(self, name, self._read_spec(name))
                self._load(name)
                self._collections[name] = found
            if embedder is not None:
                from .embedding import get_embedder

                found._embedder = check_embedder(name, found.spec, get_embedder(embedder))
            return found

    def has_collection(self, name: str) -> bool:
        validate_name(name)
        return bool(self.engine.read("list collections", self.engine.milvus.has_collection, name))

    def list_collections(self) -> list[str]:
        return sorted(self.engine.read("list collections", self.engine.milvus.list_collections))

    def drop_collection(self, name: str) -> bool:
        """Drop a collection and its documents; False if there was none."""
        validate_name(name)
        with self._lock:
            self._collections.pop(name, None)
            if not self.has_collection(name):
                return False
            with self.engine.errors(f"drop {name!r}"):
                # A 2.3 server applies later grants late to a collection dropped while loaded.
                self.engine.milvus.release_collection(name)
                self.engine.milvus.drop_collection(name)
            return True

    # -- name-first conveniences (the module functions call these) --------------------------

    def index(self, name: str, documents: Iterable[Mapping[str, Any]], **options: Any) -> int:
        return self.collection(name).index(documents, **options)

    def get_documents(
        self, name: str, ids: Iterable[str], output_fields: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        return self.collection(name).get(ids, output_fields)  # type: ignore[arg-type]

    def retrieve_similar(self, name: str, **query: Any) -> list[dict[str, Any]]:
        return self.collection(name).similar(**query)

    def delete_documents(self, name: str, ids: Iterable[str] | None = None, filter_expr: str | None = None) -> int:
        return self.collection(name).delete(ids, filter_expr)  # type: ignore[arg-type]

    def count(self, name: str, filter_expr: str | None = None) -> int:
        return self.collection(name).count(filter_expr)

    def describe(self, name: str) -> dict[str, Any]:
        return self.collection(name).describe()

    # -- internals ------------------------------------------------------------------------

    def _create(self, name: str, spec: CollectionSpec) -> None:
        milvus = self.engine.milvus
        schema = milvus.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=spec.dim)
        for field in spec.fields:
            schema.add_field(field.name, field.dtype, **({"max_length": field.max_length} if field.max_length else {}))
        with self.engine.errors(f"create collection {name!r}"):
            milvus.create_collection(name, schema=schema, properties={SPEC_PROPERTY: spec.dumps()},
                                     **self.engine.read_options(name))
        try:
            self._add_indexes(name, spec, vector=True, scalar=spec.scalar_indexes)
            self._load(name)
        except Exception:
            # Milvus creates the collection and its indexes in separate steps: never leave half of it.
            with contextlib.suppress(Exception):
                milvus.drop_collection(name)
            raise

    def _add_indexes(self, name: str, spec: CollectionSpec, vector: bool, scalar: Mapping[str, str | None]) -> None:
        milvus = self.engine.milvus
        params = milvus.prepare_index_params()
        if vector:
            index = spec.vector_index
            params.add_index(VECTOR_FIELD, index_type=index.index_type, metric_type=index.metric_type,
                             params=dict(index.params))
        for field_name, kind in scalar.items():
            field = spec.field(field_name)
            assert field is not None  # build_spec checked it
            params.add_index(field_name, index_type=kind or self.engine.default_scalar_index(field.dtype))
        with self.engine.errors(f"create the indexes of {name!r}"):
            milvus.create_index(name, params)

    def _load(self, name: str) -> None:
        """Load a collection into memory once: a reopened collection is released until loaded."""
        milvus = self.engine.milvus
        state = self.engine.read(f"load {name!r}", milvus.get_load_state, name).get("state")
        if getattr(state, "name", str(state)) != "Loaded":
            with self.engine.errors(f"load {name!r}"):
                milvus.load_collection(name)

    def _read_spec(self, name: str) -> CollectionSpec:
        milvus, read = self.engine.milvus, self.engine.read
        action = f"describe {name!r}"
        description = read(action, milvus.describe_collection, name)
        stored = (description.get("properties") or {}).get(SPEC_PROPERTY)
        if stored:
            return spec_loads(stored)
        indexes = {}
        for index_name in read(action, milvus.list_indexes, name):
            info = read(action, milvus.describe_index, name, index_name)
            indexes[info.get("field_name", index_name)] = info
        return spec_from_description(description, indexes)

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
            milvus = self.engine.milvus
            # A 2.3 server refuses to load a collection indexed while loaded: release it first.
            with self.engine.errors(f"release {name!r}"):
                milvus.release_collection(name)
            self._add_indexes(name, existing.spec, vector=False, scalar=added)
            self._load(name)
            spec = CollectionSpec(existing.spec.dim, existing.spec.fields, existing.spec.vector_index,
                                  {**existing.spec.scalar_indexes, **added}, existing.spec.embedder)
            with self.engine.errors(f"record the indexes of {name!r}"):
                # Milvus 2.3.5 persists the value an alter replaces, not the new one: say it twice.
                for _ in range(2 if self.engine.kind == "server" else 1):
                    milvus.alter_collection_properties(name, properties={SPEC_PROPERTY: spec.dumps()})
            existing.spec = spec
        if model is not None:
            existing._embedder = check_embedder(name, existing.spec, model)
        return existing
