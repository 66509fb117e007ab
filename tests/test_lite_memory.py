"""The memory patches keep what the engine stores: a segment made from the flushed table equals
the file read back, and a segment whose vectors live in its HNSW graph returns the same rows
and search results as the engine's own copy; a graph that adopts a segment's memory is, byte for
byte, the graph the engine builds from a copy."""

from __future__ import annotations

import gc

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import lite_schema

milvus_lite = pytest.importorskip("milvus_lite")
from milvus_lite import MilvusLite  # noqa: E402
from milvus_lite.engine import flush as engine_flush  # noqa: E402
from milvus_lite.index.faiss_hnsw import FaissHnswIndex  # noqa: E402
from milvus_lite.storage import segment as engine_segment  # noqa: E402

from lookalike.engines.lite import patches  # noqa: E402
from lookalike.engines.lite.patches import memory as _lite_memory  # noqa: E402

pytestmark = pytest.mark.skipif(
    not patches.apply(), reason=f"tests of the engine patches, not applied: {patches.describe()['detail']}"
)

DIM = 16


def _vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _collection(db: MilvusLite, name: str, metric: str = "IP"):
    col = db.create_collection(name, lite_schema(DIM))
    col.create_index("vec", {"index_type": "HNSW", "metric_type": metric, "params": {"M": 8, "efConstruction": 64}})
    col.load()
    return col


def _records(vectors: np.ndarray, prefix: str, start: int = 0) -> list[dict]:
    return [
        {"id": f"{prefix}{i}", "vec": v.tolist(), "language": ("en", "fr")[i % 2],
         "n": None if i % 5 == 0 else start + i, "meta": {"i": i, "tags": ["x"] * (i % 3)}}
        for i, v in enumerate(vectors)
    ]


def _segments(col) -> list:
    col._wait_for_bg()  # the engine builds segment graphs in a background worker
    return [s for s in col._segment_cache.values() if s.num_rows]


@pytest.fixture
def db(tmp_path):
    engine = MilvusLite(str(tmp_path / "engine"))
    yield engine
    engine.close()


def test_the_memory_patches_wrap_the_engine():
    for owner, name, _make in _lite_memory.targets():
        assert hasattr(getattr(owner, name), "__wrapped__"), name
    assert not hasattr(engine_segment.read_data_file.__wrapped__, "__wrapped__")


def test_a_flushed_segment_is_the_file_it_wrote(db):
    col = _collection(db, "docs")
    col.create_partition("other")
    col.insert(_records(_vectors(60, 1), "a"))
    col.insert(_records(_vectors(30, 2), "b", 100), partition_name="other")
    col.upsert(_records(_vectors(10, 3), "a", 200))  # rows superseded inside the memtable
    col.delete(["a20", "b3"])
    col.flush()
    segments = _segments(col)
    assert len(segments) == 2
    for seg in segments:
        on_disk = pq.read_table(seg.file_path)
        assert seg.table.schema.equals(on_disk.schema, check_metadata=True)
        assert seg.table.equals(on_disk)
        assert all(column.num_chunks == 1 for column in seg.table.columns)
    assert sum(seg.num_rows for seg in segments) == 60 + 30 - 2


def test_a_flush_outside_the_flush_pipeline_reads_its_file(db, tmp_path):
    table = pa.table({"x": [1, 2, 3]})
    rel = engine_flush.write_data_file(table, str(tmp_path / "p"), 1, 3)  # no flush running: not kept
    assert engine_segment.read_data_file(str(tmp_path / "p" / rel)).equals(table)


def test_segment_vectors_live_in_the_hnsw_graph(db):
    col = _collection(db, "docs")
    vectors = _vectors(300, 4)
    col.insert(_records(vectors, "a"))
    col.flush()
    (seg,) = _segments(col)
    shared = seg.vector_data("vec")[0]
    assert isinstance(shared.base, _lite_memory._GraphVectors)
    assert shared.base.graph is seg.indexes["vec"]._index
    assert not shared.flags.writeable
    assert np.array_equal(shared, vectors)
    column = seg.table.column("vec").chunk(0)
    assert column.values.buffers()[1].address == shared.ctypes.data  # the table reads the graph too
    assert seg.table.equals(pq.read_table(seg.file_path))

    rows = col.get(["a7", "a299"], output_fields=["vec", "n"])
    assert [r["vec"] for r in rows] == [vectors[7].tolist(), vectors[299].tolist()]
    hits = col.search([vectors[7].tolist()], top_k=3, output_fields=["id"], search_params={"ef": 64})
    assert hits[0][0]["id"] == "a7"

    # The view keeps the graph alive after the segment lets go of its index.
    table = seg.table
    seg.release_index()
    gc.collect()
    assert np.array_equal(table.column("vec").chunk(0).values.to_numpy().reshape(-1, DIM), vectors)


