"""The Milvus Lite keyword (BM25) search patch returns exactly what the unpatched engine returns.

Random corpora over a small Zipf vocabulary (many ties, common and rare terms) spread over several
sealed segments and a memtable, with upserts across them, flushed and unflushed deletes and
re-inserts; every query runs through the patched engine and through the engine's own
``_search_sparse``, and the results (ids, order, scores, entities) must be equal. A numpy BM25
oracle checks the scores of a single segment.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

milvus_lite = pytest.importorskip("milvus_lite")
from milvus_lite import CollectionSchema, DataType, FieldSchema, Function, FunctionType, MilvusLite  # noqa: E402
from milvus_lite.engine import collection as engine_collection  # noqa: E402

from lookalike.engines.lite import patches  # noqa: E402
from lookalike.engines.lite.patches import sparse as lite_sparse  # noqa: E402

pytestmark = pytest.mark.skipif(
    not patches.apply(), reason=f"tests of the engine patches, not applied: {patches.describe()['detail']}"
)

LANGS = ("en", "fr", "de")
FILTERS = (None, 'lang == "fr"', 'lang in ["en", "de"] and n >= 150')
K1, B = 1.2, 0.75


def _schema(dynamic: bool = False) -> CollectionSchema:
    return CollectionSchema(
        fields=[
            FieldSchema(name="id", dtype=DataType.VARCHAR, is_primary=True, max_length=32),
            FieldSchema(name="vec", dtype=DataType.FLOAT_VECTOR, dim=2),
            FieldSchema(name="text", dtype=DataType.VARCHAR, max_length=2000, enable_analyzer=True),
            FieldSchema(name="sparse", dtype=DataType.SPARSE_FLOAT_VECTOR),
            FieldSchema(name="lang", dtype=DataType.VARCHAR, max_length=4),
            FieldSchema(name="n", dtype=DataType.INT64),
        ],
        functions=[Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                            output_field_names=["sparse"])],
        enable_dynamic_field=dynamic,
    )


def _text(rng: np.random.Generator, vocabulary: int) -> str:
    # A Zipf vocabulary of a few hundred words: common words in most texts, ties everywhere.
    words = np.minimum(rng.zipf(1.3, size=int(rng.integers(0, 25))), vocabulary)
    return " ".join(f"w{w}" for w in words)


def _records(rng: np.random.Generator, pks: list[str], start: int, vocabulary: int = 300) -> list[dict]:
    return [{"id": pk, "vec": [1.0, 0.0], "text": _text(rng, vocabulary), "lang": LANGS[(start + i) % 3],
             "n": start + i} for i, pk in enumerate(pks)]


def _open(path, seed: int, dynamic: bool = False):
    db = MilvusLite(str(path))
    col = db.create_collection("docs", _schema(dynamic))
    col.create_index("vec", {"index_type": "FLAT", "metric_type": "IP"})
    col.create_index("sparse", {"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "BM25",
                                "params": {"bm25_k1": K1, "bm25_b": B}})
    col.load()
    return db, col, np.random.default_rng(seed)


@pytest.fixture(scope="module", params=[0, 1])
def engine(request, tmp_path_factory):
    """Three segments plus memtable rows, upserts across them and both kinds of tombstone."""
    db, col, rng = _open(tmp_path_factory.mktemp("sparse"), request.param)
    col.insert(_records(rng, [f"a{i}" for i in range(300)], 0))
    col.flush()
    col.upsert(_records(rng, [f"a{i}" for i in range(0, 80)], 300))  # newer versions in segment 2
    col.insert(_records(rng, [f"b{i}" for i in range(200)], 380))
    col.delete([f"a{i}" for i in range(80, 110)])
    col.flush()
    col.upsert(_records(rng, [f"a{i}" for i in range(0, 25)], 580))  # a third version
    col.insert(_records(rng, [f"c{i}" for i in range(150)], 605))
    col.flush()
    # Unflushed: memtable rows superseding segment rows, memtable tombstones, re-inserts.
    col.upsert(_records(rng, [f"b{i}" for i in range(0, 40)], 755))
    col.insert(_records(rng, [f"d{i}" for i in range(60)], 795))
    col.delete([f"b{i}" for i in range(40, 60)] + [f"c{i}" for i in range(0, 12)] + ["d0", "d1"])
    col.upsert(_records(rng, ["c0", "c1", "a90"], 855))
    yield col, rng
    db.close()


def _both(col, monkeypatch, queries: list[str], **kwargs):
    fast = col.search(queries, anns_field="sparse", metric_type="BM25", **kwargs)
    with monkeypatch.context() as m:
        m.setattr(engine_collection.Collection, "_search_sparse",
                  engine_collection.Collection._search_sparse.__wrapped__)
        slow = col.search(queries, anns_field="sparse", metric_type="BM25", **kwargs)
    return fast, slow


def test_the_sparse_patch_wraps_the_engine_once():
    assert hasattr(engine_collection.Collection._search_sparse, "__wrapped__")
    assert not hasattr(engine_collection.Collection._search_sparse.__wrapped__, "__wrapped__")


def test_engine_has_the_state_under_test(engine):
    col, _ = engine
    assert len([s for s in col._segment_cache.values() if s.num_rows]) >= 3
    assert col._memtable.size() > 0 and col._memtable.delete_index_snapshot()


@pytest.mark.parametrize("expr", FILTERS)
def test_same_results_as_the_unpatched_engine(engine, monkeypatch, expr):
    col, rng = engine
    queries = [_text(rng, 300) or "w1" for _ in range(25)] + ["w1", "w2 w2 w3", "w299 w1", "nothing here"]
    for top_k, fields in ((10, None), (100, ["id"]), (1000, ["lang", "n"])):
        fast, slow = _both(col, monkeypatch, queries, top_k=top_k, expr=expr, output_fields=fields)
        assert fast == slow  # ids, order, float scores and entities
    assert any(len(hits) == 10 for hits in _both(col, monkeypatch, queries, top_k=10, expr=expr)[0])


def test_partitions_and_offsets_match(engine, monkeypatch):
    col, rng = engine
    queries = [_text(rng, 50) or "w1" for _ in range(10)]
    fast, slow = _both(col, monkeypatch, queries, top_k=7, offset=5, partition_names=["_default"])
    assert fast == slow


def test_index_parameters_and_a_fresh_collection(tmp_path, monkeypatch):
    """A second seed with fresh segments (the first search builds each segment's index), then an
    index rebuilt with other k1/b: the cached postings follow the parameters."""
    db, col, rng = _open(tmp_path, 7)
    for part in range(3):
        col.insert(_records(rng, [f"p{part}x{i}" for i in range(120)], 120 * part, vocabulary=40))
        col.flush()
    queries = [_text(rng, 40) or "w1" for _ in range(20)]
    fast, slow = _both(col, monkeypatch, queries, top_k=50)
    assert fast == slow
    col.release()
    col.drop_index("sparse")
    col.create_index("sparse", {"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "BM25",
                                "params": {"bm25_k1": 2.0, "bm25_b": 0.3}})
    col.load()
    again, slow = _both(col, monkeypatch, queries, top_k=50)
    assert again == slow and again != fast
    db.close()


def test_scores_match_a_numpy_bm25_oracle(tmp_path):
    """One segment, no deletes: score = Σ idf · tf(k1 + 1) / (tf + k1(1 − b + b·dl/avgdl)), idf =
    ln((N − df + 0.5)/(df + 0.5) + 1), over the analyser's tokens."""
    db, col, rng = _open(tmp_path, 3)
    records = _records(rng, [f"r{i}" for i in range(200)], 0, vocabulary=60)
    col.insert(records)
    col.flush()
    tokens = [r["text"].split() for r in records]
    n, avgdl = len(tokens), sum(map(len, tokens)) / len(tokens)
    for query in ("w1", "w2 w5", "w3 w3 w40"):
        terms = query.split()
        scores = np.zeros(n)
        for term in set(terms):
            df = sum(term in t for t in tokens)
            idf = math.log((n - df + 0.5) / (df + 0.5) + 1.0)
            for d, doc in enumerate(tokens):
                tf = doc.count(term)
                if tf:
                    scores[d] += terms.count(term) * idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * len(doc) / avgdl))
        hits = col.search([query], top_k=20, anns_field="sparse", metric_type="BM25")[0]
        expected = np.sort(scores[scores > 0])[::-1][:20]
        np.testing.assert_allclose([-h["distance"] for h in hits], expected, rtol=1e-5)
        for h in hits:
            assert -h["distance"] == pytest.approx(scores[int(h["id"][1:])], rel=1e-5)
    db.close()


