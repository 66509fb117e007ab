"""No value the validation accepts can poison a collection, and every value it refuses is named.

A stored document, however extreme, may only take its own place in a query's results: the
ordinary documents keep their order and their scores. Checked on both engines with an exact
(FLAT) index, against the same queries before the extreme documents were added.
"""

from __future__ import annotations

import numpy as np
import pytest

from lookalike import InvalidInputError
from lookalike.documents import FLOAT32_MAX, MAX_VECTOR_NORM, MIN_COSINE_NORM, as_vector, vector_norm

DIM = 8
K = 10
ORDINARY = 200


def _largest_float32(limit: float, scale: float = 1.0) -> np.float32:
    """The largest float32 c with c * scale <= limit (so a vector built of c stays in bounds)."""
    c = np.float32(limit / scale)
    while float(c) * scale > limit:
        c = np.nextafter(c, np.float32(0))
    return c


def extreme_vectors(dim: int = DIM, metric: str = "IP") -> dict[str, np.ndarray]:
    """The most extreme vectors the validation accepts with normalize=False: the norm bound itself
    (spread out, on one axis, mixed signs), tiny and subnormal components, and zero; for COSINE,
    whose engines divide by the norm, the smallest norm accepted there instead of the last three."""
    even = _largest_float32(MAX_VECTOR_NORM, np.sqrt(dim))
    while vector_norm(np.full(dim, even, np.float32)) > MAX_VECTOR_NORM:
        even = np.nextafter(even, np.float32(0))
    spike = _largest_float32(MAX_VECTOR_NORM)
    signs = np.where(np.arange(dim) % 2, -1, 1).astype(np.float32)
    smallest = np.float32(np.finfo(np.float32).smallest_subnormal)
    vectors = {
        "x_bound": np.full(dim, even, np.float32),
        "x_bound_negative": np.full(dim, -even, np.float32),
        "x_bound_mixed": signs * even,
        "x_spike": np.eye(dim, dtype=np.float32)[0] * spike,
        "x_spike_and_tiny": np.r_[np.float32(-spike), np.full(dim - 1, 1e-30, np.float32)].astype(np.float32),
        "x_tiny": np.full(dim, 1e-30, np.float32),
        "x_tiny_mixed": signs * np.float32(1e-30),
        "x_subnormal": np.full(dim, smallest, np.float32),
        "x_zero": np.zeros(dim, np.float32),
    }
    if metric == "COSINE":
        small = np.float32(MIN_COSINE_NORM * 1.001 / np.sqrt(dim))
        for name in ("x_tiny", "x_tiny_mixed", "x_subnormal", "x_zero"):
            del vectors[name]
        vectors["x_small"] = np.full(dim, small, np.float32)
        vectors["x_small_mixed"] = signs * small
        vectors["x_small_spike"] = np.eye(dim, dtype=np.float32)[1] * np.float32(MIN_COSINE_NORM * 1.001)
    for name, vec in vectors.items():
        assert (MIN_COSINE_NORM if metric == "COSINE" else 0.0) <= vector_norm(vec) <= MAX_VECTOR_NORM, name
    return vectors


