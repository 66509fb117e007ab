"""Keywords and meaning together (README, "Keywords and meaning together"): full-text fields,
keyword (BM25) search, hybrid search fused by RRF or weights, each hit explained; on the embedded
engine, with the refusals of a Milvus 2.3 server."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from pymilvus import DataType, FieldSchema

from lookalike import Client, InvalidInputError
from lookalike.embedding import CallableEmbedder
from lookalike.fusion import ROUTES, Fusion, Route, fuse, normalised

DIM = 8
FIELDS = [{"name": "text", "type": "varchar", "max_length": 200, "enable_analyzer": True},
          {"name": "lang", "type": "varchar", "max_length": 4}]
FLAT = {"vec": {"index_type": "FLAT", "metric_type": "IP"}}
TOPICS = ["weather rain forecast", "football match goal", "election vote parliament", "recipe soup kitchen"]
RARE = "zx81"  # a token only one document has; its vector lies in another topic than the query's


def _docs() -> list[dict]:
    """40 short texts in four topics, each topic's vectors around its own direction; doc d37
    (topic 1, football) alone carries the rare token."""
    rng = np.random.default_rng(7)
    centres = np.eye(DIM)[:4]
    docs = []
    for i in range(40):
        topic = i % 4
        vec = centres[topic] + 0.25 * rng.normal(size=DIM)
        words = TOPICS[topic].split()
        text = f"{words[i % 3]} {words[(i + 1) % 3]} story {i}"
        if i == 37:
            text += f" {RARE}"
        docs.append({"id": f"d{i:02d}", "vec": vec.tolist(), "text": text, "lang": "en" if i % 2 else "fr"})
    return docs


QUERY = np.eye(DIM)[0] + 0.1  # near the weather topic (0), far from d37's football


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory):
    with Client(codops="ltlrt", data_dir=tmp_path_factory.mktemp("hybrid")) as client:
        yield client


@pytest.fixture(scope="module")
def col(lite):
    col = lite.create_collection("news", FIELDS, FLAT, dim=DIM)
    col.index(_docs())
    return col


def ids(hits):
    return [hit["id"] for hit in hits]


def test_a_keyword_only_match_is_kept_near_the_top(col):
    dense = ids(col.similar(vectors=QUERY.tolist(), limit=5))
    assert "d37" not in dense  # the vectors do not capture it
    words = col.similar(keywords=RARE, limit=5)
    assert ids(words) == ["d37"] and words[0]["distance"] > 0  # only d37 shares a term
    hybrid = ids(col.similar(vectors=QUERY.tolist(), keywords=f"{RARE} story", limit=5))
    assert "d37" in hybrid[:3]
    assert set(hybrid) & set(dense)  # meaning still counts


def test_rrf_is_the_sum_of_reciprocal_ranks_in_explain(col):
    k = 10
    hits = col.similar(vectors=QUERY.tolist(), keywords="football weather", fusion_k=k, limit=15, explain=True)
    dense = ids(col.similar(vectors=QUERY.tolist(), limit=40))
    words = ids(col.similar(keywords="football weather", limit=40))
    assert len(hits) == 15
    for hit in hits:
        routes = {name: hit["explain"][name] for name in ("dense", "keywords") if name in hit["explain"]}
        assert routes
        assert hit["distance"] == pytest.approx(sum(1 / (k + r["rank"]) for r in routes.values()), rel=1e-12)
        assert hit["explain"]["score"] == hit["distance"]
        # each route's rank is the hit's place in that route searched alone
        if "dense" in routes:
            assert dense.index(hit["id"]) + 1 == routes["dense"]["rank"]
        if "keywords" in routes:
            assert words.index(hit["id"]) + 1 == routes["keywords"]["rank"]
        else:
            assert hit["id"] not in words  # a route that did not return the hit is absent
    assert [h["distance"] for h in hits] == sorted((h["distance"] for h in hits), reverse=True)


def test_weighted_fusion_at_the_ends_is_each_route_and_between_the_normalised_sum(col):
    words = col.similar(keywords="football weather story", limit=10)
    dense = col.similar(vectors=QUERY.tolist(), limit=10)
    query = {"vectors": QUERY.tolist(), "keywords": "football weather story", "fusion": "weighted", "limit": 10}
    assert ids(col.similar(**query, fusion_weights=[0, 1])) == ids(words)
    assert ids(col.similar(**query, fusion_weights=[1, 0])) == ids(dense)
    for hit in col.similar(**query, fusion_weights=[0.3, 0.7], explain=True):
        e = hit["explain"]
        expected = (0.3 * normalised([e["dense"]["score"]], "IP")[0] if "dense" in e else 0.0) + (
            0.7 * 2 * math.atan(e["keywords"]["score"]) / math.pi if "keywords" in e else 0.0)
        assert hit["distance"] == pytest.approx(expected, rel=1e-9)


def test_filters_and_exclusions_apply_to_both_routes(col):
    excluded = ["d01", "d37"] + [f"missing{i}" for i in range(70)]  # a long list: over-fetched, not in the filter
    for exclude in (["d01", "d37"], excluded):
        hits = col.similar(vectors=QUERY.tolist(), keywords=f"football {RARE}", filter_expr='lang == "en"',
                           exclude_ids=exclude, limit=20, output_fields=["lang", "text"], explain=True)
        assert hits and all(hit["lang"] == "en" for hit in hits)
        assert not {"d01", "d37"} & set(ids(hits))
        words = [h for h in hits if "keywords" in h["explain"]]
        assert words and all("football" in h["text"] for h in words)
        # the keyword ranks count only what the filter lets through
        assert sorted(h["explain"]["keywords"]["rank"] for h in words) == list(range(1, len(words) + 1))


def test_explain_shape_paging_and_groups(col):
    hits = col.similar(ids=["d00"], keywords="soup", limit=3, explain=True)
    for hit in hits:
        assert set(hit["explain"]) <= {"dense", "keywords", "score"}
        for route in ("dense", "keywords"):
            if route in hit["explain"]:
                assert set(hit["explain"][route]) == {"rank", "score"}
    alone = col.similar(keywords="soup", limit=2, explain=True)
    assert set(alone[0]["explain"]) == {"keywords", "score"}
    assert alone[0]["distance"] == alone[0]["explain"]["keywords"]["score"]  # keywords alone: BM25's score
    whole = ids(col.similar(ids=["d00"], keywords="soup", limit=6))
    assert ids(col.similar(ids=["d00"], keywords="soup", limit=3, offset=3)) == whole[3:]
    grouped = col.similar(ids=["d00"], keywords="soup", group_by="lang", limit=2, output_fields=["lang"])
    assert sorted(hit["lang"] for hit in grouped) == ["en", "fr"]


def test_hidden_fields_stay_hidden_and_the_spec_says_full_text(col):
    row = col.get(["d37"])[0]
    assert set(row) == {"id", "vec", "text", "lang"}
    assert set(next(iter(col.iterate()))) == {"id", "vec", "text", "lang"}
    described = col.describe()
    assert described["fields"][0] == {"name": "text", "type": "varchar", "max_length": 200, "enable_analyzer": True}


def test_a_reopened_collection_and_an_import_still_search_keywords(tmp_path: Path):
    with Client(codops="ltlrt", data_dir=tmp_path / "a") as first:
        col = first.create_collection("kept", [FieldSchema(name="text", dtype=DataType.VARCHAR, max_length=200,
                                                           enable_analyzer=True,
                                                           analyzer_params={"tokenizer": "standard"})],
                                      FLAT, dim=DIM)
        col.index([{k: v for k, v in doc.items() if k != "lang"} for doc in _docs()[:20]]
                  + [{"id": "rare", "vec": [0.0] * (DIM - 1) + [1.0], "text": f"a {RARE} b"}])
        col.export(tmp_path / "kept.jsonl")
    with Client(codops="ltlrt", data_dir=tmp_path / "a") as again:
        col = again.collection("kept")
        assert ids(col.similar(keywords=RARE)) == ["rare"]
        assert col.spec.fields[0].analyzer_params == {"tokenizer": "standard"}
    with Client(codops="ltlrt", data_dir=tmp_path / "b") as other:
        imported, count = other.import_collection(tmp_path / "kept.jsonl")
        assert count == 21 and ids(imported.similar(keywords=RARE)) == ["rare"]


def _hash_embed(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in model: a text's vector from its hash."""
    return np.asarray([np.frombuffer(hashlib.sha256(t.encode()).digest()[:DIM], dtype=np.uint8) - 127.5
                       for t in texts], dtype=np.float32)


