"""Recommendations (README, "Recommendations"): every stage against a numpy oracle, rank for rank,
on small exact data (FLAT index) on both engines; the bad inputs; batch equals single."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lookalike import InvalidInputError, SimilarRequest, history_weights

N, DIM, GROUPS = 200, 8, 7
ORIGIN = 1_000_000
EXACT = 256  # candidates ≥ the collection's size: every stage is exact
FIELDS = [{"name": "grp", "type": "varchar", "max_length": 8}, {"name": "ts", "type": "int64"},
          {"name": "score", "type": "double"}]


def _docs(seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"d{i:03d}", "vec": rng.normal(size=DIM).tolist(), "grp": f"g{i % GROUPS}",
             "ts": ORIGIN - int(rng.integers(0, 1000)), "score": float(i)} for i in range(N)]


@pytest.fixture(scope="module")
def data(client, backend):
    """One IP collection per backend for the module, and its stored vectors for the oracle."""
    name = f"rec_{backend}_{id(client) % 10_000}"
    client.drop_collection(name)
    col = client.create_collection(name, FIELDS, {"vec": {"index_type": "FLAT", "metric_type": "IP"}}, dim=DIM)
    col.index(_docs())
    col.engine.wait_for_index(name)
    rows = sorted(col.iterate(output_fields=["id", "vec", "grp", "ts"]), key=lambda r: r["id"])
    yield col, Oracle(rows)
    client.drop_collection(name)


class Oracle:
    """The documented formulas in plain numpy over every stored item."""

    def __init__(self, rows: list[dict]) -> None:
        self.ids = [r["id"] for r in rows]
        self.pos = {i: k for k, i in enumerate(self.ids)}
        self.V = np.asarray([r["vec"] for r in rows], dtype=np.float64)
        self.grp = [r["grp"] for r in rows]
        self.ts = np.asarray([r["ts"] for r in rows], dtype=np.float64)

    def vec(self, ids):
        return self.V[[self.pos[i] for i in ids]]

    @staticmethod
    def unit(v):
        return v / np.linalg.norm(v)

    def rank(self, scores, exclude=(), keep=None):
        order = [k for k in np.argsort(-scores, kind="stable") if self.ids[k] not in set(exclude)]
        return [k for k in order if keep is None or keep(k)]

    def hits(self, order, scores, limit, offset=0):
        return [(self.ids[k], float(scores[k])) for k in order[offset:offset + limit]]

    def decay(self, function, scale, decay=0.5, offset=0.0, origin=ORIGIN):
        d = np.maximum(0.0, np.abs(self.ts - origin) - offset)
        if function == "exp":
            return np.exp(math.log(decay) / scale * d)
        if function == "gauss":
            return np.exp(math.log(decay) * d**2 / scale**2)
        s = scale / (1 - decay)
        return np.maximum(0.0, (s - d) / s)

    def groups(self, order, size, limit, offset=0):
        count, members = {}, {}
        for k in order:
            g = self.grp[k]
            if count.get(g, 0) < size:
                count[g] = count.get(g, 0) + 1
                members.setdefault(g, []).append(k)
        return [k for g in list(members)[offset:offset + limit] for k in members[g]]

    def mmr(self, order, scores, lam, steps):
        chosen, left = [], list(order)
        while left and len(chosen) < steps:
            def value(k):
                penalty = max((self.V[k] @ self.V[s] for s in chosen), default=None)
                return (1 - lam) * scores[k] - (lam * penalty if penalty is not None else 0.0)
            best = max(left, key=lambda k: (value(k), -left.index(k)))
            chosen.append(best)
            left.remove(best)
        return chosen


def check(got, expected, tol=1e-4):
    assert [h["id"] for h in got] == [i for i, _ in expected]
    assert [h["distance"] for h in got] == pytest.approx([s for _, s in expected], abs=tol)


QUERY = ["d010", "d020", "d030"]


def test_average_vector_with_negatives(data):
    col, o = data
    q = o.unit(2 * o.vec(QUERY).mean(0) - o.vec(["d040", "d050"]).mean(0))
    s = o.V @ q
    got = col.similar(ids=QUERY, negative_ids=["d040", "d050"], limit=12, exclude_ids=True)
    check(got, o.hits(o.rank(s, QUERY + ["d040", "d050"]), s, 12))


def test_weights(data):
    col, o = data
    w = np.array([3.0, 1.0, 0.5])
    q = o.unit((w[:, None] * o.vec(QUERY)).sum(0) / w.sum())
    s = o.V @ q
    check(col.similar(ids=QUERY, weights=w.tolist(), limit=10), o.hits(o.rank(s), s, 10))
    # a zero weight drops an example: the same as leaving it out
    a = col.similar(ids=QUERY, weights=[1, 1, 0], limit=5)
    b = col.similar(ids=QUERY[:2], limit=5)
    assert [h["id"] for h in a] == [h["id"] for h in b]


def test_history_weights_halve_per_half_life():
    ids, weights = history_weights([("a", 100.0), ("b", 90.0), ("a", 80.0)], half_life=10, now=100)
    assert ids == ["a", "b"]
    assert weights == pytest.approx([1.0 + 0.25, 0.5])


def test_best_score(data):
    col, o = data
    pos, neg = ["d001", "d002"], ["d003"]
    p = (o.V @ o.vec(pos).T).max(1)
    n = (o.V @ o.vec(neg).T).max(1)
    s = np.where(p > n, 1 / (1 + np.exp(-p)), -1 / (1 + np.exp(-n)))
    got = col.similar(ids=pos, negative_ids=neg, strategy="best_score", candidates=EXACT, limit=15,
                      exclude_ids=True, explain=True)
    check(got, o.hits(o.rank(s, pos + neg), s, 15))
    near = (o.V @ o.vec(pos).T).argmax(1)
    assert [h["explain"]["nearest_positive"] for h in got] == [pos[near[o.pos[h["id"]]]] for h in got]
    assert all(h["explain"]["nearest_negative"] == "d003" for h in got)
    # negatives alone: the items least like them, within the candidates
    alone = col.similar(negative_ids=neg, strategy="best_score", candidates=EXACT, limit=5)
    s_alone = -1 / (1 + np.exp(-n))
    check(alone, o.hits(o.rank(s_alone), s_alone, 5))


def _best_score_union(V, positives, negatives, examples, fetch, similarity, exclude=()):
    """best_score by its definition: the union of each example's ``fetch`` nearest neighbours
    (positives' first, each id once), scored and ranked (a stable sort: the union's order on ties)."""
    union: list[int] = []
    for e in examples:
        near = [k for k in np.argsort(-similarity(V, e[None, :])[:, 0], kind="stable") if k not in exclude][:fetch]
        union += [k for k in near if k not in union]
    sims = similarity(V[union], np.concatenate([positives, negatives]))
    p, n = sims[:, : len(positives)].max(1), sims[:, len(positives):].max(1)
    scores = np.where(p > n, 1 / (1 + np.exp(-p)), -1 / (1 + np.exp(-n)))
    return [(union[k], float(scores[k])) for k in np.argsort(-scores, kind="stable")]


def _counting_queries(col, monkeypatch) -> list[int]:
    """The number of query vectors in each of ``col``'s engine searches from now on."""
    counts: list[int] = []
    search_hits = col.engine.search_hits

    def counted(*args, **kwargs):
        counts.append(len(kwargs["data"]))
        return search_hits(*args, **kwargs)

    monkeypatch.setattr(col.engine, "search_hits", counted)
    return counts


