"""Less memory for Milvus Lite 3.2.2: one copy of each segment's vectors, at every step.

Measured through lookalike at 100k rows of 768 floats (307 MB of vectors, bench/README.md),
Milvus Lite 3.2.2 peaked at 1.6 GB of Arrow allocations and held two copies of the vectors
afterwards:

- its flush writes the memtable to a Parquet file, then reads the file straight back to make
  the new segment: the read decodes the vector column through its repetition levels, ~0.7 GB
  of scratch on top of the memtable and the table just written;
- each sealed segment keeps its vectors in its Arrow table while its FAISS HNSW graph keeps
  its own copy of them;
- Arrow's allocator keeps what the flush freed for reuse instead of returning it to the
  system (~0.65 GB at 100k);
- while a segment's graph is built, the segment's copy and the graph's coexist, and before
  that the segment's copy is made while the memtable's still exists.

This module makes a flushed segment from the table the flush just wrote (the same table the
file holds; ``tests/test_lite_memory.py`` compares it with the file read back), with its
vectors moved through a scratch file into one block the memtable's copy never coexists with.
For IP and L2 graphs (which store the vectors as given) the graph's flat storage adopts that
block instead of copying it; a segment whose graph was loaded or built from a copy (after a
restart, a compaction) has its vector column pointed at the graph's copy once the graph is
attached, after a check that the two are equal. Arrow's freed memory is handed back after
flushes and index builds.

Measured (bench/memory.py, 100k rows, bench/README.md changes 4 and 6): peak RSS of an ingest
2,736 -> 908 MB, at rest 2,594 -> 891 MB (with lookalike's column writes);
in the latest full run lookalike peaks at 919 MB against FAISS's 687 MB, the engine unpatched at
2,281 MB. The graph is byte for byte the one the engine builds from a copy.

Upstream: using the written table instead of reading it back, and returning Arrow's freed memory,
would be offered to ``milvus_lite/engine/flush.py``; sharing the vectors between a segment and its
graph reaches into FAISS's storage and would be offered as a design proposal, not a patch.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

# Tables written by the flush running in this thread: data file path -> table.
_written = threading.local()


def targets() -> list[tuple[Any, str, Callable[[Any], Any]]]:
    """The (owner, attribute, make replacement from original) patches of this module."""
    from milvus_lite.engine import collection, flush
    from milvus_lite.index.faiss_hnsw import FaissHnswIndex
    from milvus_lite.storage import segment

    return [
        (collection.Collection, "_trigger_flush", _make_flush_that_keeps_its_tables),
        # flush.py and segment.py imported these by name: only those bindings change, so
        # compaction and recovery read and write files as the engine does.
        (flush, "write_data_file", _make_write_that_keeps_the_table),
        (segment, "read_data_file", _make_read_that_takes_the_kept_table),
        (collection.Collection, "_bg_compact_and_index", _make_returning_freed_memory),
        (FaissHnswIndex, "build", _make_build_over_segment_vectors),
        (segment.Segment, "attach_index", _make_attach_sharing_vectors),
    ]


def release_freed_memory() -> None:
    """Return the memory Arrow's allocator holds for reuse to the system."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


# ── the flushed table becomes the segment, without a read back ──────────────


