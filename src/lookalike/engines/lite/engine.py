"""The embedded engine: Milvus Lite opened in this process, every call in process, safe under threads.

pymilvus opens Milvus Lite by starting it behind a gRPC server on a loopback port and sending
every call through the socket; that server's 10 threads ran flushes and deletes with no lock,
which lost acknowledged documents and brought deleted ones back (issue 12). Here the engine
object (``milvus_lite.db.MilvusLite``) is opened directly on the same directory pymilvus used
(``<data_dir>/milvus.db``, so existing data opens), with no server, no port and no gRPC. What the
engine's gRPC servicer did for pymilvus is done here: the schema from lookalike's spec, the spec
as a collection property, index parameters (HNSW's M and efConstruction reach the engine as
given, patched or not), load state, delete by filter, count, paging by primary key, JSON fields
handed out parsed.

Threads: one readers-writer lock per engine object, in lookalike and not in an engine patch, so it
holds with the patches off. Writes and structural changes (insert, upsert, delete, flush, create
and drop collection, create index, load, alter properties, opening a collection, which may
recover and flush) hold it alone; reads (search, get, count, query pages, list, describe) share
it, so a read never sees a flush half done (the engine swaps in a fresh memtable before the old
one reaches a segment, and the memory patch drops the frozen memtable's batches during the
flush). The engine's background compaction and index build run beside reads under the engine's
own ``_maintenance_lock``, which its reads take for their snapshot of segments and tombstones.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from ...config import Settings
from ...errors import EngineUnavailableError, IndexTimeoutError, InvalidInputError, LookalikeError, StorageError
from ...schema import (
    ID_FIELD,
    ID_MAX_LENGTH,
    SPEC_PROPERTY,
    VECTOR_FIELD,
    CollectionSpec,
    FieldSpec,
    shown,
    sparse_field,
    spec_from_description,
    spec_loads,
)
from ..base import Engine, Hits, IndexState
from ..errors import translate_lite_error
from . import patches
from .direct import engine_rows, json_decoder, write_columns, writes_columns
from .patches.build_window import handed_off

T = TypeVar("T")

# The engine logs its background failures with a traceback; with no logging configured, Python
# would print them on the user's stderr. They reach the application's handlers if it has any, and
# the failures a caller must know of reach it as lookalike errors.
logging.getLogger("milvus_lite").addHandler(logging.NullHandler())

# Milvus Lite keeps its data in a directory that pymilvus named like a file: keep the name, so
# data written through pymilvus opens here.
LITE_FILE = "milvus.db"
# Background tasks in a row that leave the same segments without a graph before a wait gives up.
MAX_STALLED_WAITS = 3
# Lite's only scalar index.
DEFAULT_SCALAR_INDEX = "INVERTED"
# A full-text field's sparse index, with BM25's usual constants set here (Milvus servers default
# to k1 = 1.2, b = 0.75; Milvus Lite to k1 = 1.5): one ranking on both engines.
BM25_INDEX = {"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "BM25",
              "params": {"bm25_k1": 1.2, "bm25_b": 0.75}}
# What Milvus Lite 3.2.2's analyser factory reads (milvus_lite/analyzer/factory.py); it ignores
# anything else silently, so anything else is refused here.
LITE_TOKENIZERS = ("standard", "jieba")


class SearchSlots:
    """At most ``size`` similarity requests of this process running at once: the embedded
    engine's searches share this process's cores and its GIL, and threads beyond the cores only
    trade them (bench/README.md, "Search slots": 25-47% more queries/s at 16 threads on 2 cores).
    Waiting requests get in first come, first served: a freed slot is handed to the longest
    waiter, never taken by one just arriving. A thread that holds a slot enters again without
    waiting (a request made inside a request)."""

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._free = size
        self._waiting: collections.deque[threading.Lock] = collections.deque()
        self._held = threading.local()

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        depth = getattr(self._held, "depth", 0)
        if depth == 0:
            self._acquire()
        self._held.depth = depth + 1
        try:
            yield
        finally:
            self._held.depth = depth
            if depth == 0:
                self._release()

    def _acquire(self) -> None:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            gate = threading.Lock()
            gate.acquire()
            self._waiting.append(gate)
        gate.acquire()  # until _release hands this thread the slot

    def _release(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()  # the slot passes on without being freed
            else:
                self._free += 1


def _cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# One per process: every embedded engine in it searches on the same cores.
SEARCH_SLOTS = SearchSlots(_cores())


class ReadWriteLock:
    """Many readers or one writer, writers first.

    A writer waits for the readers inside to leave; readers arriving while a writer waits queue
    behind it, so a steady stream of searches cannot starve a write. The writing thread may take
    the lock again (to write or read) while it holds it; a reader must not take it twice (a writer
    queued between the two would wait for it forever).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writers_waiting = 0
        self._writer: int | None = None  # the thread that holds it to write
        self._depth = 0

    def acquire_read(self) -> bool:
        """Take the lock to read. Returns False when the calling thread already holds it to
        write (nothing was taken: do not release)."""
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                return False
            while self._writer is not None or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
            return True

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared for the block."""
        taken = self.acquire_read()
        try:
            yield
        finally:
            if taken:
                self.release_read()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock alone for the block."""
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
            else:
                self._writers_waiting += 1
                try:
                    while self._writer is not None or self._readers:
                        self._cond.wait()
                finally:
                    self._writers_waiting -= 1
                self._writer, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._writer = None
                    self._cond.notify_all()