def test_postings_are_cached_in_the_segment_and_released_with_it(engine):
    col, _ = engine
    col.search(["w1"], anns_field="sparse", metric_type="BM25", top_k=3)
    segments = [s for s in col._segment_cache.values() if s.num_rows]
    cached = [s.sparse_indexes.get("sparse") for s in segments]
    assert all(isinstance(c, lite_sparse.SegmentPostings) for c in cached)
    col.search(["w2"], anns_field="sparse", metric_type="BM25", top_k=3)
    assert all(s.sparse_indexes["sparse"] is c for s, c in zip(segments, cached, strict=True))


def test_dynamic_fields_are_projected_as_the_engine_does(tmp_path, monkeypatch):
    db, col, rng = _open(tmp_path, 5, dynamic=True)
    records = _records(rng, [f"y{i}" for i in range(80)], 0, vocabulary=30)
    col.insert([{**r, **({"extra": i, "tag": "x"} if i % 2 else {})} for i, r in enumerate(records)])
    col.flush()
    col.insert([{**r, "extra": -1} for r in _records(rng, [f"z{i}" for i in range(20)], 80, vocabulary=30)])
    queries = [_text(rng, 30) or "w1" for _ in range(10)]
    for fields in (None, ["*"], ["extra"], ["lang", "tag"], ["$meta"]):
        fast, slow = _both(col, monkeypatch, queries, top_k=30, output_fields=fields)
        assert fast == slow
    assert any("extra" in h["entity"] for hits in fast for h in hits)
    db.close()
