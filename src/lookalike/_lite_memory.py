"""Less memory for embedded Milvus Lite 3.2.2: one copy of each segment's vectors, not four.

Measured through lookalike at 100k rows of 768 floats (307 MB of vectors, bench/README.md),
Milvus Lite 3.2.2 peaked at 1.6 GB of Arrow allocations and held two copies of the vectors
afterwards:

- its flush writes the memtable to a Parquet file, then reads the file straight back to make
  the new segment: the read decodes the vector column through its repetition levels, ~0.7 GB
  of scratch on top of the memtable and the table just written;
- each sealed segment keeps its vectors in its Arrow table while its FAISS HNSW graph keeps
  its own copy of them;
- Arrow's allocator keeps what the flush freed for reuse instead of returning it to the
  system (~0.65 GB at 100k).

This module makes a flushed segment from the table the flush just wrote (the same table the
file holds; ``tests/test_lite_memory.py`` compares it with the file read back), points a
segment's vector column at its HNSW graph's own copy once the graph is attached (for IP and
L2, whose graphs store the vectors as given; compared equal before the swap), and hands
Arrow's freed memory back after flushes and index builds. The patches are applied by
``_lite_speedups.apply`` with the engine's other patches, to the versions listed there.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

# Tables written by the flush running in this thread: data file path -> table.
_written = threading.local()


def targets() -> list[tuple[Any, str, Callable[[Any], Any]]]:
    """The (owner, attribute, make replacement from original) patches of this module."""
    from milvus_lite.engine import collection, flush
    from milvus_lite.storage import segment

    found: list[tuple[Any, str, Callable[[Any], Any]]] = [
        (collection.Collection, "_trigger_flush", _make_flush_that_keeps_its_tables),
        # flush.py and segment.py imported these by name: only those bindings change, so
        # compaction and recovery read and write files as the engine does.
        (flush, "write_data_file", _make_write_that_keeps_the_table),
        (segment, "read_data_file", _make_read_that_takes_the_kept_table),
        (collection.Collection, "_bg_compact_and_index", _make_returning_freed_memory),
    ]
    try:
        import milvus_lite.index.faiss_hnsw  # noqa: F401 - only to know that HNSW exists
    except ImportError:  # no faiss: no graph to share vectors with
        return found
    found.append((segment.Segment, "attach_index", _make_attach_sharing_vectors))
    return found


def release_freed_memory() -> None:
    """Return the memory Arrow's allocator holds for reuse to the system."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


# ── the flushed table becomes the segment, without a read back ──────────────


def _make_flush_that_keeps_its_tables(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Collection._trigger_flush`` that lets its segment refresh use the tables it wrote."""

    def _trigger_flush(self: Any) -> None:
        _written.tables = {}
        try:
            original(self)
        finally:
            _written.tables = None  # what was not made into a segment is dropped
            release_freed_memory()

    _trigger_flush.__doc__ = original.__doc__
    _trigger_flush.__wrapped__ = original  # type: ignore[attr-defined]
    return _trigger_flush


def _make_write_that_keeps_the_table(original: Callable[..., Any]) -> Callable[..., Any]:
    """``write_data_file`` (as the flush calls it) that remembers what it wrote, during a flush."""

    def write_data_file(table: Any, partition_dir: str, seq_min: int, seq_max: int) -> str:
        rel = original(table, partition_dir, seq_min, seq_max)
        tables = getattr(_written, "tables", None)
        if tables is not None:
            tables[os.path.join(partition_dir, rel)] = table
        return rel

    write_data_file.__doc__ = original.__doc__
    write_data_file.__wrapped__ = original  # type: ignore[attr-defined]
    return write_data_file


def _make_read_that_takes_the_kept_table(original: Callable[..., Any]) -> Callable[..., Any]:
    """``read_data_file`` (as ``Segment.load`` calls it) that returns the table this thread's
    flush has just written to ``path`` as the file reads back (one chunk per column, the file's
    names for list items: a cast that copies nothing), instead of decoding the file again."""
    import pyarrow.parquet as pq

    def read_data_file(path: str) -> Any:
        table = (getattr(_written, "tables", None) or {}).pop(path, None)
        if table is None:
            return original(path)
        return table.combine_chunks().cast(pq.read_schema(path))

    read_data_file.__doc__ = original.__doc__
    read_data_file.__wrapped__ = original  # type: ignore[attr-defined]
    return read_data_file


def _make_returning_freed_memory(original: Callable[..., Any]) -> Callable[..., Any]:
    """The background compaction and index build, returning Arrow's freed memory after it."""

    def _bg_compact_and_index(self: Any) -> None:
        try:
            original(self)
        finally:
            release_freed_memory()

    _bg_compact_and_index.__doc__ = original.__doc__
    _bg_compact_and_index.__wrapped__ = original  # type: ignore[attr-defined]
    return _bg_compact_and_index


# ── one copy of the vectors: the segment reads its HNSW graph's ─────────────


class _GraphVectors:
    """Exposes an HNSW graph's stored vectors as an (n, dim) float32 array that keeps the graph
    alive: numpy keeps this object as the array's base, and Arrow keeps the array."""

    def __init__(self, graph: Any, n: int, dim: int) -> None:
        import faiss

        self.graph = graph
        storage = faiss.downcast_index(graph.storage)
        flat = faiss.rev_swig_ptr(storage.get_xb(), n * dim)
        self.__array_interface__ = flat.reshape(n, dim).__array_interface__


def shared_vectors(index: Any) -> np.ndarray | None:
    """The vectors an HNSW segment index stores, as a read-only array over its own memory, or
    None when it stores something else (COSINE graphs hold normalised copies)."""
    from milvus_lite.index.faiss_hnsw import FaissHnswIndex

    if not isinstance(index, FaissHnswIndex) or index.metric not in ("IP", "L2"):
        return None
    import faiss

    storage = faiss.downcast_index(index._index.storage)
    if not isinstance(storage, faiss.IndexFlat) or storage.code_size != 4 * index.dim:
        return None
    vectors = np.asarray(_GraphVectors(index._index, index.num_vectors, index.dim))
    vectors.flags.writeable = False
    return vectors


def _make_attach_sharing_vectors(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Segment.attach_index`` that, for an HNSW graph holding the segment's vectors as they
    are, replaces the segment's own copy (its Arrow column and the array searches use) with a
    view of the graph's. Segments are immutable, so the two copies stay equal; readers holding
    the old column keep it alive until they finish."""
    import pyarrow as pa

    def attach_index(self: Any, index: Any, field_name: str | None = None) -> None:
        original(self, index, field_name)
        shared = shared_vectors(index)
        if shared is None:
            return
        field = field_name or self._vector_field
        current, null_mask = self.vector_data(field)
        if null_mask is not None or shared.shape != current.shape or not np.array_equal(shared, current):
            return
        position = self.table.schema.get_field_index(field)
        column = self.table.schema.field(position)
        values = pa.FixedSizeListArray.from_arrays(pa.array(shared.reshape(-1)), type=column.type)
        self.table = self.table.set_column(position, column, values)
        self._vector_data_by_field[field] = (shared, None)
        if field == self._vector_field:
            self.vectors = shared

    attach_index.__doc__ = original.__doc__
    attach_index.__wrapped__ = original  # type: ignore[attr-defined]
    return attach_index
