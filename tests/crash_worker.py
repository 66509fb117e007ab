"""A real ingest through lookalike's API that logs each acknowledged operation, for tests/test_crash.py.

Usage: ``python crash_worker.py DATA_DIR LOG SEED OPS``. Before each call it appends a ``begin``
line to LOG, after the call returns a ``done`` line, each fsynced: the log is the model of what
was acknowledged. ``LOOKALIKE_CRASH_AT=point:k`` makes the process SIGKILL itself the k-th time
the engine reaches ``point`` (see ``HOOKS``); ``LOOKALIKE_CRASH_AFTER_S=t`` kills it after t seconds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import zlib
from typing import Any

import numpy as np
from pymilvus import DataType, FieldSchema

FIELDS = [FieldSchema(name="version", dtype=DataType.INT64)]
COLLECTION, DIM = "crash", 8


def vector(doc_id: str, version: int) -> list[float]:
    """The vector of ``doc_id`` at ``version`` (the checker recomputes it)."""
    rng = np.random.default_rng(zlib.crc32(f"{doc_id}/{version}".encode()))
    return (rng.random(DIM) + 0.01).tolist()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _hook(owner: Any, name: str, when: str, count: list[int]) -> None:
    """Wrap ``owner.name`` so that its count-th call kills the process ``when`` (before/after/torn)."""
    original = owner.__dict__[name]
    function = original.__func__ if isinstance(original, (classmethod, staticmethod)) else original

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        count[0] -= 1
        if count[0] == 0 and when == "before":
            _die()
        result = function(*args, **kwargs)
        if count[0] == 0:
            if when == "torn":  # an index save cut half way: the file it wrote, truncated
                path = args[-1]
                os.truncate(path, os.path.getsize(path) // 2)
            _die()
        return result

    setattr(owner, name, classmethod(wrapper) if isinstance(original, classmethod) else wrapper)


def install_hooks(spec: str) -> None:
    """Install the kill hook ``point:k`` named in LOOKALIKE_CRASH_AT."""
    from lookalike.engines.lite import patches

    patches.apply()  # hooks wrap the patched functions, as they run in lookalike
    from milvus_lite.engine import compaction, flush
    from milvus_lite.index.faiss_hnsw import FaissHnswIndex
    from milvus_lite.storage.manifest import Manifest
    from milvus_lite.storage.wal import WAL

    hooks = {
        "flush_write": (flush, "write_data_file", "after"),  # segment written, manifest not yet
        "manifest_save": (Manifest, "save", "after"),  # committed, WAL or old files not yet deleted
        "wal_delete": (WAL, "close_and_delete", "before"),  # inside the flush, after its commit
        "compaction": (compaction, "write_data_file", "after"),  # merged file written, not committed
        "index_save": (FaissHnswIndex, "save", "torn"),  # an HNSW file half written
    }
    point, _, k = spec.partition(":")
    owner, name, when = hooks[point]
    _hook(owner, name, when, [int(k or 1)])


def main(data_dir: str, log_path: str, seed: int, ops: int) -> None:
    from lookalike import Client

    if spec := os.environ.get("LOOKALIKE_CRASH_AT"):
        install_hooks(spec)
    if after := os.environ.get("LOOKALIKE_CRASH_AFTER_S"):
        threading.Timer(float(after), _die).start()
    rng = random.Random(seed)
    log = open(log_path, "a")  # noqa: SIM115 - kept open for the whole run, fsynced per line

    def record(entry: dict[str, Any]) -> None:
        log.write(json.dumps(entry) + "\n")
        log.flush()
        os.fsync(log.fileno())

    with Client(codops="ltlrt", data_dir=data_dir) as client:
        col = client.create_collection(COLLECTION, FIELDS, dim=DIM)
        present = {row["id"]: row["version"] for row in col.iterate(output_fields=["version"])}
        next_id = 1 + max((int(i[1:]) for i in present), default=0)
        for step in range(ops):
            kind = rng.choices(["new", "upsert", "delete"], [5, 3, 2])[0] if present else "new"
            flush = rng.random() < 0.6
            if kind == "delete":
                ids = rng.sample(sorted(present), min(len(present), rng.randint(1, 8)))
                entry = {"op": "delete", "ids": ids}
            else:
                if kind == "new":
                    ids = [f"d{next_id + i}" for i in range(rng.randint(5, 40))]
                    next_id += len(ids)
                else:
                    ids = rng.sample(sorted(present), min(len(present), rng.randint(1, 20)))
                entry = {"op": "index", "docs": {i: present.get(i, 0) + 1 + step for i in ids}, "flush": flush}
            record({"begin": entry})
            if entry["op"] == "delete":
                col.delete(ids)
                for i in ids:
                    present.pop(i, None)
            else:
                col.index([{"id": i, "vec": vector(i, v), "version": v} for i, v in entry["docs"].items()],
                          flush=flush)
                present.update(entry["docs"])
            record({"done": step})
    record({"closed": True})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