def _graph_address(index: FaissHnswIndex) -> int:
    """Where the graph's flat storage keeps its vectors."""
    return faiss.rev_swig_ptr(faiss.downcast_index(index._index.storage).get_xb(), 1).ctypes.data


def test_the_graph_adopts_the_memory_the_segment_was_loaded_into(db, tmp_path, monkeypatch):
    loaded = []
    read_block = _lite_memory._read_vector_block

    def recording(*args):
        column = read_block(*args)
        loaded.append(column.values.buffers()[1].address)
        return column

    monkeypatch.setattr(_lite_memory, "_read_vector_block", recording)
    col = _collection(db, "docs")
    vectors = _vectors(400, 7)
    col.insert(_records(vectors, "a"))
    col.flush()
    (seg,) = _segments(col)
    assert loaded == [_graph_address(seg.indexes["vec"])]  # one block, no copy of it
    assert seg.vectors.ctypes.data == loaded[0]
    assert np.array_equal(seg.vectors, vectors)
    assert not list((tmp_path / "engine").rglob("*.vectors"))  # the scratch file is gone


@pytest.mark.parametrize("metric", ["IP", "L2"])
def test_a_graph_over_a_segment_block_is_the_engines_graph(metric):
    vectors = _vectors(500, 8)
    block = _lite_memory._SegmentVectors(*vectors.shape)
    np.asarray(block)[:] = vectors
    params = {"M": 8, "efConstruction": 40}
    adopted = FaissHnswIndex.build(np.asarray(block), metric, params)
    engines = FaissHnswIndex.build.__wrapped__(vectors.copy(), metric, params)
    assert block.graph is adopted._index and _graph_address(adopted) == np.asarray(block).ctypes.data
    assert adopted.num_vectors == engines.num_vectors == len(vectors)
    assert faiss.serialize_index(adopted._index).tobytes() == faiss.serialize_index(engines._index).tobytes()
    # A block is adopted once: a second graph over it gets its own copy.
    again = FaissHnswIndex.build(np.asarray(block), metric, params)
    assert _graph_address(again) != _graph_address(adopted)


def test_search_results_do_not_change_when_the_vectors_move(db, monkeypatch):
    def build(name: str, share: bool):
        with monkeypatch.context() as m:
            if not share:  # the engine's own build and attach: the graph copies the vectors
                attach = engine_segment.Segment.attach_index
                m.setattr(engine_segment.Segment, "attach_index", attach.__wrapped__)
                m.setattr(FaissHnswIndex, "build", FaissHnswIndex.build.__wrapped__)
            col = _collection(db, name)
            for part in range(3):  # three segments
                col.insert(_records(_vectors(120, 10 + part), f"p{part}-"))
                col.flush()
            _segments(col)
        return col

    shared, own = build("shared", True), build("own", False)
    assert all(isinstance(s.vectors.base, _lite_memory._GraphVectors) for s in _segments(shared))
    assert not any(isinstance(s.vectors.base, _lite_memory._GraphVectors) for s in _segments(own))
    queries = [q.tolist() for q in _vectors(10, 99)]
    for expr in (None, 'language == "fr"'):
        for fields in (["id"], ["vec", "n", "meta"]):
            args = dict(top_k=10, expr=expr, output_fields=fields, search_params={"ef": 32})
            assert shared.search(queries, **args) == own.search(queries, **args)


def test_a_reopened_collection_shares_the_graph_it_loads(tmp_path):
    vectors = _vectors(200, 5)
    db = MilvusLite(str(tmp_path / "engine"))
    col = _collection(db, "docs")
    col.insert(_records(vectors, "a"))
    col.flush()
    _segments(col)
    db.close()

    db = MilvusLite(str(tmp_path / "engine"))
    try:
        col = db.get_collection("docs")
        col.load()
        (seg,) = _segments(col)
        assert isinstance(seg.vectors.base, _lite_memory._GraphVectors)
        assert np.array_equal(seg.vectors, vectors)
        assert col.get(["a3"], output_fields=["vec"])[0]["vec"] == vectors[3].tolist()
    finally:
        db.close()


def test_cosine_graphs_keep_the_segments_own_vectors(db):
    col = _collection(db, "docs", metric="COSINE")
    raw = _vectors(50, 6) * 3.0  # COSINE graphs store normalised copies: not the stored values
    col.insert(_records(raw, "a"))
    col.flush()
    (seg,) = _segments(col)
    assert "vec" in seg.indexes
    assert not isinstance(seg.vectors.base, _lite_memory._GraphVectors)
    assert _lite_memory.shared_vectors(seg.indexes["vec"]) is None
    assert np.array_equal(seg.vectors, raw)
