"""Writes to the embedded engine as columns: the vectors of a batch go in as one float32 block.

The engine's ``insert`` checks every float of every vector in Python and rebuilds each vector
from a list of Python floats (two thirds of an ingest, and ~0.3 GB of Python objects at 100k rows
of 768 floats); ``write_columns`` puts the vectors into the engine's write-ahead batch as one
block, while every other field still passes the engine's own validation and batch builder. It
reaches into the engine's internals as the patches do, so the engine layer uses it only when the
patches are active (``patches.is_applied()``), and the engine's own insert otherwise. The caller
holds the engine's write lock: the engine allocates sequence numbers without a lock of its own.

Also here: the two conversions between lookalike's rows and the engine's (``engine_rows``,
``json_decoder``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import numpy as np


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


def engine_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The engine validates vectors as lists of numbers: hand numpy vectors over as lists."""
    return [{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in row.items()} for row in rows]


def json_decoder(collection: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The engine keeps JSON fields as text; pymilvus hands them out parsed, and so does this."""
    from milvus_lite import DataType

    names = [f.name for f in collection.schema.fields if f.dtype == DataType.JSON]

    def decode(row: dict[str, Any]) -> dict[str, Any]:
        for name in names:
            if isinstance(row.get(name), str):
                row[name] = json.loads(row[name])
        return row

    return decode