def test_the_embedded_text_is_the_full_text_field(lite):
    embedder = CallableEmbedder(_hash_embed, name="hash8", dim=DIM)
    col = lite.create_collection("embedded", [{"name": "text", "type": "varchar", "max_length": 200,
                                               "enable_analyzer": True}], embedder=embedder)
    col.index([{"id": f"t{i}", "text": text} for i, text in enumerate(
        ["ICE 1127 nach Hamburg", "Regionalzug nach Kiel", "Fähre nach Helgoland"])])
    assert ids(col.similar(keywords="ice 1127")) == ["t0"]
    hits = col.similar(texts=["Zug nach Norden"], keywords="Helgoland", limit=3, explain=True)
    assert hits[0]["id"] == "t2" and set(hits[0]["explain"]) >= {"dense", "keywords"}
    assert col.get(["t1"])[0]["text"] == "Regionalzug nach Kiel"


@pytest.mark.parametrize(("parameters", "named"), [
    ({"keywords": ""}, "keywords"),
    ({"keywords": "   "}, "keywords"),
    ({"keywords": ["a"]}, "keywords"),
    ({"keywords": "x", "fusion": "max"}, "fusion"),
    ({"keywords": "x", "fusion_k": 0}, "fusion_k"),
    ({"keywords": "x", "fusion_k": 1.5}, "fusion_k"),
    ({"keywords": "x", "fusion": "weighted", "fusion_weights": [1]}, "fusion_weights"),
    ({"keywords": "x", "fusion": "weighted", "fusion_weights": [1, -1]}, "fusion_weights"),
    ({"keywords": "x", "fusion": "weighted", "fusion_weights": [0, 0]}, "fusion_weights"),
    ({"keywords": "x", "fusion_weights": [1, 1]}, "fusion_weights"),
    ({"keywords": "x", "keywords_field": "lang"}, "keywords_field"),
    ({"keywords_field": "text", "ids": ["d00"]}, "keywords_field"),
    ({"keywords": "x", "ids": ["d00"], "diversity": 0.5}, "diversity"),
    ({"keywords": "x", "negative_ids": ["d00"]}, "average_vector"),
])
def test_bad_query_parameters_are_named(col, parameters, named):
    with pytest.raises(InvalidInputError, match=named):
        col.similar(**parameters)