def _ordinary(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def _ranked(col, queries: np.ndarray, limit: int) -> list[list[tuple[str, float]]]:
    return [[(hit["id"], hit["distance"]) for hit in hits] for hits in col.similar_batch(queries, limit=limit)]


@pytest.mark.parametrize("metric", ["IP", "L2", "COSINE"])
def test_extreme_documents_take_only_their_own_place(client, name, metric):
    col = client.create_collection(name, indexes={"vec": {"index_type": "FLAT", "metric_type": metric}}, dim=DIM)
    vectors = _ordinary(ORDINARY, seed=1)
    col.index([{"id": f"d{i}", "vec": v} for i, v in enumerate(vectors)], normalize=False)
    queries = _ordinary(20, seed=2)
    before = _ranked(col, queries, K)
    assert all(len(hits) == K for hits in before)

    extremes = extreme_vectors(metric=metric)
    assert col.index([{"id": k, "vec": v} for k, v in extremes.items()], normalize=False) == len(extremes)
    assert col.count() == ORDINARY + len(extremes)
    after = _ranked(col, queries, K + len(extremes))

    higher_is_closer = metric != "L2"
    for old, new in zip(before, after, strict=True):
        assert len(new) == K + len(extremes)  # no hit lost: nothing overflowed into the padding
        distances = [d for _, d in new]
        assert all(np.isfinite(distances))
        assert distances == sorted(distances, reverse=higher_is_closer)
        # The ordinary documents: same ids, same order, same scores, around the extreme ones.
        ordinary = [(i, d) for i, d in new if not i.startswith("x_")][:K]
        assert [i for i, _ in ordinary] == [i for i, _ in old]
        np.testing.assert_allclose([d for _, d in ordinary], [d for _, d in old], rtol=1e-5, atol=1e-6)

    # The extreme documents read back exactly, and can be queried by id themselves.
    stored = {doc["id"]: doc["vec"] for doc in col.get(list(extremes), ["vec"])}
    for key, vec in extremes.items():
        np.testing.assert_array_equal(np.asarray(stored[key], np.float32), vec)
    hits = col.similar(ids=["x_bound"], limit=K)
    assert len(hits) == K and all(np.isfinite(h["distance"]) for h in hits)


REFUSED = [
    ("huge components", [3e38] * DIM, "has norm 8.485e+38, over the limit 1e+14"),
    ("norm just over the bound", [float(np.nextafter(MAX_VECTOR_NORM, np.inf))] + [0.0] * (DIM - 1),
     "has norm 1.0000000000000002e+14, over the limit 1e+14"),
    ("beyond float32", [1e39] + [0.0] * (DIM - 1),
     "has a component beyond the float32 range ±3.403e+38 (at position 0: 1e+39)"),
    ("infinity", [0.0] * (DIM - 1) + [float("inf")], "contains NaN or infinity (at position 7: inf)"),
    ("NaN", [float("nan")] * DIM, "contains NaN or infinity (at position 0: nan)"),
]


def test_refused_vectors_name_the_document_and_store_nothing(client, name):
    col = client.create_collection(name, indexes={"vec": {"index_type": "FLAT", "metric_type": "IP"}}, dim=DIM)
    col.index([{"id": f"d{i}", "vec": v} for i, v in enumerate(_ordinary(5, seed=3))], flush=False)
    good = [{"id": f"new{i}", "vec": v} for i, v in enumerate(_ordinary(3, seed=4))]
    for case, vec, message in REFUSED:
        with pytest.raises(InvalidInputError) as raised:
            col.index([*good, {"id": "bad", "vec": vec}], normalize=False, flush=False)
        assert f"document #3 (id 'bad'): 'vec' {message}" in str(raised.value), case
        # The query vectors are held to the same rules, named by their position.
        with pytest.raises(InvalidInputError) as raised:
            col.similar(vectors=vec)
        assert f"vectors[0] {message}" in str(raised.value), case
        with pytest.raises(InvalidInputError) as raised:
            col.similar_batch([_ordinary(1, seed=5)[0], vec])
        assert f"vectors[1] {message}" in str(raised.value), case
    assert col.count() == 5
    assert col.get([d["id"] for d in good]) == []


def test_a_cosine_collection_refuses_norms_too_small_to_divide_by(client, name):
    col = client.create_collection(name, indexes={"vec": {"index_type": "FLAT", "metric_type": "COSINE"}}, dim=DIM)
    for vec in ([0.0] * DIM, [1e-30] * DIM, [1e-16] + [0.0] * (DIM - 1)):
        with pytest.raises(InvalidInputError, match=r"document #0 \(id 'small'\): 'vec' has norm .*, under the "
                                                    r"limit 1e-15 of a COSINE collection"):
            col.index([{"id": "small", "vec": vec}], normalize=False, flush=False)
        with pytest.raises(InvalidInputError, match=r"vectors\[0\] has norm .*, under the limit 1e-15"):
            col.similar(vectors=vec)
    assert col.count() == 0
    col.index([{"id": "small", "vec": [1e-30] * DIM}], flush=False)  # normalize=True rescues its direction
    np.testing.assert_allclose(col.get(["small"], ["vec"])[0]["vec"], [DIM**-0.5] * DIM, rtol=1e-6)


def test_a_huge_vector_is_normalised_not_zeroed(client, name):
    """With normalize=True the norm is computed without overflow: [3e38] * 8 becomes a unit vector."""
    col = client.create_collection(name, indexes={"vec": {"index_type": "FLAT", "metric_type": "IP"}}, dim=DIM)
    col.index([{"id": "huge", "vec": [3e38] * DIM}, {"id": "tiny", "vec": [-1e-44] * DIM}], flush=False)
    stored = {doc["id"]: doc["vec"] for doc in col.get(["huge", "tiny"], ["vec"])}
    np.testing.assert_allclose(stored["huge"], [DIM**-0.5] * DIM, rtol=1e-6)
    np.testing.assert_allclose(stored["tiny"], [-(DIM**-0.5)] * DIM, rtol=1e-6)
    assert col.similar(vectors=[1.0] * DIM, limit=1)[0]["id"] == "huge"


def test_norms_neither_overflow_nor_underflow():
    assert vector_norm(np.full(4, 3e38, np.float32)) == pytest.approx(6e38, rel=1e-6)
    assert vector_norm(np.full(4, 1e-30, np.float32)) == pytest.approx(2e-30, rel=1e-6)
    assert vector_norm(np.zeros(4)) == 0.0
    assert FLOAT32_MAX == pytest.approx(3.4028235e38)
    at_bound = extreme_vectors(4)["x_spike"]
    np.testing.assert_array_equal(as_vector(at_bound, 4, "v", normalize=False), at_bound)
    with pytest.raises(InvalidInputError, match="over the limit"):
        as_vector(np.nextafter(at_bound, np.float32(np.inf)), 4, "v", normalize=False)


def test_why_the_bound_milvus_lite_drops_scores_over_1e30():
    """Milvus Lite's FAISS indexes take a score >= 1e30 for padding and drop the hit: two vectors
    of norm 1e16 would lose each other; at the bound (1e14, scores <= 1e28) nothing is dropped."""
    from milvus_lite.index.faiss_hnsw import FaissHnswIndex

    ordinary = _ordinary(300, seed=6)

    def top_hits(norm: float) -> list[int]:
        extreme = np.full((1, DIM), norm / np.sqrt(DIM), np.float32)
        index = FaissHnswIndex.build(np.vstack([ordinary, extreme]), "IP", {"M": 16})
        ids, _ = index.search(extreme, K, params={"ef": 64})
        return [int(i) for i in ids[0] if i >= 0]

    at_bound = top_hits(MAX_VECTOR_NORM * 0.999)
    assert len(at_bound) == K and at_bound[0] == len(ordinary)  # the vector finds itself first
    over = top_hits(1e16)
    assert len(over) == K - 1 and len(ordinary) not in over  # its own hit (score 1e32) vanished
