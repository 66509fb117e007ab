"""A full disk: a clear StorageError (disk_full), and after space is freed every acknowledged write is there.

The data directory lives on a 20 MB tmpfs (mounted here: needs root; skipped otherwise) that
also holds a filler file. Documents are indexed until the disk is full; the error must be a
``StorageError`` with ``disk_full`` naming the data directory (not the caller's
``InvalidInputError``). Then the filler is deleted and the directory reopened: every acknowledged
document is there at its version, nothing else is.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pymilvus import DataType, FieldSchema

from lookalike import Client, StorageError
from lookalike.engines.lite import patches

pytestmark = pytest.mark.skipif(
    not patches.apply(), reason=f"tests of the engine patches, not applied: {patches.describe()['detail']}"
)

FIELDS = [FieldSchema(name="version", dtype=DataType.INT64)]
DIM, BATCH = 256, 400


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs mounted on a fresh directory, unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def batch(number: int) -> list[dict]:
    rng = np.random.default_rng(number)
    return [{"id": f"b{number}-{i}", "vec": (rng.random(DIM) + 0.01).tolist(), "version": number}
            for i in range(BATCH)]


@pytest.mark.parametrize("flush", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["flush", "no-flush"])
def test_full_disk_is_a_storage_error_and_loses_nothing(small_disk: Path, flush: bool) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (6 << 20))
    data_dir = small_disk / "data"
    acknowledged: list[int] = []
    with pytest.raises(StorageError) as caught:  # noqa: PT012 - the loop runs until the disk is full
        client = Client(codops="ltlrt", data_dir=data_dir)
        try:
            col = client.create_collection("full", FIELDS, dim=DIM)
            for number in range(1000):
                col.index(batch(number), flush=flush or number % 5 == 4)
                acknowledged.append(number)
        finally:
            try:
                client.close()
            except StorageError:
                pass  # closing a failed collection may report its failure again
    error = caught.value
    assert error.disk_full, error
    assert str(data_dir) in str(error) and "free disk space" in str(error)
    assert acknowledged, "the disk was full before the first write"

    filler.unlink()
    with Client(codops="ltlrt", data_dir=data_dir) as client:
        col = client.collection("full")
        ids = [f"b{n}-{i}" for n in acknowledged for i in range(BATCH)]
        rows = col.get(ids, ["version"])
        assert len(rows) == len(ids), f"{len(ids) - len(rows)} acknowledged documents missing"
        assert all(row["version"] == int(row["id"][1:].split("-")[0]) for row in rows)
        # the failed batch may be there whole or not at all, never partly, never twice
        assert col.count() in (len(ids), len(ids) + BATCH)