def test_keywords_need_a_full_text_field(lite):
    plain = lite.create_collection("plain", [{"name": "text", "type": "varchar", "max_length": 20}], FLAT, dim=DIM)
    with pytest.raises(InvalidInputError, match="keywords: the collection has no full-text field"):
        plain.similar(keywords="x")


@pytest.mark.parametrize(("field", "named"), [
    ({"name": "n", "type": "int64", "enable_analyzer": True}, "varchar fields only"),
    ({"name": "t", "type": "varchar", "max_length": 9, "enable_analyzer": "yes"}, "enable_analyzer"),
    ({"name": "t", "type": "varchar", "max_length": 9, "analyzer_params": {"tokenizer": "standard"}},
     "needs enable_analyzer"),
    ({"name": "t", "type": "varchar", "max_length": 9, "enable_analyzer": True, "analyzer_params": "standard"},
     "analyzer_params"),
    ({"name": "t", "type": "varchar", "max_length": 9, "enable_analyzer": True,
      "analyzer_params": {"tokenizer": "english"}}, "analyzer_params.*unknown tokenizer"),
    ({"name": "t", "type": "varchar", "max_length": 9, "enable_analyzer": True,
      "analyzer_params": {"tokenizer": "standard", "filter": ["stemmer"]}}, "analyzer_params"),
    ({"name": "t", "type": "varchar", "max_length": 9, "enable_analyzer": True,
      "analyzer_params": {"tokenizer": "standard", "stemming": True}}, "analyzer_params"),
    ({"name": "t__bm25", "type": "varchar", "max_length": 9}, "reserved"),
])
def test_bad_full_text_fields_are_refused(lite, field, named):
    with pytest.raises(InvalidInputError, match=named):
        lite.create_collection("refused", [field], FLAT, dim=DIM)
    assert not lite.has_collection("refused")


def test_a_server_without_full_text_search_says_which_version_has_it(client, backend, name):
    """Milvus 2.3 has no BM25 functions: a full-text field and keywords are refused, naming the
    server's version and Milvus 2.5; the embedded engine takes both."""
    if backend == "lite":
        col = client.create_collection(name, FIELDS, FLAT, dim=DIM)
        col.index(_docs()[:4])
        assert col.similar(keywords="rain")
        client.drop_collection(name)
        return
    with pytest.raises(InvalidInputError, match=r"full-text field 'text'.*Milvus 2\.5.*runs v?2\.3"):
        client.create_collection(name, FIELDS, FLAT, dim=DIM)
    assert not client.has_collection(name)
    col = client.create_collection(name, FIELDS[1:], FLAT, dim=DIM)
    col.index([{"id": "a", "vec": [1.0] * DIM, "lang": "en"}])
    with pytest.raises(InvalidInputError, match=r"keywords.*Milvus 2\.5.*runs v?2\.3"):
        col.similar(ids=["a"], keywords="x")
    client.drop_collection(name)