class _Shared:
    """One open engine per data directory in this process, shared by its clients."""

    def __init__(self, db: Any, data_dir: str) -> None:
        self.db = db
        self.data_dir = data_dir
        self.lock = ReadWriteLock()
        self.clients = 0
        # (database, collection) -> the engine's collection, opened and loaded
        self.collections: dict[tuple[str, str], Any] = {}


_shared: dict[str, _Shared] = {}  # absolute engine path -> its open engine
_shared_lock = threading.Lock()


def open_lite(settings: Settings, database: str) -> LiteEngine:
    """Open (or share) the embedded engine of ``settings.data_dir``, with ``database`` created.

    Raises:
        EngineUnavailableError: the directory cannot be created, or another process holds it.
        StorageError: the engine could not open what is there.
    """
    data_dir = settings.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineUnavailableError(f"cannot create the data directory {data_dir}: {exc.strerror}") from None
    path = os.path.abspath(data_dir / LITE_FILE)
    # Milvus Lite 3.2.2 spends ~85% of a search in Python loops over every row: patch them
    # (unless LOOKALIKE_LITE_PATCHES=0 or another version; the engine is correct either way).
    patches.apply()
    with _shared_lock:  # no close may shut the engine while this client opens it
        shared = _shared.get(path)
        if shared is None:
            from milvus_lite.db import MilvusLite

            try:
                db = MilvusLite(path)
            except Exception as exc:  # noqa: BLE001 - translated
                raise _translated(exc, str(data_dir), "open the embedded engine") from None
            shared = _shared[path] = _Shared(db, str(data_dir))
        shared.clients += 1
    engine = LiteEngine(shared, path, database)
    try:
        with shared.lock.write(), engine._errors(f"create the database {database!r}"):
            if not shared.db.has_database(database):
                shared.db.create_database(database)
    except BaseException:
        engine.close()
        raise
    return engine


