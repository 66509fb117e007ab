"""The embedded engine's hot calls, in process: search, read by id and write without the gRPC round trip.

pymilvus opens Milvus Lite 3.x by starting the engine in this process behind a gRPC server on
loopback, and sends every call through it: the request is packed into protobuf, crosses the
socket, is decoded by the engine's servicer into the same ``Collection.search`` / ``get`` calls
this module makes, and the result travels back the same way. At 10k rows that round trip is
~1.2 ms of a 1.6 ms search and ~0.9 ms of a 1.0 ms read of five vectors (bench/README.md); a
write is packed, sent and unpacked row by row into Python floats.

``LiteDirect`` calls the engine object that the gRPC server serves, so both paths see the same
data, locks and indexes; search, read by primary key, insert and upsert go this way, the rest
(collections, indexes, flush, count, delete) through pymilvus. Failures are turned
into the ``MilvusException`` the servicer would have sent, so lookalike's error translation is
the same on both paths. It is used only with the Milvus Lite versions it was tested against.

Writes go in as columns (``write_columns``): the engine's ``insert`` checks every float of every
vector in Python and rebuilds each vector from a list of Python floats (two thirds of an ingest,
and ~0.3 GB of Python objects at 100k rows of 768 floats); here the vectors go into the engine's
write-ahead batch as one float32 block, while every other field still passes the engine's own
validation and batch builder. Writes to one engine are serialised: the engine allocates sequence
numbers without a lock of its own.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from pymilvus.exceptions import MilvusException

from .patches.search import TESTED_VERSIONS

T = TypeVar("T")


class LiteDirect:
    """Search, get and write on one database of an open Milvus Lite engine, as pymilvus does them."""

    def __init__(self, db: Any, database: str) -> None:
        self._db = db
        self._database = database
        self._write_lock = _write_lock_of(db)

    def search(
        self,
        collection_name: str,
        data: Sequence[Any],
        filter: str,  # noqa: A002 - MilvusClient's keyword
        limit: int,
        output_fields: list[str],
        search_params: dict[str, Any],
        anns_field: str,
    ) -> list[list[dict[str, Any]]]:
        """Like ``MilvusClient.search``: per query, hits ``{'id', 'distance', 'entity'}`` best first."""
        collection = self._collection(collection_name)
        hits = self._call(
            lambda: collection.search(
                [np.asarray(q, dtype=np.float32).tolist() for q in data],
                top_k=limit,
                metric_type=search_params.get("metric_type"),
                expr=filter or None,
                output_fields=output_fields,
                anns_field=anns_field,
                search_params=search_params.get("params") or {},
            )
        )
        decode = _json_decoder(collection)
        return [[{**hit, "entity": decode(hit["entity"])} for hit in per_query] for per_query in hits]

    def get(self, collection_name: str, ids: list[str], output_fields: list[str]) -> list[dict[str, Any]]:
        """Rows by primary key, as ``MilvusClient.get`` returns them; missing ids left out."""
        collection = self._collection(collection_name)
        decode = _json_decoder(collection)
        return [decode(row) for row in self._call(lambda: collection.get(ids, output_fields=output_fields))]

    def upsert(self, collection_name: str, data: list[dict[str, Any]]) -> None:
        """Like ``MilvusClient.upsert``."""
        self._write(collection_name, data, upsert=True)

    def insert(self, collection_name: str, data: list[dict[str, Any]]) -> None:
        """Like ``MilvusClient.insert``."""
        self._write(collection_name, data, upsert=False)

    def _write(self, collection_name: str, data: list[dict[str, Any]], upsert: bool) -> None:
        collection = self._collection(collection_name)
        with self._write_lock:
            if data and writes_columns(collection, data, upsert):
                self._call(lambda: write_columns(collection, data))
            else:
                rows = _engine_rows(data)
                self._call(lambda: (collection.upsert if upsert else collection.insert)(rows))

    def _collection(self, name: str) -> Any:
        return self._call(lambda: self._db.get_collection(name, database_name=self._database))

    @staticmethod
    def _call(call: Callable[[], T]) -> T:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - re-raised as the gRPC path would raise it
            from milvus_lite.adapter.grpc.errors import to_status_kwargs

            status = to_status_kwargs(exc)
            raise MilvusException(status["code"], status["reason"], status["error_code"]) from exc


# One write lock per engine object, shared by the clients of one data directory in this process.
_write_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_write_locks_lock = threading.Lock()


def _write_lock_of(db: Any) -> threading.Lock:
    with _write_locks_lock:
        return _write_locks.setdefault(db, threading.Lock())


def writes_columns(collection: Any, records: list[dict[str, Any]], upsert: bool) -> bool:
    """Whether ``write_columns`` stores ``records`` as the engine's own insert or upsert would.

    It does for a schema with one non-nullable float vector and no generated values (auto ids,
    functions, partition keys); an upsert must also carry every field, since the engine's upsert
    fills missing ones from the stored row and is then the same as an insert.
    """
    from milvus_lite import DataType

    fields = collection.schema.fields
    vectors = [f for f in fields if f.dtype in (DataType.FLOAT_VECTOR, DataType.SPARSE_FLOAT_VECTOR)]
    if len(vectors) != 1 or vectors[0].dtype != DataType.FLOAT_VECTOR or vectors[0].nullable:
        return False
    if collection._auto_id or collection._ingestion_chain or collection._bm25_analyzers:
        return False
    if collection._partition_key_field is not None:
        return False
    names = {f.name for f in fields}
    return not upsert or all(names <= record.keys() for record in records)


def write_columns(collection: Any, records: list[dict[str, Any]]) -> None:
    """``Collection.insert(records)`` into the default partition, the vectors as one block.

    The steps are the engine's: validate every record up front, allocate sequence numbers, build
    the write-ahead batch, log and apply it, flush when a budget is spent. Only the vector column
    is built here, from a float32 array; the other fields go through ``validate_record`` and
    ``_build_wal_data_batch`` against the schema without the vector.
    """
    import pyarrow as pa
    from milvus_lite.constants import DEFAULT_PARTITION
    from milvus_lite.engine.collection import Collection
    from milvus_lite.engine.operation import InsertOp
    from milvus_lite.exceptions import PartitionNotFoundError, SchemaValidationError
    from milvus_lite.schema.arrow_builder import build_wal_data_schema
    from milvus_lite.schema.validation import validate_record

    schema = collection.schema
    vector = next(f for f in schema.fields if f.name == collection._vector_name)
    scalar_schema = dataclasses.replace(schema, fields=[f for f in schema.fields if f is not vector])
    scalars = [{k: v for k, v in record.items() if k != vector.name} for record in records]
    for record in scalars:
        validate_record(record, scalar_schema, default_properties=collection._database_properties)
    try:
        block = np.stack([np.asarray(record[vector.name], dtype=np.float32) for record in records])
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaValidationError(f"vector field {vector.name!r}: {exc}") from None
    if block.shape != (len(records), vector.dim):
        raise SchemaValidationError(f"vector field {vector.name!r} expected dim {vector.dim}, got {block.shape[1:]}")
    if not collection._manifest.has_partition(DEFAULT_PARTITION):
        raise PartitionNotFoundError(DEFAULT_PARTITION)

    seq_start = collection._next_seq
    collection._next_seq += len(records)
    seqs = list(range(seq_start, seq_start + len(records)))
    builder = _ScalarBatchBuilder(scalar_schema, build_wal_data_schema(scalar_schema))
    scalar_batch = Collection._build_wal_data_batch(builder, scalars, DEFAULT_PARTITION, seqs)
    wal_schema = collection._wal_data_schema
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), type=wal_schema.field(vector.name).type)
    columns = [vectors if name == vector.name else scalar_batch.column(name) for name in wal_schema.names]
    batch = pa.RecordBatch.from_arrays(columns, schema=wal_schema)
    collection._apply(InsertOp(partition=DEFAULT_PARTITION, batch=batch))
    if collection._should_flush():
        collection._trigger_flush()


@dataclasses.dataclass
class _ScalarBatchBuilder:
    """What ``Collection._build_wal_data_batch`` reads of its collection: the schema to build."""

    _schema: Any
    _wal_data_schema: Any


def _engine_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The engine validates vectors as lists of numbers: hand numpy vectors over as lists."""
    return [{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in row.items()} for row in rows]


def _json_decoder(collection: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The engine keeps JSON fields as text; pymilvus hands them out parsed, and so does this."""
    from milvus_lite import DataType

    names = [f.name for f in collection.schema.fields if f.dtype == DataType.JSON]

    def decode(row: dict[str, Any]) -> dict[str, Any]:
        for name in names:
            if isinstance(row.get(name), str):
                row[name] = json.loads(row[name])
        return row

    return decode


def open_direct(path: str, database: str) -> LiteDirect | None:
    """The in-process reads of the Milvus Lite engine that pymilvus started for ``path``, or None
    when that engine is not one this module was tested against (pymilvus's path is used then)."""
    try:
        import milvus_lite
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return None
    if getattr(milvus_lite, "__version__", "") not in TESTED_VERSIONS:
        return None
    entry = getattr(server_manager_instance, "_servers", {}).get(path)
    if entry is None:
        return None
    _server, db, _port = entry
    return LiteDirect(db, database)