def test_a_batch_equals_its_single_calls_and_creating_again_keeps_the_collection(lite, col):
    requests = [{"keywords": "soup", "limit": 3}, {"ids": ["d00"], "keywords": RARE, "limit": 4},
                {"vectors": QUERY.tolist(), "limit": 2}]
    assert col.similar_batch(requests) == [col.similar(**request) for request in requests]
    again = lite.create_collection("news", FIELDS, FLAT, dim=DIM)
    assert again.count() == 40 and again.spec.full_text_fields == ["text"]


def _random_routes(rng: np.random.Generator, pool: int = 30, depth: int = 12) -> list[Route]:
    dense = [f"h{i}" for i in rng.permutation(pool)[:depth]]
    words = [f"h{i}" for i in rng.permutation(pool)[:int(rng.integers(0, depth))]]
    return [Route("dense", dense, sorted(rng.random(len(dense)), reverse=True), "IP"),
            Route("keywords", words, sorted(5 * rng.random(len(words)), reverse=True), "BM25")]


def test_rrf_ties_go_to_the_best_rank_then_to_the_keyword_route():
    """A numpy oracle: RRF = Σ 1/(k + rank); order by (−RRF, best rank, keyword rank, dense rank)."""
    rng = np.random.default_rng(0)
    ties = 0
    for _ in range(200):
        routes = _random_routes(rng)
        k = int(rng.integers(1, 80))
        hits = sorted({h for r in routes for h in r.ids})
        rank = {(r.name, h): i + 1 for r in routes for i, h in enumerate(r.ids)}
        fused = np.array([sum(1 / (k + rank[(r, h)]) for r in ROUTES if (r, h) in rank) for h in hits])
        kw = np.array([rank.get(("keywords", h), np.inf) for h in hits])
        de = np.array([rank.get(("dense", h), np.inf) for h in hits])
        order = np.lexsort((de, kw, np.minimum(kw, de), -fused))
        got = fuse(routes, Fusion("rrf", k))
        assert [hit for hit, _, _ in got] == [hits[i] for i in order]
        ties += len(fused) - len(np.unique(fused))
    assert ties > 100  # the oracle saw ties to break
    # the rare-token case: one keyword hit at rank 1 beside the dense route's rank 1
    got = fuse([Route("dense", ["a", "b"], [0.9, 0.8], "IP"), Route("keywords", ["z"], [7.0], "BM25")],
               Fusion("rrf", 60))
    assert [hit for hit, _, _ in got] == ["z", "a", "b"]


def test_weighted_ties_follow_the_heavier_route_and_keywords_on_equal_weights():
    same = [Route("dense", ["a", "b"], [0.5, 0.5], "IP"), Route("keywords", ["c", "d"], [1.0, 1.0], "BM25")]
    assert [h for h, _, _ in fuse(same, Fusion("weighted", weights=(0.0, 1.0)))][:2] == ["c", "d"]
    assert [h for h, _, _ in fuse(same, Fusion("weighted", weights=(1.0, 0.0)))][:2] == ["a", "b"]
    # equal weights, equal normalised scores: IP 0 and BM25 1 both normalise to 1/2
    equal = [Route("dense", ["a"], [0.0], "IP"), Route("keywords", ["z"], [1.0], "BM25")]
    assert normalised([0.0], "IP")[0] == normalised([1.0], "BM25")[0]
    assert [h for h, _, _ in fuse(equal, Fusion("weighted", weights=(1.0, 1.0)))] == ["z", "a"]


def test_jieba_finds_a_chinese_word_inside_a_sentence_the_standard_analyser_does_not(lite):
    pytest.importorskip("jieba")
    docs = [{"id": "z1", "vec": [1.0] + [0.0] * (DIM - 1), "text": "这个软件包提供了图形编辑器的插件"},
            {"id": "z2", "vec": [0.0, 1.0] + [0.0] * (DIM - 2), "text": "用于网络服务器的配置工具"}]
    found = {}
    for tokenizer in ("jieba", "standard"):
        field = {**FIELDS[0], "analyzer_params": {"tokenizer": tokenizer}}
        col = lite.create_collection(f"zh_{tokenizer}", [field], FLAT, dim=DIM)
        col.index(docs)
        found[tokenizer] = ids(col.similar(keywords="编辑器", limit=2))
    assert found == {"jieba": ["z1"], "standard": []}