@pytest.mark.parametrize("metric", ["IP", "COSINE", "L2"])
def test_best_score_union_of_neighbours(client, metric, monkeypatch):
    """Candidates smaller than the collection: the union of each example's neighbours, rank for
    rank, whether the positives' neighbours settle the page (the negatives' search skipped) or not."""
    name = f"bs_{metric}_{id(client) % 10_000}"
    client.drop_collection(name)
    col = client.create_collection(name, [], {"vec": {"index_type": "FLAT", "metric_type": metric}}, dim=DIM)
    rng = np.random.default_rng(11)
    V = rng.normal(size=(N, DIM)) * rng.uniform(0.5, 2.0, size=(N, 1))  # norms differ: L2 and IP see them
    col.index([{"id": f"d{i:03d}", "vec": V[i].tolist()} for i in range(N)], normalize=False)
    col.engine.wait_for_index(name)
    V = V.astype(np.float32).astype(np.float64)

    def similarity(a, b):
        if metric == "L2":
            return -((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        if metric == "COSINE":
            a = a / np.linalg.norm(a, axis=1, keepdims=True)
            b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return a @ b.T

    def unit(v):  # how the engine is asked: IP and COSINE search with the unit vector
        return v if metric == "L2" else v / np.linalg.norm(v)

    counts = _counting_queries(col, monkeypatch)
    two = np.stack([3.0 * V[1], 0.5 * V[2]])  # given as vectors, their norms kept (IP scores them)
    cases = [  # (positives, offset, limit, candidates, query vectors per engine search)
        # the negative is far from most of the 40 neighbours: the positives' settle the page
        (two, 0, 10, 20, [2]),
        # one positive and a page as deep as its neighbours: the last sits on the threshold
        # (nothing outside can be shown to rank below it), so the negative's are searched too
        (V[1:2], 10, 10, 20, [1, 1]),
    ]
    sign = -1.0 if metric == "L2" else 1.0
    try:
        for positives, offset, limit, candidates, searched in cases:
            counts.clear()
            got = col.similar(vectors=positives.tolist(), negative_ids=["d007"], strategy="best_score",
                              candidates=candidates, offset=offset, limit=limit, explain=True)
            examples = [unit(v) for v in positives] + [unit(V[7])]
            expected = _best_score_union(V, positives, V[[7]], examples, candidates, similarity)
            check(got, [(f"d{k:03d}", sign * score) for k, score in expected[offset:offset + limit]])
            assert counts == searched
    finally:
        client.drop_collection(name)


@pytest.mark.parametrize("function", ["exp", "gauss", "linear"])
def test_recency_decay(data, function):
    col, o = data
    q = o.unit(o.vec(["d007"])[0])
    recency = {"field": "ts", "scale": 300, "decay": 0.3, "function": function, "origin": ORIGIN, "offset": 50}
    s = (o.V @ q) * o.decay(function, 300, 0.3, 50)
    got = col.similar(ids=["d007"], recency=recency, candidates=EXACT, limit=10, explain=True)
    check(got, o.hits(o.rank(s), s, 10))
    factor = o.decay(function, 300, 0.3, 50)
    assert [h["explain"]["decay"] for h in got] == pytest.approx([factor[o.pos[h["id"]]] for h in got])


def test_mmr_diversity(data):
    col, o = data
    q = o.unit(o.vec(["d011"])[0])
    s = o.V @ q
    for lam in (0.0, 0.3, 1.0):
        order = o.mmr(o.rank(s), s, lam, 8)
        got = col.similar(ids=["d011"], diversity=lam, candidates=EXACT, limit=8, explain=True)
        check(got, [(o.ids[k], float(s[k])) for k in order])  # distance stays the item's score
        assert [h["explain"]["mmr_step"] for h in got] == list(range(8))
    plain = col.similar(ids=["d011"], limit=8)
    assert [h["id"] for h in col.similar(ids=["d011"], diversity=0, limit=8)] == [h["id"] for h in plain]


@pytest.mark.parametrize("metric", ["COSINE", "L2"])
def test_mmr_diversity_by_the_metric(client, metric):
    """MMR's sim is the metric's score between two vectors: the cosine, minus the squared
    distance (norms differ, so neither is the inner product)."""
    name = f"mmr_{metric}_{id(client) % 10_000}"
    client.drop_collection(name)
    col = client.create_collection(name, [], {"vec": {"index_type": "FLAT", "metric_type": metric}}, dim=DIM)
    rng = np.random.default_rng(5)
    V = rng.normal(size=(N, DIM)) * rng.uniform(0.5, 2.0, size=(N, 1))
    col.index([{"id": f"d{i:03d}", "vec": V[i].tolist()} for i in range(N)], normalize=False)
    col.engine.wait_for_index(name)
    V = V.astype(np.float32).astype(np.float64)
    if metric == "COSINE":
        U = V / np.linalg.norm(V, axis=1, keepdims=True)
        sim = U @ U.T
    else:
        sim = -((V[:, None, :] - V[None, :, :]) ** 2).sum(-1)
    try:
        for lam in (0.3, 0.8):
            score = sim[:, 4]  # the query d004 itself, as ids=["d004"] searches it
            left, chosen = list(np.argsort(-score, kind="stable")), []
            while len(chosen) < 8:
                value = [(1 - lam) * score[k] - lam * max((sim[k, c] for c in chosen), default=0.0) for k in left]
                chosen.append(left.pop(int(np.argmax(value))))
            got = col.similar(ids=["d004"], diversity=lam, candidates=EXACT, limit=8)
            sign = -1.0 if metric == "L2" else 1.0  # an L2 hit's distance is minus its score
            check(got, [(f"d{k:03d}", sign * score[k]) for k in chosen], tol=1e-3)
    finally:
        client.drop_collection(name)


def test_min_score_and_offset(data):
    col, o = data
    s = o.V @ o.unit(o.vec(["d015"])[0])
    order = [k for k in o.rank(s) if s[k] >= 0.5]
    check(col.similar(ids=["d015"], min_score=0.5, limit=50), o.hits(order, s, 50))
    pages = [col.similar(ids=["d015"], limit=5, offset=off) for off in (0, 5, 10)]
    check([h for p in pages for h in p], o.hits(o.rank(s), s, 15))


def test_group_caps_and_group_paging(data):
    col, o = data
    s = o.V @ o.unit(o.vec(["d016"])[0])
    got = col.similar(ids=["d016"], group_by="grp", group_size=2, limit=3, candidates=EXACT,
                      output_fields=["grp"], explain=True)
    check(got, [(o.ids[k], float(s[k])) for k in o.groups(o.rank(s), 2, 3)])
    assert [h["explain"]["group"] for h in got] == [h["grp"] for h in got]
    pages = [col.similar(ids=["d016"], group_by="grp", group_size=2, limit=2, offset=off, candidates=EXACT)
             for off in (0, 2, 4, 6)]
    whole = [(o.ids[k], float(s[k])) for k in o.groups(o.rank(s), 2, GROUPS)]
    check([h for p in pages for h in p], whole)  # pages of groups: no group twice, none skipped


def test_composition_in_order(data):
    """filter and exclusions → candidates → recency → min_score → group caps → MMR → offset/limit."""
    col, o = data
    excluded = [f"d{i:03d}" for i in range(0, N, 2)]  # 100 ids: past the expression, over-fetched
    q = o.unit(o.vec(["d021"])[0])
    factor = o.decay("gauss", 400, 0.5, 0)
    s = (o.V @ q) * factor
    keep = [k for k in o.rank(s, excluded) if s[k] >= -0.2]
    capped = o.groups(keep, 1, GROUPS)
    picked = o.mmr(capped, s, 0.4, 4)
    expected = [(o.ids[k], float(s[k])) for k in picked[1:4]]
    assert len(expected) == 3 and len(keep) < N // 2  # every stage had something to do
    got = col.similar(ids=["d021"], exclude_ids=excluded, recency={"field": "ts", "scale": 400, "function": "gauss",
                      "origin": ORIGIN}, min_score=-0.2, group_by="grp", diversity=0.4, offset=1, limit=3,
                      candidates=EXACT, explain=True)
    check(got, expected)
    assert not set(excluded) & {h["id"] for h in got}


def test_long_exclusion_list_leaves_them_out(data, monkeypatch):
    col, o = data
    s = o.V @ o.unit(o.vec(["d100"])[0])
    excluded = [o.ids[k] for k in o.rank(s)[:150]]  # the 150 nearest, more than an over-fetch round
    searches = []
    search_hits = col.engine.search_hits

    def recorded(*args, **kwargs):
        searches.append(len(kwargs["skip_ids"]))
        return search_hits(*args, **kwargs)

    monkeypatch.setattr(col.engine, "search_hits", recorded)
    check(col.similar(ids=["d100"], exclude_ids=excluded, limit=20), o.hits(o.rank(s, excluded), s, 20))
    # the first round's 36 hits are all excluded: Milvus Lite then masks the whole list in one
    # more search; the server, which cannot, over-fetches in rounds
    assert searches == [0, 150] if col.engine.masks_ids else (len(searches) > 2 and not any(searches))


@pytest.mark.parametrize("length", [3, 150], ids=["in-the-expression", "dropped-after"])
def test_an_exclusion_list_takes_any_string(data, length):
    """A string no id can be ("" or 600 characters) leaves nothing out, as an unstored id does."""
    col, o = data
    s = o.V @ o.unit(o.vec(["d100"])[0])
    near = [o.ids[k] for k in o.rank(s)[: length - 2]]
    got = col.similar(ids=["d100"], exclude_ids=["", *near, "x" * 600], limit=10)
    check(got, o.hits(o.rank(s, near), s, 10))


def test_batch_equals_single(data, client):
    col, o = data
    requests = [
        {"ids": ["d001"], "limit": 5},
        {"ids": ["d002"], "limit": 5},  # shares the engine call of the first
        SimilarRequest(ids=["d003"], limit=4, group_by="grp", diversity=0.2),
        {"vectors": o.V[9].tolist(), "limit": 3, "exclude_ids": [f"d{i:03d}" for i in range(90)]},
        {"ids": ["d004"], "negative_ids": ["d005"], "strategy": "best_score", "limit": 3},
    ]
    batch = client.retrieve_similar_batch(col.name, requests)
    for request, hits in zip(requests, batch, strict=True):
        single = col.similar(request)
        assert [h["id"] for h in hits] == [h["id"] for h in single]
        assert [h["distance"] for h in hits] == pytest.approx([h["distance"] for h in single], abs=1e-5)
    # the vectors form: one request per vector, with shared parameters
    assert [[h["id"] for h in hits] for hits in col.similar_batch(o.V[:2], limit=3)] == [
        [h["id"] for h in col.similar(vectors=v, limit=3)] for v in o.V[:2]]


# -- bad input (lite is enough) -----------------------------------------------------------


@pytest.mark.parametrize(("parameters", "named"), [
    ({"diversity": 1.5}, "diversity"),
    ({"diversity": -0.1}, "diversity"),
    ({"group_size": 0, "group_by": "grp"}, "group_size"),
    ({"group_by": "nope"}, "group_by"),
    ({"group_by": "score"}, "group_by"),  # a double cannot group
    ({"recency": {"field": "grp", "scale": 1}}, "recency['field']"),
    ({"recency": {"field": "nope", "scale": 1}}, "recency['field']"),
    ({"recency": {"field": "ts", "scale": 0}}, "recency['scale']"),
    ({"recency": {"field": "ts", "scale": 1, "decay": 1}}, "recency['decay']"),
    ({"recency": {"field": "ts", "scale": 1, "function": "step"}}, "recency['function']"),
    ({"weights": [1.0, 2.0]}, "weights"),
    ({"weights": [-1.0]}, "weights"),
    ({"weights": [0.0]}, "weights"),
    ({"weights": [float("nan")]}, "weights"),
    ({"strategy": "mean"}, "strategy"),
    ({"offset": -1}, "offset"),
    ({"offset": 16380, "limit": 10}, "offset + limit"),
    ({"candidates": 5, "limit": 10}, "candidates"),
    ({"min_score": "high"}, "min_score"),
    ({"exclude_ids": "d001"}, "exclude_ids"),
    ({"exclude_ids": ["d002", 7]}, "exclude_ids[1]: 'id' must be a string, not int"),
    ({"exclude_ids": [f"d{k:03d}" for k in range(100)] + [None]}, "exclude_ids[100]: 'id' must be a string"),
    ({"exclude_ids": [f"d{k:03d}" for k in range(100)] + [["d001"]]}, "exclude_ids[100]: 'id' must be a string"),
    ({"explain": "yes"}, "explain"),
])
def test_bad_input_names_the_parameter(data, backend, parameters, named):
    if backend != "lite":
        pytest.skip("checked before the engine: lite is enough")
    col, _ = data
    with pytest.raises(InvalidInputError) as caught:
        col.similar(**{"ids": ["d001"], **parameters})
    assert named in str(caught.value)


def test_average_vector_needs_positives(data, backend):
    if backend != "lite":
        pytest.skip("checked before the engine")
    col, _ = data
    with pytest.raises(InvalidInputError, match="average_vector"):
        col.similar(negative_ids=["d001"])


def test_l2_recency_is_refused_and_min_score_is_a_ceiling(client, backend):
    """L2: a decayed distance would favour old items, so recency is refused; min_score bounds the
    distance from above."""
    if backend != "lite":
        pytest.skip("the rule is the library's, not the engine's")
    name = "rec_l2"
    client.drop_collection(name)
    col = client.create_collection(name, FIELDS, {"vec": {"index_type": "FLAT", "metric_type": "L2"}}, dim=DIM)
    col.index(_docs()[:50], normalize=False)
    with pytest.raises(InvalidInputError, match="L2"):
        col.similar(ids=["d001"], recency={"field": "ts", "scale": 10})
    hits = col.similar(ids=["d001"], min_score=8.0, limit=50)
    allhits = col.similar(ids=["d001"], limit=50)
    assert [h["id"] for h in hits] == [h["id"] for h in allhits if h["distance"] <= 8.0]
    assert 0 < len(hits) < 50
    client.drop_collection(name)


# -- the engine's own grouping and decay (Milvus Lite 3.2.2), checked against the oracle -----------
# lookalike runs both stages itself on every engine (README, "Recommendations": why); these tests
# keep the measured reasons true: where the engine agrees with the oracle and where it does not.


def _lite_search(col, **parameters):
    """Milvus Lite's own ``Collection.search``, bypassing lookalike's stages."""
    return col.engine._reading(col.name, "search", lambda engine_col: engine_col.search(
        metric_type="IP", anns_field="vec", **parameters))


@pytest.mark.parametrize(("limit", "size", "offset"), [(3, 1, 0), (3, 2, 0), (GROUPS, 3, 0), (2, 1, 2), (2, 2, 2)])
def test_lite_grouping_search_against_the_oracle(data, backend, limit, size, offset):
    """Lite's grouping search equals the oracle, except that its ``offset`` skips hits, not groups."""
    if backend != "lite":
        pytest.skip("Milvus Lite's grouping search (a 2.3 server has none)")
    col, o = data
    q = o.unit(o.vec(["d016"])[0])
    s = o.V @ q
    expected = [o.ids[k] for k in o.groups(o.rank(s), size, limit, offset)]
    engine = [h["id"] for h in _lite_search(col, query_vectors=[q.astype(np.float32)], top_k=limit, offset=offset,
                                              output_fields=["grp"], group_by_field="grp", group_size=size)[0]]
    ours = col.similar(vectors=q.tolist(), group_by="grp", group_size=size, limit=limit, offset=offset,
                       candidates=EXACT)
    assert [h["id"] for h in ours] == expected
    if offset and size > 1:  # the engine pages hits: `limit` hits from hit `offset` of the grouped list
        flat = [o.ids[k] for k in o.groups(o.rank(s), size, GROUPS)]
        assert engine == flat[offset:offset + limit] != expected
    else:
        assert engine == expected


@pytest.mark.parametrize("function", ["exp", "gauss", "linear"])
def test_lite_decay_ranker_against_the_oracle(data, backend, function):
    """Lite's decay ranker (the function-score chain its gRPC search runs over 10 × limit hits of
    the engine's search) equals the oracle and lookalike's recency on this data."""
    if backend != "lite":
        pytest.skip("Milvus Lite's decay ranker (a 2.3 server has none)")
    from types import SimpleNamespace

    from milvus_lite.function.builder import build_hybrid_function_score_chain
    from milvus_lite.function.dataframe import DataFrame
    from milvus_lite.function.types import ID_FIELD, SCORE_FIELD

    col, o = data
    q = o.unit(o.vec(["d007"])[0])
    s = (o.V @ q) * o.decay(function, 300, 0.3, 50)
    limit = 10
    hits = _lite_search(col, query_vectors=[q.astype(np.float32)], top_k=10 * limit, output_fields=["ts"])[0]
    ranker = SimpleNamespace(name="recency", input_field_names=["ts"], output_field_names=[], params={
        "reranker": "decay", "function": function, "origin": ORIGIN, "scale": 300, "offset": 50, "decay": 0.3})
    chain = build_hybrid_function_score_chain(ranker, search_params={"limit": limit}, search_metrics=["IP"])
    ranked = chain.execute(DataFrame([[{ID_FIELD: h["id"], SCORE_FIELD: h["distance"], **h["entity"]} for h in hits]]))
    engine = [(row[ID_FIELD], row[SCORE_FIELD]) for row in ranked.chunk(0)]
    check([{"id": i, "distance": d} for i, d in engine], o.hits(o.rank(s), s, limit))
    ours = col.similar(vectors=q.tolist(), limit=limit, recency={"field": "ts", "scale": 300, "decay": 0.3,
                       "function": function, "origin": ORIGIN, "offset": 50})
    assert [h["id"] for h in ours] == [i for i, _ in engine]


@pytest.mark.slow_on_server
def test_engine_columns_read_the_newest_version(client, name):
    """What the stages read after a search (``Engine.columns``, the segments' arrays on Lite) is what
    ``get`` reads: the newest version of each id, from sealed segments and the memtable, deletes gone."""
    col = client.create_collection(name, FIELDS, {"vec": {"index_type": "FLAT", "metric_type": "IP"}}, dim=DIM)
    docs = _docs()[:50]
    col.index(docs)
    col.engine.flush(name)
    col.index([{**doc, "grp": "sealed", "ts": 1} for doc in docs[:5]])  # a newer version in a newer segment
    col.engine.flush(name)
    col.index([{**doc, "grp": "memtable", "ts": 2} for doc in docs[3:8]])  # and in the memtable
    col.delete(["d004", "d010", "d011"])
    ids = [doc["id"] for doc in docs] + ["d999"]
    got = col.columns_by_id(ids, ["grp", "ts", "vec"])
    expected = {row["id"]: row for row in col.engine.get(name, ids, ["id", "grp", "ts", "vec"])}
    assert sorted(got) == sorted(expected) and len(got) == 47
    for i, row in expected.items():
        assert (got[i]["grp"], got[i]["ts"]) == (row["grp"], row["ts"])
        assert np.asarray(got[i]["vec"]) == pytest.approx(np.asarray(row["vec"]))
    assert [got[i]["grp"] for i in ("d000", "d003", "d009")] == ["sealed", "memtable", "g2"]
    client.drop_collection(name)


@pytest.mark.slow_on_server
@pytest.mark.parametrize("metric", ["IP", "L2", "COSINE"])
def test_search_hits_equal_the_search_hits_as_dicts(client, name, metric):
    """The candidates' columns (``Engine.search_hits``: on Lite, read a segment at a time where
    the patched search placed the hits) are the hits ``search`` gives as dicts: same ids in the
    same order, same distances, same field values, with a filter, several segments, the memtable,
    newer versions and deletes."""
    fields = [*FIELDS, {"name": "meta", "type": "json"}]
    col = client.create_collection(name, fields, {"vec": {"index_type": "FLAT", "metric_type": metric}}, dim=DIM)
    docs = [{**doc, "meta": {"n": i, "tags": ["a", "b"][: i % 3]}} for i, doc in enumerate(_docs())]
    col.index(docs[:120])
    col.engine.flush(name)
    col.index(docs[120:])
    col.engine.flush(name)
    col.index([{**doc, "grp": "newer", "vec": (np.asarray(doc["vec"]) * 0.5).tolist()} for doc in docs[:10]])
    col.delete(["d011", "d150", "d005"])
    col.engine.wait_for_index(name)
    queries = [np.asarray(docs[i]["vec"], dtype=np.float32) for i in (0, 7, 130)]
    wanted = ["id", "grp", "ts", "score", "meta", "vec"]
    params = {"metric_type": metric, "params": {}}
    for expr in ("", 'grp != "g3" and ts > 999300', 'grp == "newer"'):
        call = dict(data=queries, filter=expr, limit=60, output_fields=wanted, search_params=params, anns_field="vec")
        columns = col.engine.search_hits(name, **call)
        dicts = col.engine.search(name, **call)
        assert len(columns) == len(dicts) == 3
        for got, hits in zip(columns, dicts, strict=True):
            assert hits, expr
            assert got.ids.tolist() == [h["id"] for h in hits]
            assert got.distances.tolist() == [h["distance"] for h in hits]
            for field in ("grp", "ts", "score", "meta"):
                assert list(got.fields[field]) == [h["entity"][field] for h in hits], field
            assert np.asarray(got.fields["vec"], dtype=np.float32).tolist() == \
                np.asarray([h["entity"]["vec"] for h in hits], dtype=np.float32).tolist()
            assert not {"d011", "d150", "d005"} & set(got.ids.tolist())
    client.drop_collection(name)