def _make_flush_that_keeps_its_tables(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Collection._trigger_flush`` that lets its segment refresh use the tables it wrote."""

    def _trigger_flush(self: Any) -> None:
        _written.tables = {}
        _written.memtable = self._memtable  # the one this flush freezes
        try:
            original(self)
        finally:
            _written.tables = _written.memtable = None  # what was not made into a segment is dropped
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
    names for list items), instead of decoding the file again.

    Vector columns are the exception. The memtable's batches (the kept table's buffers) are a
    copy of them that the segment must not coexist with: they are written to a scratch file
    beside the data file, let go of, then read into one block, the memory the segment's HNSW
    graph adopts when it is built (``_make_build_over_segment_vectors``). That costs a write
    and a read of the vectors; decoding them from the Parquet file instead takes more scratch
    memory than the copy it saves.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    def read_data_file(path: str) -> Any:
        table = (getattr(_written, "tables", None) or {}).pop(path, None)
        if table is None:
            return original(path)
        schema = pq.read_schema(path)
        blocks = [
            name for name in schema.names
            if _is_vector_block(schema.field(name).type) and not table.column(name).null_count
        ]
        if not blocks:
            return table.combine_chunks().cast(schema)
        scratch = f"{path}.vectors"
        try:
            with open(scratch, "wb") as out:
                for name in blocks:
                    for chunk in table.column(name).chunks:
                        chunk.flatten().to_numpy().tofile(out)
            rest = table.drop_columns(blocks).combine_chunks()
            n = rest.num_rows
            del table
            _let_go_of_the_memtable()
            with open(scratch, "rb") as spilled:
                columns = {name: _read_vector_block(spilled, schema.field(name).type, n) for name in blocks}
        finally:
            os.remove(scratch)
        arrays = [columns[name] if name in columns else rest.column(name) for name in schema.names]
        return pa.Table.from_arrays(arrays, names=schema.names).cast(schema)

    read_data_file.__doc__ = original.__doc__
    read_data_file.__wrapped__ = original  # type: ignore[attr-defined]
    return read_data_file


def _is_vector_block(arrow_type: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_fixed_size_list(arrow_type) and pa.types.is_float32(arrow_type.value_type)


def _let_go_of_the_memtable() -> None:
    """Drop the frozen memtable's batches: once its files are written nothing reads them (the
    collection swapped in a fresh memtable before the flush began)."""
    memtable = getattr(_written, "memtable", None)
    if memtable is not None:
        with memtable._lock:
            memtable._insert_batches.clear()
    release_freed_memory()


class _SegmentVectors:
    """One segment's (n, dim) float32 vectors in memory a FAISS index can take over: a
    ``faiss.UInt8Vector`` (a C++ vector), exposed to numpy, which keeps this object as the
    array's base. Once an HNSW graph adopts the memory, ``graph`` keeps that graph alive for
    whoever still reads through this object."""

    _by_address: weakref.WeakValueDictionary[int, _SegmentVectors] = weakref.WeakValueDictionary()
    _lock = threading.Lock()

    def __init__(self, n: int, dim: int) -> None:
        import faiss

        self.buffer = faiss.UInt8Vector()
        self.buffer.resize(n * dim * 4)
        self.n, self.dim, self.graph = n, dim, None
        flat = faiss.rev_swig_ptr(self.buffer.data(), n * dim * 4).view(np.float32)
        self.__array_interface__ = flat.reshape(n, dim).__array_interface__
        with self._lock:
            self._by_address[self.address] = self

    @property
    def address(self) -> int:
        return self.__array_interface__["data"][0]

    @classmethod
    def adoptable(cls, vectors: np.ndarray) -> _SegmentVectors | None:
        """The object whose memory ``vectors`` is, whole, if no graph has adopted it yet."""
        with cls._lock:
            found = cls._by_address.get(vectors.__array_interface__["data"][0])
            if found is None or found.graph is not None or vectors.shape != (found.n, found.dim):
                return None
            return found

    def move_into(self, graph: Any) -> None:
        """Make ``graph``'s (empty) flat storage own this memory, without copying it."""
        import faiss

        storage = faiss.downcast_index(graph.storage)
        storage.codes.owned_data.swap(self.buffer)
        self.graph = graph
        with self._lock:
            self._by_address.pop(self.address, None)


def _read_vector_block(spilled: Any, arrow_type: Any, n: int) -> Any:
    """The next ``n`` vectors of ``arrow_type`` in the file ``spilled``, read into one
    ``_SegmentVectors`` block, as an Arrow array over it."""
    import pyarrow as pa

    block = _SegmentVectors(n, arrow_type.list_size)
    vectors = np.asarray(block)
    if spilled.readinto(memoryview(vectors).cast("B")) != vectors.nbytes:
        raise OSError(f"{spilled.name}: fewer vectors than the {n} written")
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), type=arrow_type)


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


def _make_build_over_segment_vectors(original: Callable[..., Any]) -> Callable[..., Any]:
    """``FaissHnswIndex.build`` that, for IP and L2 graphs over a flushed segment's vectors,
    gives the graph the segment's own memory instead of a copy: the graph is made by the engine's
    build (with no vectors), its flat storage adopts the segment's block, and FAISS adds the
    vectors from that same memory (the copy it makes is onto itself). The graph and its vectors
    are the ones the engine's build makes."""

    def build(cls: Any, vectors: np.ndarray, metric: str, params: dict | None = None) -> Any:
        block = _SegmentVectors.adoptable(vectors) if metric in ("IP", "L2") else None
        if block is None:
            return original(vectors, metric, params)
        index = original(vectors[:0], metric, params)
        block.move_into(index._index)
        index._index.add(vectors)
        index.num_vectors = len(vectors)
        return index

    build.__doc__ = original.__doc__
    build.__wrapped__ = original  # type: ignore[attr-defined]
    return classmethod(build)


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
        if null_mask is not None or shared.shape != current.shape:
            return
        adopted = shared.ctypes.data == current.ctypes.data  # the graph took the segment's memory
        if not adopted and not np.array_equal(shared, current):
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