class LiteEngine(Engine):
    """One organisation's database in the embedded Milvus Lite, in process.

    What a ``Client`` on it guarantees under threads (tests/test_concurrency.py):

    - read your writes: once ``index``/``delete`` returns in a thread, that thread's next
      ``get``, ``similar`` and ``count`` see it (and so do other threads' later reads);
    - an acknowledged write survives: it is in the engine's write-ahead log before the call
      returns, and is there after a close and reopen;
    - a delete stays deleted: no later read, flush, compaction or reopen brings it back;
    - a read sees a consistent state: never a write or a flush half done.

    Every client of one data directory in a process shares one engine object and its lock; the
    last one to close closes the engine, which frees the directory for another process.
    """

    kind = "lite"

    def __init__(self, shared: _Shared, path: str, database: str) -> None:
        self._shared = shared
        self._path = path
        self._db = shared.db
        self._lock = shared.lock
        self._database = database
        self._closed = False
        self.location = shared.data_dir

    # -- collections -----------------------------------------------------------------------

    def has_collection(self, name: str) -> bool:
        with self._lock.read(), self._errors("list collections"):
            return bool(self._db.has_collection(name, database_name=self._database))

    def list_collections(self) -> list[str]:
        with self._lock.read(), self._errors("list collections"):
            return sorted(self._db.list_collections(database_name=self._database))

    def create_collection(self, name: str, spec: CollectionSpec) -> None:
        for field in spec.fields:
            if field.enable_analyzer:
                check_analyzer(field)
        with self._lock.write(), self._errors(f"create collection {name!r}"):
            db = self._db
            col = db.create_collection(name, _lite_schema(spec), properties={SPEC_PROPERTY: spec.dumps()},
                                       database_name=self._database)
            try:
                index = spec.vector_index
                col.create_index(VECTOR_FIELD, {"index_type": index.index_type, "metric_type": index.metric_type,
                                                "params": dict(index.params)})
                for field_name, kind in spec.scalar_indexes.items():
                    col.create_index(field_name, {"index_type": kind or DEFAULT_SCALAR_INDEX})
                for field_name in spec.full_text_fields:
                    col.create_index(sparse_field(field_name), BM25_INDEX)
                col.load()
            except BaseException:
                # The engine creates a collection and its indexes in separate steps: never leave half.
                with contextlib.suppress(Exception):
                    db.drop_collection(name, database_name=self._database)
                raise
            self._shared.collections[(self._database, name)] = col

    def drop_collection(self, name: str) -> bool:
        with self._lock.write(), self._errors(f"drop {name!r}"):
            self._shared.collections.pop((self._database, name), None)
            if not self._db.has_collection(name, database_name=self._database):
                return False
            self._db.drop_collection(name, database_name=self._database)
            return True

    def read_spec(self, name: str) -> CollectionSpec:
        return self._reading(name, f"describe {name!r}", _spec_of)

    def add_scalar_indexes(self, name: str, spec: CollectionSpec, added: Mapping[str, str | None]) -> CollectionSpec:
        recorded = CollectionSpec(spec.dim, spec.fields, spec.vector_index, {**spec.scalar_indexes, **added},
                                  spec.embedder)

        def add(col: Any) -> CollectionSpec:
            for field_name, kind in added.items():
                col.create_index(field_name, {"index_type": kind or DEFAULT_SCALAR_INDEX})
            self._db.alter_collection_properties(name, properties={SPEC_PROPERTY: recorded.dumps()},
                                                 database_name=self._database)
            return recorded

        return self._writing(name, f"index {', '.join(added)} of {name!r}", add)

    def load(self, name: str) -> None:
        # Every collection this engine opens is loaded then (see _open): opening is loading.
        self._writing(name, f"load {name!r}", lambda col: None)

    # -- documents -------------------------------------------------------------------------

    def write(self, name: str, rows: list[dict[str, Any]], upsert: bool) -> None:
        def write(col: Any) -> None:
            # Vectors as one block (patches.writes' companion in direct.py) only where the engine
            # runs patched, as tested; otherwise the engine's own insert and upsert.
            if rows and patches.is_applied() and writes_columns(col, rows, upsert):
                write_columns(col, rows)
            else:
                (col.upsert if upsert else col.insert)(engine_rows(rows))

        self._writing(name, f"write to {name!r}", write)

    def flush(self, name: str) -> None:
        self._writing(name, f"flush {name!r}", lambda col: col.flush())

    def delete(self, name: str, expr: str) -> int:
        def delete(col: Any) -> int:
            # The engine deletes by primary key: find them and delete them in one step, so the
            # count returned is what was deleted.
            ids = [row[ID_FIELD] for row in col.query(expr, output_fields=[ID_FIELD])]
            if ids:
                col.delete(ids)
            return len(ids)

        return self._writing(name, f"delete from {name!r}", delete)

    def get(self, name: str, ids: Sequence[str], fields: list[str]) -> list[dict[str, Any]]:
        def get(col: Any) -> list[dict[str, Any]]:
            decode = json_decoder(col)
            return [decode(row) for row in col.get(list(ids), output_fields=fields)]

        return self._reading(name, f"read {name!r}", get)

    def columns(self, name: str, ids: Sequence[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        # The engine's own lookup (Collection.get), values taken a column at a time: `get` and a
        # search's hits turn each row into Python objects, a vector into a list of 768 floats.
        # Measured at 100k × 768 (CPU p50): a search of 100 hits with their vectors 4.0 ms, of their
        # ids then this 2.1 ms; for scalar fields a search hands them out cheaper (2.0 against 2.2 ms).
        # Ids in the memtable go through `get`.
        def gather(col: Any) -> dict[str, dict[str, Any]]:
            segments, tombstones = col._read_snapshot()
            located: dict[int, tuple[Any, list[str], list[int]]] = {}  # segment -> its ids and rows
            unsealed = []
            for pk in ids:
                if col._memtable.get(pk) is not None or col._memtable.is_locally_deleted(pk):
                    unsealed.append(pk)
                    continue
                best = None  # (seq, segment, row) of the newest version
                for seg in segments:
                    row = seg.find_row(pk)
                    if row is not None and (best is None or int(seg.seqs[row]) > best[0]):
                        best = (int(seg.seqs[row]), seg, row)
                if best is not None and not tombstones.is_deleted(pk, best[0]):
                    entry = located.setdefault(id(best[1]), (best[1], [], []))
                    entry[1].append(pk)
                    entry[2].append(best[2])
            decode = json_decoder(col)
            found: dict[str, dict[str, Any]] = {}
            for seg, pks, rows in located.values():
                values = _segment_values(seg, rows, fields)
                for k, pk in enumerate(pks):
                    found[pk] = decode({field: values[field][k] for field in fields})
            if unsealed:
                found.update((row[ID_FIELD], decode(row))
                             for row in col.get(unsealed, output_fields=[ID_FIELD, *fields]))
            return found

        return self._reading(name, f"read {name!r}", gather)

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
        queries = [np.asarray(q, dtype=np.float32) for q in data]  # rows: the engine stacks them

        def search(col: Any) -> list[list[dict[str, Any]]]:
            hits = col.search(
                queries,
                top_k=limit,
                metric_type=search_params.get("metric_type"),
                expr=filter or None,
                output_fields=output_fields,
                anns_field=anns_field,
                search_params=search_params.get("params") or {},
            )
            decode = json_decoder(col)
            return [[{**hit, "entity": decode(hit["entity"])} for hit in per_query] for per_query in hits]

        return self._reading(name, f"search {name!r}", search)

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
        # The engine's search turns each hit into dicts (its row, the projection, the distance
        # convention): ~5-10 µs a hit at 100k × 768, most of a search of 100 candidates. The
        # patched executor (patches/search.py) says where the hits are instead, and their
        # columns are read a segment at a time; with the patches off, the engine's own search.
        queries = np.stack([np.asarray(q, dtype=np.float32) for q in data])
        fields = [f for f in output_fields if f != ID_FIELD]

        def search(col: Any) -> list[Hits] | None:
            from milvus_lite.search import executor_indexed

            from .patches.search import HitPositions

            col._require_loaded()
            metric = col.resolve_search_metric(anns_field, search_params.get("metric_type"))
            compiled = col._compile_filter(filter) if filter else None
            segments, tombstones = col._read_snapshot()
            found = executor_indexed.execute_search_with_index(
                query_vectors=queries, segments=segments, memtable=col._memtable, delta_index=tombstones,
                top_k=limit, metric_type=metric, pk_field=col._pk_name, vector_field=anns_field,
                compiled_filter=compiled, indexed_filter_plan=col._indexed_filter_plan(compiled),
                search_params=search_params.get("params") or {}, positions=True, skip_pks=skip_ids,
            )
            if not isinstance(found, HitPositions):  # no hits, or the engine's own loop ran
                return None
            return [_hits_at(col, found, part, metric, fields) for part in found.per_query]

        if patches.is_applied():
            hits = self._reading(name, f"search {name!r}", search)
            if hits is not None:
                return hits
        return super().search_hits(name, data=data, filter=filter, limit=limit, output_fields=output_fields,
                                   search_params=search_params, anns_field=anns_field)

    def search_slot(self) -> contextlib.AbstractContextManager[None]:
        return SEARCH_SLOTS()

    @property
    def masks_ids(self) -> bool:
        # the patched executor masks them (patches/search.py); the engine's own search cannot
        return patches.is_applied()

    def check_full_text(self, what: str) -> None:
        # Milvus Lite 3.2.2 has BM25 functions and sparse indexes (see create_collection).
        return None

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
        def search(col: Any) -> list[list[dict[str, Any]]]:
            # The engine analyses each text with the field's analyser and scores BM25 over the
            # field's sparse terms (its statistics per segment: see README, hybrid search).
            hits = col.search(list(texts), top_k=limit, metric_type="BM25", expr=filter or None,
                              output_fields=output_fields, anns_field=sparse_field(field))
            decode = json_decoder(col)
            # The engine hands BM25 scores out negated (smaller is better inside it); its gRPC
            # adapter flips them back for pymilvus (adapter/grpc/function_chain.py): so here.
            return [[{**hit, "distance": -float(hit["distance"]), "entity": decode(hit["entity"])}
                     for hit in per_query] for per_query in hits]

        return self._reading(name, f"search the keywords of {name!r}", search)

    def count(self, name: str, expr: str = "") -> int:
        def count(col: Any) -> int:
            if not expr:
                return int(col.num_entities)
            return len(col.query(expr, output_fields=[ID_FIELD]))

        return self._reading(name, f"count {name!r}", count)

    def iterate(
        self, name: str, batch_size: int, fields: list[str], expr: str = ""
    ) -> Iterator[list[dict[str, Any]]]:
        # Pages in primary-key order after the last key seen, as pymilvus's query iterator asks
        # them of the engine; each page is read under the lock, and yielded outside it.
        last: str | None = None
        while True:
            after = f"{ID_FIELD} > {json.dumps(last, ensure_ascii=False)}" if last is not None else ""
            query = f"({expr}) and {after}" if expr and after else (expr or after or None)

            def page(col: Any, query: str | None = query) -> list[dict[str, Any]]:
                decode = json_decoder(col)
                rows = col.query(query, output_fields=fields, limit=batch_size, order_by_pk=True)
                return [decode(row) for row in rows]

            batch = self._reading(name, f"read {name!r}", page)
            if not batch:
                return
            yield batch
            last = batch[-1][ID_FIELD]

    def index_state(self, name: str) -> IndexState:
        return self._reading(name, f"read the index state of {name!r}", _index_state)

    def wait_for_index(self, name: str, timeout: float | None = None) -> IndexState:
        # The engine's signal: its one background worker builds the graphs of every segment it
        # finds unindexed, task after task; a task queued behind the pending builds completes
        # once they are done. It is waited on outside the lock, so writers go on meanwhile.
        action = f"wait for the index of {name!r}"
        deadline = None if timeout is None else time.monotonic() + timeout
        col = self._reading(name, action, lambda col: col)
        # Rows written before this call have smaller sequence numbers, in whichever segment a
        # compaction moves them to; later writers' segments are not waited for.
        before = col._next_seq

        def waited_for() -> set[int]:
            return {id(seg) for seg in _pending_segments(col) if int(seg.seqs.min()) < before}

        with self._errors(action):
            pending, stalls = waited_for(), 0
            while pending:
                if stalls == MAX_STALLED_WAITS:
                    raise StorageError(
                        f"the engine did not build the vector index of {name!r} in {self.location} (its log "
                        f"says why): searches stay correct, only slower; reopen the collection to retry"
                    )
                if stalls:  # the last task changed nothing (it failed, logged by the engine): another
                    col._schedule_bg_maintenance()
                try:
                    col._wait_for_bg(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    state = self.index_state(name)
                    raise IndexTimeoutError(
                        f"the index of {name!r} was not built within {timeout:g} s: {state.indexed_rows} rows "
                        f"indexed, {state.pending_rows} pending (the build goes on; searches are exact over "
                        f"the pending rows meanwhile): wait again, or with a longer timeout",
                        state.indexed_rows, state.pending_rows,
                    ) from None
                now = waited_for()
                stalls = stalls + 1 if now == pending else 0
                pending = now
        return self.index_state(name)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _shared_lock:
            shared = self._shared
            shared.clients -= 1
            if shared.clients:
                return
            del _shared[self._path]
            # The last client: close the engine (it flushes and frees the directory's lock).
            with shared.lock.write():
                shared.collections.clear()
                shared.db.close()

    # -- internals -------------------------------------------------------------------------

    def _reading(self, name: str, action: str, read: Callable[[Any], T]) -> T:
        """``read(collection)`` under the shared lock (the collection opened first if needed)."""
        key = (self._database, name)
        while True:
            lock = self._lock
            taken = lock.acquire_read()
            try:
                col = self._shared.collections.get(key)
                if col is not None:
                    try:
                        return read(col)
                    except LookalikeError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - translated
                        raise _translated(exc, self.location, action) from _cause(exc)
            finally:
                if taken:
                    lock.release_read()
            # Not open yet: open it alone (it may recover and flush), then read shared.
            self._writing(name, action, lambda col: None)

    def _writing(self, name: str, action: str, write: Callable[[Any], T]) -> T:
        """``write(collection)`` holding the lock alone (the collection opened first if needed)."""
        with self._lock.write(), self._errors(action):
            key = (self._database, name)
            col = self._shared.collections.get(key)
            if col is None:
                col = self._db.get_collection(name, database_name=self._database)
                # A collection reopened in a new process starts released: load it once, here.
                if col.load_state != "loaded":
                    col.load()
                self._shared.collections[key] = col
            return write(col)

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Run engine calls, raising lookalike errors (never the engine's)."""
        try:
            yield
        except LookalikeError:
            raise
        except Exception as exc:  # noqa: BLE001 - every engine failure is translated here
            raise _translated(exc, self.location, action) from _cause(exc)


def _translated(exc: BaseException, data_dir: str, action: str) -> LookalikeError:
    return translate_lite_error(exc, data_dir=data_dir, action=action)


def _cause(exc: BaseException) -> BaseException | None:
    """Keep the engine's exception as the cause of a StorageError (for a bug report); the
    caller's mistakes need no engine traceback."""
    from milvus_lite import exceptions as lite
    from milvus_lite.search.filter.exceptions import FilterError

    return None if isinstance(exc, (lite.MilvusLiteError, FilterError)) else exc


def check_analyzer(field: FieldSpec) -> None:
    """Refuse analyser parameters Milvus Lite would refuse, or would silently ignore.

    Raises:
        InvalidInputError: naming the field and its ``analyzer_params``.
    """
    from milvus_lite.analyzer.factory import create_analyzer

    params = field.analyzer_params
    where = f"field {field.name!r}: analyzer_params = {shown(params)}"
    if params is None:
        return
    unknown = sorted(set(params) - {"tokenizer", "type", "filter"})
    if unknown:
        raise InvalidInputError(
            f"{where}: the embedded engine takes only 'tokenizer' ({' or '.join(LITE_TOKENIZERS)}) and "
            f"'filter' (\"lowercase\", {{'type': 'stop', 'stop_words': [...]}}), not {', '.join(map(repr, unknown))}"
        )
    filters = params.get("filter") or []
    if not isinstance(filters, list) or any(
        f != "lowercase" and not (isinstance(f, Mapping) and f.get("type") == "stop"
                                  and isinstance(f.get("stop_words", []), list) and set(f) <= {"type", "stop_words"})
        for f in filters
    ):
        raise InvalidInputError(
            f"{where}: the embedded engine's only filters are \"lowercase\" (always on) and "
            "{'type': 'stop', 'stop_words': [...]}"
        )
    try:
        create_analyzer(dict(params))
    except ImportError as exc:  # jieba is an optional package
        raise InvalidInputError(f"{where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the engine's refusal, in its words
        raise InvalidInputError(f"{where} refused by the embedded engine: {exc}") from None


def _lite_schema(spec: CollectionSpec) -> Any:
    """The engine's schema for ``spec``: string ``id``, vector ``vec``, then the spec's fields,
    and for each full-text field its BM25 function and the sparse field it fills."""
    from milvus_lite import CollectionSchema, DataType, FieldSchema, Function, FunctionType

    fields = [
        FieldSchema(name=ID_FIELD, dtype=DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH),
        FieldSchema(name=VECTOR_FIELD, dtype=DataType.FLOAT_VECTOR, dim=spec.dim),
    ]
    functions = []
    for field in spec.fields:
        # lookalike's field types are pymilvus's, and the engine names its own alike.
        fields.append(FieldSchema(name=field.name, dtype=DataType[field.dtype.name], max_length=field.max_length,
                                  enable_analyzer=field.enable_analyzer,
                                  analyzer_params=dict(field.analyzer_params) if field.analyzer_params else None))
    for name in spec.full_text_fields:
        fields.append(FieldSchema(name=sparse_field(name), dtype=DataType.SPARSE_FLOAT_VECTOR,
                                  is_function_output=True))
        functions.append(Function(name=sparse_field(name), function_type=FunctionType.BM25,
                                  input_field_names=[name], output_field_names=[sparse_field(name)]))
    return CollectionSchema(fields=fields, enable_dynamic_field=False, functions=functions)


def _segment_values(seg: Any, rows: Any, fields: list[str]) -> dict[str, Any]:
    """``fields`` of a sealed segment's ``rows``: the vector as rows of the segment's array, any
    other field one pyarrow take (values as the engine's ``get`` gives them, JSON still text)."""
    return {field: seg.vector_data(field)[0][rows] if field == VECTOR_FIELD
            else seg.table.column(field).take(rows).to_pylist() for field in fields}


def _hits_at(col: Any, found: Any, part: tuple[np.ndarray, np.ndarray, np.ndarray], metric: str,
             fields: list[str]) -> Hits:
    """One query's hits from where the patched executor placed them (``HitPositions``): ids and
    ``fields`` read a segment at a time, distances in Milvus's convention as the engine's search
    gives them (its ``_internal_distance_to_milvus_distance``, in float64)."""
    internal, sources, rows = part
    distances = internal.astype(np.float64)
    if metric == "COSINE":
        distances = 1.0 - distances
    elif metric == "IP":
        distances = -distances
    elif metric == "L2":
        distances = distances * distances
    n = len(distances)
    ids = np.empty(n, dtype=object)
    columns: dict[str, Any] = {field: [None] * n for field in fields}
    schema = {f.name: f for f in col.schema.fields}
    if VECTOR_FIELD in columns:
        columns[VECTOR_FIELD] = np.zeros((n, schema[VECTOR_FIELD].dim), dtype=np.float32)
    for source in np.unique(sources).tolist():
        at = np.flatnonzero(sources == source)
        local = rows[at]
        if source < len(found.segments):
            seg = found.segments[source]
            ids[at] = [seg.pks[r] for r in local.tolist()]
            values = _segment_values(seg, local, fields)
        else:  # the memtable's rows, few: the engine's own row
            records = [col._memtable.materialize_row(*found.memtable_rows[r]) for r in local.tolist()]
            ids[at] = [record[col._pk_name] for record in records]
            values = {field: [record.get(field) for record in records] for field in fields}
        for field in fields:
            column = columns[field]
            if isinstance(column, np.ndarray):
                column[at] = np.asarray(values[field], dtype=np.float32)
            else:
                for k, i in enumerate(at.tolist()):
                    column[i] = values[field][k]
    for field in fields:  # the engine keeps JSON as text; its search hands it out parsed
        if schema[field].dtype.name == "JSON":
            columns[field] = [json.loads(v) if isinstance(v, str) else v for v in columns[field]]
    return Hits(ids, distances, columns)


def _spec_of(col: Any) -> CollectionSpec:
    """The spec recorded on an engine collection, or one rebuilt from its schema and indexes."""
    from pymilvus import DataType as MilvusType

    stored = col.schema.properties.get(SPEC_PROPERTY)
    if stored:
        return spec_loads(stored)
    fields = []
    for field in col.schema.fields:
        params = {k: v for k, v in (("dim", field.dim), ("max_length", field.max_length)) if v is not None}
        dtype = getattr(MilvusType, field.dtype.name, None)
        fields.append({"name": field.name, "type": dtype, "params": params})
    indexes = {}
    for field_name in col.list_indexes():
        info = col.get_index_info(field_name) or {}
        indexes[field_name] = {"index_type": info.get("index_type"), "metric_type": info.get("metric_type"),
                               "params": info.get("build_params") or {}}
    return spec_from_description({"fields": fields}, indexes)


def _vector_index_specs(col: Any) -> list[Any]:
    """The engine's index specs of dense vector fields (the ones built per segment in the background)."""
    return [spec for spec in col._index_specs.values() if spec.field_name == VECTOR_FIELD]


def _pending_segments(col: Any) -> list[Any]:
    """The engine's flushed segments still without their vector index, but for those a compaction
    wrote whose rows the replaced segments' graphs serve meanwhile (``patches.build_window``)."""
    if not _vector_index_specs(col) or col.load_state != "loaded":
        return []
    return [seg for seg in col._segments_snapshot()
            if seg.num_rows and VECTOR_FIELD not in seg.indexes and not handed_off(seg)]


def _index_state(col: Any) -> IndexState:
    segments = col._segments_snapshot()
    pending = sum(seg.num_rows for seg in _pending_segments(col))
    return IndexState(indexed_rows=sum(seg.num_rows for seg in segments) - pending, pending_rows=pending)
