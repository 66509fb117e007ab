"""Writes to Milvus Lite 3.2.2: a columnar memtable flush, and larger write budgets.

The flush. ``MemTable._build_data_table`` builds the flushed table cell by cell through Python
objects: every vector of the memtable becomes a list of Python floats (memray: 1.4 GB allocated
at once for a 128 MB memtable of 768-d rows), then Arrow converts them back. The replacement
gathers the same rows from the memtable's Arrow batches with one ``take``, or none when every row
is live and in order (an ingest of new ids: the table is the batches' own buffers). Same table,
same row order: ``tests/test_lite_speedups.py`` compares it with the engine's own build (nulls,
JSON, two partitions, rows superseded and deleted inside the memtable). Measured at 100k rows
through lookalike: ingest 34 -> 28 s, peak RSS while writing 2.79 -> 2.08 GB.

The budgets. The engine cuts a segment when its memtable holds 128 MB (~44k rows of 768 floats)
or its write-ahead log 256 MB, and searches one HNSW graph per segment, so 100k rows stay three
graphs. A 384 MiB memtable and a 1 GiB log make segments of ~130k such rows: at 100k one graph,
p50 2.24 -> 1.33 ms through pymilvus, for +0.9 GB of peak memory while writing (1,877 -> 2,759 MB
before the memory patches; bench/README.md, change 2). The engine's own variables
(``MILVUS_LITE_MEMTABLE_MEMORY_LIMIT_BYTES``, ``MILVUS_LITE_WAL_SIZE_LIMIT_BYTES``) win when set.
The budgets are safe only with the columnar flush: with the cell-by-cell one, a 2 GiB memtable
peaked at 4.5 GB.

Upstream: the columnar flush would be offered as a change to ``milvus_lite/storage/memtable.py``;
the budgets are lookalike's choice (memory for search speed), not the engine's to change.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# ~130k rows of 768 floats per segment; the log must hold as much as the memtable.
MEMTABLE_BYTES = 384 << 20
WAL_BYTES = 1 << 30
_BUDGET_VARIABLES = ("MILVUS_LITE_MEMTABLE_MEMORY_LIMIT_BYTES", "MILVUS_LITE_WAL_SIZE_LIMIT_BYTES")


def targets() -> list[tuple[Any, str, Callable[[Any], Any]]]:
    """The (owner, attribute, make replacement from original) patches of this module."""
    from milvus_lite.engine import collection as engine_collection
    from milvus_lite.storage.memtable import MemTable

    # collection.py imported the budgets by name when milvus_lite was imported: rebind them there.
    memtable, wal = write_budgets(
        os.environ, engine_collection.MEMTABLE_MEMORY_LIMIT, engine_collection.WAL_SIZE_LIMIT
    )
    return [
        (MemTable, "_build_data_table", _make_columnar_flush),
        (engine_collection, "MEMTABLE_MEMORY_LIMIT", lambda _engine_default: memtable),
        (engine_collection, "WAL_SIZE_LIMIT", lambda _engine_default: wal),
    ]


def write_budgets(environ: Mapping[str, str], memtable: int, wal: int) -> tuple[int, int]:
    """The memtable and write-ahead-log budgets to use.

    Args:
        environ: the process environment; the engine's own variables in it win.
        memtable: the engine's memtable budget, in bytes.
        wal: the engine's write-ahead-log budget, in bytes.

    Returns:
        (memtable, wal) in bytes: lookalike's larger budgets unless the environment sets the engine's.
    """
    if any(name in environ for name in _BUDGET_VARIABLES):
        return memtable, wal
    return max(memtable, MEMTABLE_BYTES), max(wal, WAL_BYTES)


def _make_columnar_flush(original: Callable[..., Any]) -> Callable[..., Any]:
    """Build the replacement for ``MemTable._build_data_table`` (same table, same row order)."""
    import pyarrow as pa

    def _build_data_table(self: Any, rows: list[tuple[int, int]]) -> Any:
        batches = self._insert_batches
        if not rows or not batches:
            return original(self, rows)
        starts = np.cumsum([0] + [batch.num_rows for batch in batches[:-1]], dtype=np.int64)
        where = np.fromiter((starts[b] + r for b, r in rows), dtype=np.int64, count=len(rows))
        names = self._data_schema.names
        table = pa.Table.from_batches(batches).select(names)
        if not (len(where) == table.num_rows and (where == np.arange(len(where))).all()):
            table = table.take(where)
        # Every row live and in order (a memtable of new rows): the batches' own buffers, no copy.
        return pa.Table.from_arrays(table.columns, schema=self._data_schema)

    _build_data_table.__doc__ = original.__doc__
    _build_data_table.__wrapped__ = original  # type: ignore[attr-defined]
    return _build_data_table
