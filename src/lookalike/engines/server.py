"""A Milvus server (2.3.5 and later) through pymilvus's ``MilvusClient``.

What is particular to a server, and lives only here:

- reads are "Session" consistent (a client reads its own inserts and upserts at once without the
  ~0.2 s a "Strong" read waits for a time tick), and "Strong" for a moment after a delete, which
  does not advance the session's timestamp on 2.3;
- scalar indexes are STL_SORT (numbers) and Trie (strings): a 2.3 server rejects INVERTED;
- a collection is released before an index is added (2.3 refuses to load one indexed while
  loaded) and before it is dropped (later grants apply late to a collection dropped while loaded);
- Milvus 2.3.5 persists the value an ``alter_collection_properties`` replaces, not the new one:
  the spec is written twice;
- idempotent reads are retried with backoff while the server is unreachable, so a server
  restart does not need a client restart;
- full-text search (a BM25 function into a sparse field) needs Milvus 2.5: an older server is
  refused with its version named, a newer one gets the calls of pymilvus's 2.5+ API.

Thread safety is the server's: each call is one request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from pymilvus import DataType, Function, FunctionType, MilvusClient

from ..config import Settings
from ..documents import id_filter
from ..errors import EngineUnavailableError, IndexTimeoutError, InvalidInputError, LookalikeError
from ..schema import (
    BUILD_DEFAULTS,
    ID_FIELD,
    ID_MAX_LENGTH,
    SPEC_PROPERTY,
    VECTOR_FIELD,
    CollectionSpec,
    sparse_field,
    spec_from_description,
    spec_loads,
)
from .base import Engine, IndexState
from .errors import redact_uri, translate_engine_error

log = logging.getLogger(__name__)
T = TypeVar("T")

# Deleted rows stay visible to Session reads on a 2.3 server for 0.2-0.5 s (measured).
STRONG_AFTER_DELETE_SECONDS = 2.0

# How often a wait for the index asks the server for its progress (pymilvus's own wait: 0.5 s).
INDEX_POLL_SECONDS = 0.5

# The first Milvus with full-text search (BM25 functions, sparse BM25 indexes).
FULL_TEXT_VERSION = (2, 5)
# BM25's constants, as the embedded engine is given them (Milvus's defaults).
BM25_PARAMS = {"bm25_k1": 1.2, "bm25_b": 0.75}

_NUMERIC = {DataType.INT8, DataType.INT16, DataType.INT32, DataType.INT64, DataType.FLOAT, DataType.DOUBLE}


class _QuietWhileTranslating(logging.Filter):
    """Drops pymilvus's own error log (a traceback per failed call) for failures that lookalike
    turns into an exception of its own: the caller sees one clear error, not both."""

    depth = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.depth, "value", 0)


_quiet = _QuietWhileTranslating()
for _name in ("pymilvus.decorators", "pymilvus.client.iterator.query_iterator"):
    logging.getLogger(_name).addFilter(_quiet)


class ServerEngine(Engine):
    """One organisation's database on a Milvus server."""

    kind = "server"

    def __init__(self, settings: Settings, database: str) -> None:
        self.settings = settings
        self.location = settings.uri
        try:
            self.milvus = MilvusClient(
                uri=settings.uri,
                user=settings.codops,
                password=settings.password.reveal(),
                db_name=database,
                timeout=30,
            )
        except Exception as exc:  # noqa: BLE001 - every pymilvus/grpc failure is translated
            raise self._translate(exc, "connect") from None
        # collection -> until when its reads must be Strong (see _read_options)
        self._strong_until: dict[str, float] = {}
        self._version: str | None = None

    # -- collections -----------------------------------------------------------------------

    def has_collection(self, name: str) -> bool:
        return bool(self._read("list collections", self.milvus.has_collection, name))

    def list_collections(self) -> list[str]:
        return sorted(self._read("list collections", self.milvus.list_collections))

    def create_collection(self, name: str, spec: CollectionSpec) -> None:
        milvus = self.milvus
        if spec.full_text_fields:
            self.check_full_text(f"full-text field {spec.full_text_fields[0]!r} (enable_analyzer)")
        schema = milvus.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=spec.dim)
        for field in spec.fields:
            options: dict[str, Any] = {"max_length": field.max_length} if field.max_length else {}
            if field.enable_analyzer:
                options["enable_analyzer"] = True
                if field.analyzer_params is not None:
                    options["analyzer_params"] = dict(field.analyzer_params)
            schema.add_field(field.name, field.dtype, **options)
        for field_name in spec.full_text_fields:
            # Milvus 2.5+: the server fills the sparse field from the text (pymilvus's BM25 recipe).
            schema.add_field(sparse_field(field_name), DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(Function(name=sparse_field(field_name), function_type=FunctionType.BM25,
                                         input_field_names=[field_name],
                                         output_field_names=[sparse_field(field_name)]))
        with self._errors(f"create collection {name!r}"):
            milvus.create_collection(name, schema=schema, properties={SPEC_PROPERTY: spec.dumps()},
                                     **self._read_options(name))
        try:
            self._add_indexes(name, spec, vector=True, scalar=spec.scalar_indexes)
            self.load(name)
        except Exception:
            # Milvus creates the collection and its indexes in separate steps: never leave half of it.
            with contextlib.suppress(Exception):
                milvus.drop_collection(name)
            raise

    def drop_collection(self, name: str) -> bool:
        if not self.has_collection(name):
            return False
        with self._errors(f"drop {name!r}"):
            # A 2.3 server applies later grants late to a collection dropped while loaded.
            self.milvus.release_collection(name)
            self.milvus.drop_collection(name)
        self._strong_until.pop(name, None)
        return True

    def read_spec(self, name: str) -> CollectionSpec:
        action = f"describe {name!r}"
        description = self._read(action, self.milvus.describe_collection, name)
        stored = (description.get("properties") or {}).get(SPEC_PROPERTY)
        if stored:
            return spec_loads(stored)
        indexes = {}
        for index_name in self._read(action, self.milvus.list_indexes, name):
            info = self._read(action, self.milvus.describe_index, name, index_name)
            indexes[info.get("field_name", index_name)] = info
        return spec_from_description(description, indexes)

    def add_scalar_indexes(self, name: str, spec: CollectionSpec, added: Mapping[str, str | None]) -> CollectionSpec:
        # A 2.3 server refuses to load a collection indexed while loaded: release it first.
        with self._errors(f"release {name!r}"):
            self.milvus.release_collection(name)
        self._add_indexes(name, spec, vector=False, scalar=added)
        self.load(name)
        recorded = CollectionSpec(spec.dim, spec.fields, spec.vector_index, {**spec.scalar_indexes, **added},
                                  spec.embedder)
        with self._errors(f"record the indexes of {name!r}"):
            # Milvus 2.3.5 persists the value an alter replaces, not the new one: say it twice.
            for _ in range(2):
                self.milvus.alter_collection_properties(name, properties={SPEC_PROPERTY: recorded.dumps()})
        return recorded

    def load(self, name: str) -> None:
        # Load once: a reopened collection is released until loaded, and loading again is slow.
        state = self._read(f"load {name!r}", self.milvus.get_load_state, name).get("state")
        if getattr(state, "name", str(state)) != "Loaded":
            with self._errors(f"load {name!r}"):
                self.milvus.load_collection(name)

    # -- documents -------------------------------------------------------------------------

    def write(self, name: str, rows: list[dict[str, Any]], upsert: bool) -> None:
        with self._errors(f"write to {name!r}"):
            (self.milvus.upsert if upsert else self.milvus.insert)(name, data=rows)

    def flush(self, name: str) -> None:
        with self._errors(f"flush {name!r}"):
            self.milvus.flush(name)

    def delete(self, name: str, expr: str) -> int:
        # The server's own delete count is not reliable on 2.3 for filters: count first.
        matching = self.count(name, expr)
        if matching:
            with self._errors(f"delete from {name!r}"):
                self.milvus.delete(name, filter=expr)
            self._strong_until[name] = time.monotonic() + STRONG_AFTER_DELETE_SECONDS
        return matching

    def get(self, name: str, ids: Sequence[str], fields: list[str]) -> list[dict[str, Any]]:
        return self._read(f"read {name!r}", self.milvus.query, name, filter=id_filter(list(ids)),
                          output_fields=fields, **self._read_options(name))

    def search(
        self,
        name: str,
        *,
        data: Sequence[Any],
        filter: str,  # noqa: A002 - MilvusClient's keyword
        limit: int,
        output_fields: list[str],
        search_params: Mapping[str, Any],
        anns_field: str,
    ) -> list[list[dict[str, Any]]]:
        return self._read(f"search {name!r}", self.milvus.search, name, data=data, filter=filter, limit=limit,
                          output_fields=output_fields, search_params=dict(search_params), anns_field=anns_field,
                          **self._read_options(name))

    def keyword_search(
        self,
        name: str,
        *,
        texts: Sequence[str],
        field: str,
        filter: str,  # noqa: A002 - MilvusClient's keyword
        limit: int,
        output_fields: list[str],
    ) -> list[list[dict[str, Any]]]:
        self.check_full_text("keywords")
        return self._read(f"search the keywords of {name!r}", self.milvus.search, name, data=list(texts),
                          filter=filter, limit=limit, output_fields=output_fields,
                          search_params={"metric_type": "BM25"}, anns_field=sparse_field(field),
                          **self._read_options(name))

    def count(self, name: str, expr: str = "") -> int:
        rows = self._read(f"count {name!r}", self.milvus.query, name, filter=expr, output_fields=["count(*)"],
                          **self._read_options(name))
        return int(rows[0]["count(*)"])

    def iterate(
        self, name: str, batch_size: int, fields: list[str], expr: str = ""
    ) -> Iterator[list[dict[str, Any]]]:
        # Pages of the smallest keys after the last one seen, as pymilvus's query_iterator asks
        # for them, but with that key written as an escaped literal: the iterator pastes it in
        # raw, so an id with a quote breaks an export and one like `b" or id != "` never ends.
        wanted = fields if ID_FIELD in fields else [ID_FIELD, *fields]
        last: str | None = None
        while True:
            after = f"{ID_FIELD} > {json.dumps(last, ensure_ascii=False)}" if last is not None else f'{ID_FIELD} >= ""'
            if expr:
                after = f"({expr}) and {after}"
            batch = self._read(f"read {name!r}", self.milvus.query, name, filter=after, limit=batch_size,
                               output_fields=wanted, **self._read_options(name))
            if not batch:
                return
            # Milvus compares strings byte by byte, which is the code point order Python sorts in.
            batch.sort(key=lambda row: row[ID_FIELD])
            yield batch
            last = batch[-1][ID_FIELD]

    def index_state(self, name: str) -> IndexState:
        action = f"read the index state of {name!r}"
        indexed = pending = 0
        for index_name in self._read(action, self.milvus.list_indexes, name, field_name=VECTOR_FIELD):
            info = self._read(action, self.milvus.describe_index, name, index_name) or {}
            total = int(info.get("total_rows") or 0)
            indexed += int(info.get("indexed_rows") or 0)
            pending += max(int(info.get("pending_index_rows") or 0), total - int(info.get("indexed_rows") or 0))
        return IndexState(indexed_rows=indexed, pending_rows=pending)

    def wait_for_index(self, name: str, timeout: float | None = None) -> IndexState:
        # A server sends no signal when its index nodes finish: ask for the progress as pymilvus's
        # own wait (wait_for_creating_index) does, twice a second.
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.index_state(name)
            if state.built:
                return state
            if deadline is not None and time.monotonic() >= deadline:
                raise IndexTimeoutError(
                    f"the index of {name!r} was not built within {timeout:g} s: {state.indexed_rows} rows "
                    f"indexed, {state.pending_rows} pending on {self.location} (the build goes on; searches "
                    f"are correct meanwhile): wait again, or with a longer timeout",
                    state.indexed_rows, state.pending_rows,
                )
            left = INDEX_POLL_SECONDS if deadline is None else deadline - time.monotonic()
            time.sleep(min(INDEX_POLL_SECONDS, max(0.0, left)))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.milvus.close()

    # -- internals -------------------------------------------------------------------------

    def _read_options(self, name: str) -> dict[str, str]:
        """Consistency for every search and query of ``name``: Session, or Strong for a moment
        after a delete (see the module docstring)."""
        strong = self._strong_until.get(name, 0.0) > time.monotonic()
        return {"consistency_level": "Strong" if strong else "Session"}

    def check_full_text(self, what: str) -> None:
        """Refuse ``what`` on a server older than Milvus 2.5, naming its version."""
        if self._version is None:
            self._version = str(self._read("ask the server's version", self.milvus.get_server_version))
        found = re.search(r"(\d+)\.(\d+)", self._version)
        if found and (int(found.group(1)), int(found.group(2))) < FULL_TEXT_VERSION:
            raise InvalidInputError(
                f"{what}: full-text search needs Milvus {'.'.join(map(str, FULL_TEXT_VERSION))} or later, and "
                f"the server at {redact_uri(self.location)} runs {self._version} (use the embedded engine, "
                "or a Milvus 2.5+ server)"
            )

    def _add_indexes(self, name: str, spec: CollectionSpec, vector: bool, scalar: Mapping[str, str | None]) -> None:
        params = self.milvus.prepare_index_params()
        if vector:
            index = spec.vector_index
            params.add_index(VECTOR_FIELD, index_type=index.index_type, metric_type=index.metric_type,
                             params={**BUILD_DEFAULTS[index.index_type], **index.params})
            for field_name in spec.full_text_fields:
                params.add_index(sparse_field(field_name), index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                                 params=dict(BM25_PARAMS))
        for field_name, kind in scalar.items():
            field = spec.field(field_name)
            assert field is not None  # build_spec checked it
            params.add_index(field_name, index_type=kind or ("STL_SORT" if field.dtype in _NUMERIC else "Trie"))
        with self._errors(f"create the indexes of {name!r}"):
            self.milvus.create_index(name, params)

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Run pymilvus calls, raising lookalike errors (never a pymilvus or grpc one)."""
        _quiet.depth.value = getattr(_quiet.depth, "value", 0) + 1
        try:
            yield
        except LookalikeError:
            raise
        except Exception as exc:  # noqa: BLE001 - every engine failure is translated here
            raise self._translate(exc, action) from None
        finally:
            _quiet.depth.value -= 1

    def _translate(self, exc: BaseException, action: str) -> LookalikeError:
        """A lookalike error for ``exc``, with no secret in its text."""
        error = translate_engine_error(exc, uri=self.location, codops=self.settings.codops, action=action)
        secret = self.settings.password.reveal()
        if secret and secret in str(error):
            error.args = (str(error).replace(secret, "********"),)  # a fresh error: its kind and fields stay
        return error

    def _read(self, action: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run an idempotent read; while the server is unavailable, retry with backoff for at
        most ``settings.retry_seconds``."""
        deadline = time.monotonic() + self.settings.retry_seconds
        delay = 0.2
        while True:
            try:
                with self._errors(action):
                    return call(*args, **kwargs)
            except EngineUnavailableError:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("Milvus at %s is unavailable (%s); retrying in %.1f s", self.location, action, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                if "consistency_level" in kwargs:
                    # A restarted 2.3 server's first Session read can miss unflushed rows.
                    kwargs["consistency_level"] = "Strong"
