"""The durability patches against Milvus Lite's own contracts, found by running the engine's test
suite patched (docs/reliability.md, "The engine's own test suite"): index checksums kept out of
the folder the engine lists and cleans, a manifest naming a file that is not there saved as the
engine saves it, and a damaged manifest refused with the engine's own error class too."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import lite_schema

milvus_lite = pytest.importorskip("milvus_lite")
from milvus_lite import MilvusLite  # noqa: E402
from milvus_lite.constants import DEFAULT_PARTITION  # noqa: E402
from milvus_lite.exceptions import ManifestCorruptedError  # noqa: E402
from milvus_lite.storage.manifest import MANIFEST_FILENAME, Manifest  # noqa: E402

from lookalike.engines.lite import patches  # noqa: E402
from lookalike.errors import StorageError  # noqa: E402

pytestmark = pytest.mark.skipif(
    not patches.apply(), reason=f"tests of the engine patches, not applied: {patches.describe()['detail']}"
)

DIM = 8
HNSW = {"index_type": "HNSW", "metric_type": "IP", "params": {"M": 8, "efConstruction": 32}}


def _fill(db: MilvusLite, name: str) -> object:
    """A collection of 30 flushed rows with an HNSW index, loaded (its index files written)."""
    col = db.create_collection(name, lite_schema(DIM))
    vectors = np.random.default_rng(3).standard_normal((30, DIM)).astype(np.float32)
    col.insert([{"id": f"d{i}", "vec": v.tolist(), "language": "en", "n": i, "meta": {}}
                for i, v in enumerate(vectors)])
    col.flush()
    col.create_index("vec", HNSW)
    col.load()
    col._wait_for_bg()
    return col


def _partition(root: Path, name: str) -> Path:
    return next(root.rglob(f"collections/{name}")) / "partitions" / DEFAULT_PARTITION


def test_index_checksums_stay_out_of_the_engines_index_folder(tmp_path: Path) -> None:
    db = MilvusLite(str(tmp_path / "engine"))
    col = _fill(db, "c")
    part = _partition(tmp_path, "c")
    indexes = sorted(os.listdir(part / "indexes"))
    # The engine lists this folder and expects its own files only (its tests assert exactly that).
    assert indexes and all(name.endswith(".vec.hnsw.idx") for name in indexes)
    assert sorted(os.listdir(part / "index_checksums")) == [f"{name}.crc32" for name in indexes]

    col.release()
    col.drop_index("vec")
    assert os.listdir(part / "indexes") == []
    db.close()
    # The dropped index's checksum is removed when the collection is opened again.
    reopened = MilvusLite(str(tmp_path / "engine"))
    reopened.get_collection("c")
    assert os.listdir(part / "index_checksums") == []
    reopened.close()


def test_checksums_in_the_index_folder_from_earlier_versions_are_removed(tmp_path: Path) -> None:
    db = MilvusLite(str(tmp_path / "engine"))
    _fill(db, "c")
    db.close()
    part = _partition(tmp_path, "c")
    index_file = next((part / "indexes").glob("*.idx"))
    legacy = index_file.with_name(index_file.name + ".crc32")
    legacy.write_text("0\n")
    reopened = MilvusLite(str(tmp_path / "engine"))
    col = reopened.get_collection("c")
    col.load()
    assert not legacy.exists()
    assert len(col.search([[0.1] * DIM], top_k=5)[0]) == 5
    reopened.close()


def test_a_manifest_naming_a_missing_file_saves_and_loads_as_the_engines(tmp_path: Path) -> None:
    manifest = Manifest(str(tmp_path))
    manifest.add_data_file(DEFAULT_PARTITION, "data/a.parquet")  # never written
    manifest.save()
    assert Manifest.load(str(tmp_path)).get_data_files(DEFAULT_PARTITION) == ["data/a.parquet"]


def test_a_damaged_manifest_is_refused_with_the_engines_error_too(tmp_path: Path) -> None:
    Manifest(str(tmp_path)).save()
    (tmp_path / MANIFEST_FILENAME).write_text("{ broken")
    with pytest.raises(ManifestCorruptedError) as refused:
        Manifest.load(str(tmp_path))
    assert isinstance(refused.value, StorageError)
    assert MANIFEST_FILENAME in str(refused.value)
