"""The HTTP service, through FastAPI's TestClient and once as a real uvicorn process."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from docs_session import documented_session
from fastapi.testclient import TestClient

from lookalike.config import Settings
from lookalike.http.app import create_app

TOKENS = {"ltlrt": "token-of-ltlrt-7f3a", "bbc": "token-of-bbc-91c2"}
ENVIRON = {f"CODOPS_{code.upper()}_API_TOKEN": token for code, token in TOKENS.items()}
MAX_LIMIT = 50
MAX_BODY = 200_000
SCHEMA = {
    "dim": 4,
    "fields": [{"name": "language", "type": "varchar", "max_length": 16},
               {"name": "year", "type": "int64"}],
    "indexes": {"vec": {"index_type": "HNSW", "metric_type": "IP", "M": 16}, "language": None},
}


# Each route: its operation id and the one library call it makes (docs/http.md shows this table).
ROUTES = {
    ("GET", "/health"): ("health", None),
    ("GET", "/ready"): ("ready", None),
    ("GET", "/v1/{codops}/collections"): ("list_collections", "Client.list_collections"),
    ("PUT", "/v1/{codops}/collections/{name}"): ("create_collection", "Client.create_collection"),
    ("GET", "/v1/{codops}/collections/{name}"): ("describe", "Client.describe"),
    ("DELETE", "/v1/{codops}/collections/{name}"): ("drop_collection", "Client.drop_collection"),
    ("GET", "/v1/{codops}/collections/{name}/count"): ("count", "Client.count"),
    ("GET", "/v1/{codops}/collections/{name}/wait_for_index"): ("wait_for_index", "Client.wait_for_index"),
    ("GET", "/v1/{codops}/collections/{name}/export"): ("export", "Collection.export_lines"),
    ("POST", "/v1/{codops}/collections/{name}/documents"): ("index", "Client.index"),
    ("GET", "/v1/{codops}/collections/{name}/documents"): ("get_documents", "Client.get_documents"),
    ("POST", "/v1/{codops}/collections/{name}/documents/delete"): ("delete_documents",
                                                                    "Client.delete_documents"),
    ("POST", "/v1/{codops}/collections/{name}/similar"): ("retrieve_similar", "Client.retrieve_similar"),
    ("POST", "/v1/{codops}/collections/{name}/similar/batch"): ("retrieve_similar_batch",
                                                                "Client.retrieve_similar_batch"),
    ("GET", "/v1/{codops}/collections/{name}/similar"): ("retrieve_similar_by_ids",
                                                         "Client.retrieve_similar"),
    ("POST", "/v1/{codops}/collections/{name}/map"): ("map_sample", "Client.map_sample"),
    ("GET", "/v1/{codops}/collections/{name}/map"): ("map_sample_in_url", "Client.map_sample"),
    ("POST", "/v1/{codops}/collections/{name}/cluster"): ("cluster", "Client.cluster"),
    ("POST", "/v1/{codops}/collections/{name}/near-duplicates"): ("near_duplicates", "Client.near_duplicates"),
}
# What a route may call besides its one call: the existence test before a create, and the
# collection handle an export reads, and the description a create answers with.
LOOKUPS = {"Client.has_collection", "Client.collection", "Collection.describe"}


def auth(code: str = "ltlrt") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[code]}"}


def _docs(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"d{i}", "vec": rng.standard_normal(4).tolist(),
             "language": ("en", "fr", "de")[i % 3], "year": 2000 + i} for i in range(n)]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(codops="ltlrt", data_dir=tmp_path_factory.mktemp("http-data"))
    return create_app(settings=settings, environ=ENVIRON, max_limit=MAX_LIMIT,
                      max_body_bytes=MAX_BODY)


@pytest.fixture(scope="module")
def http(app):
    # raise_server_exceptions=False: a failure must reach the test as the response a client gets
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.put("/v1/ltlrt/collections/articles", json=SCHEMA,
                          headers=auth()).status_code in (200, 201)
        indexed = client.post("/v1/ltlrt/collections/articles/documents",
                              json={"documents": _docs(30)}, headers=auth())
        assert indexed.json() == {"indexed": 30}
        yield client


def test_health_and_ready_need_no_token(http):
    assert http.get("/health").json() == {"status": "ok"}
    ready = http.get("/ready").json()
    assert ready["status"] == "ready"
    state = ready["collections"]["articles"]
    assert state["indexed_rows"] + state["pending_rows"] == 30 and state["built"] == (state["pending_rows"] == 0)


def test_wait_for_index_route_reports_the_index_built(http):
    state = http.get("/v1/ltlrt/collections/articles/wait_for_index", params={"timeout": 120},
                     headers=auth()).json()
    assert state == {"indexed_rows": 30, "pending_rows": 0, "built": True}
    assert http.get("/v1/ltlrt/collections/articles", headers=auth()).json()["index"] == state
    assert http.get("/ready").json()["collections"]["articles"] == state
    # a timeout out of range is the caller's error; a timeout passed is 504, naming the rows
    assert http.get("/v1/ltlrt/collections/articles/wait_for_index", params={"timeout": -1},
                    headers=auth()).status_code == 422
    # a graph that takes seconds to build (20k x 64): a wait of 0 s answers 504 with the rows
    client = http.app.state.organisations.client("ltlrt")
    rng = np.random.default_rng(1)
    client.create_collection("slow_graph", dim=64).index(
        [{"id": f"s{i}", "vec": v} for i, v in enumerate(rng.standard_normal((20_000, 64)))])
    late = http.get("/v1/ltlrt/collections/slow_graph/wait_for_index", params={"timeout": 0}, headers=auth())
    assert late.status_code == 504 and late.json()["error"] == "index_timeout"
    assert "20000 pending" in late.json()["detail"]
    assert http.get("/v1/ltlrt/collections/slow_graph/wait_for_index", params={"timeout": 600},
                    headers=auth()).json() == {"indexed_rows": 20_000, "pending_rows": 0, "built": True}
    assert client.drop_collection("slow_graph")


def test_ready_is_503_when_milvus_cannot_be_opened(tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    app = create_app(settings=Settings(codops="ltlrt", data_dir=blocked), environ=ENVIRON)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["error"] == "not_ready"


def test_a_given_client_is_served_and_left_open(tmp_path):
    from lookalike import Client

    with Client(codops="ltlrt", data_dir=tmp_path) as client:
        client.create_collection("given", dim=4)
        app = create_app(client, environ={**ENVIRON, "LOOKALIKE_HTTP_MAX_LIMIT": "3"})
        with TestClient(app, raise_server_exceptions=False) as http:
            assert http.get("/v1/ltlrt/collections", headers=auth()).json() == ["given"]
            assert app.state.organisations.client("ltlrt") is client
            over = http.post("/v1/ltlrt/collections/given/similar",
                             json={"vectors": [1, 0, 0, 0], "limit": 4}, headers=auth())
            assert over.status_code == 400
            assert over.json()["detail"] == "limit must be an integer in [1, 3], not 4"
        assert client.list_collections() == ["given"]  # the app did not close it


def test_put_collection_is_idempotent_and_conflicts_on_another_schema(http):
    again = http.put("/v1/ltlrt/collections/articles", json=SCHEMA, headers=auth())
    assert again.status_code == 200
    assert again.json()["indexes"]["vec"] == SCHEMA["indexes"]["vec"]
    created = http.put("/v1/ltlrt/collections/fresh", json=SCHEMA, headers=auth())
    assert created.status_code == 201 and created.json()["count"] == 0
    clash = http.put("/v1/ltlrt/collections/articles", json={**SCHEMA, "dim": 8}, headers=auth())
    assert clash.status_code == 409
    assert "dim 4 != 8" in clash.json()["detail"]
    bad_type = http.put("/v1/ltlrt/collections/bad",
                        json={"dim": 4, "fields": [{"name": "x", "type": "blob"}]},
                        headers=auth())
    # The field types are an enum of the OpenAPI document (the library's FIELD_TYPES): 422.
    assert bad_type.status_code == 422
    assert bad_type.json()["detail"].startswith("body.fields.0.type: Input should be 'bool'")
    assert "articles" in http.get("/v1/ltlrt/collections", headers=auth()).json()


def test_similar_get_and_post(http):
    hits = http.get("/v1/ltlrt/collections/articles/similar",
                    params={"ids": ["d1"], "limit": 5}, headers=auth()).json()
    assert hits[0]["id"] == "d1" and len(hits) == 5
    assert set(hits[0]) == {"id", "distance"}
    filtered = http.get("/v1/ltlrt/collections/articles/similar",
                        params={"ids": ["d1", "d2"], "filter": "language == 'fr'",
                                "exclude_ids": "true", "output_fields": ["language"]},
                        headers=auth()).json()
    assert filtered and all(h["language"] == "fr" and h["id"] not in ("d1", "d2")
                            for h in filtered)
    docs = _docs(30)
    by_vector = http.post("/v1/ltlrt/collections/articles/similar",
                          json={"vectors": docs[7]["vec"], "limit": 1}, headers=auth()).json()
    assert by_vector[0]["id"] == "d7"
    by_ids = http.post("/v1/ltlrt/collections/articles/similar",
                       json={"ids": ["d1"], "limit": 5}, headers=auth()).json()
    assert by_ids == hits


# -- recommendations (issue 14): the parameters of retrieve_similar, in the body and the URL -----

SIMILAR = "/v1/ltlrt/collections/articles/similar"


@pytest.fixture
def similar_requests(monkeypatch):
    """The SimilarRequests the routes hand the library (Client.retrieve_similar and _batch)."""
    from lookalike import Client, SimilarRequest

    seen: list[SimilarRequest] = []
    single, batch = Client.retrieve_similar, Client.retrieve_similar_batch

    def retrieve_similar(self, name, request=None, **parameters):
        seen.append(SimilarRequest.of(request, **parameters))
        return single(self, name, request, **parameters)

    def retrieve_similar_batch(self, name, requests):
        seen.extend(SimilarRequest.of(r) for r in requests)
        return batch(self, name, requests)

    monkeypatch.setattr(Client, "retrieve_similar", retrieve_similar)
    monkeypatch.setattr(Client, "retrieve_similar_batch", retrieve_similar_batch)
    return seen


RECOMMENDATION_BODIES = [
    ({"ids": ["d1", "d2"], "negative_ids": ["d3"], "strategy": "average_vector",
      "weights": [1, 0.5], "exclude_ids": ["d5", "d7"], "group_by": "language", "group_size": 2,
      "offset": 1, "explain": True, "limit": 3},
     {"ids": ["d1", "d2"], "negative_ids": ["d3"], "strategy": "average_vector",
      "weights": [1.0, 0.5], "exclude_ids": ["d5", "d7"], "group_by": "language",
      "group_size": 2, "offset": 1, "explain": True, "limit": 3}),
    ({"ids": ["d1"], "negative_ids": ["d3"], "strategy": "best_score", "exclude_ids": True,
      "diversity": 0.3, "candidates": 30, "min_score": -0.5,
      "recency": {"field": "year", "scale": 10, "decay": 0.25, "function": "gauss",
                  "origin": 2030, "offset": 2}},
     {"ids": ["d1"], "negative_ids": ["d3"], "strategy": "best_score", "exclude_ids": True,
      "diversity": 0.3, "candidates": 30, "min_score": -0.5,
      "recency": {"field": "year", "scale": 10, "decay": 0.25, "function": "gauss",
                  "origin": 2030, "offset": 2}}),
    # recency with only its required keys: the library's defaults for the others
    ({"vectors": [1, 0, 0, 0], "recency": {"field": "year", "scale": 5}},
     {"vectors": [1.0, 0.0, 0.0, 0.0], "recency": {"field": "year", "scale": 5}}),
    ({"ids": ["d1"]}, {"ids": ["d1"]}),  # nothing given: the library's defaults
]


@pytest.mark.parametrize("body,expected", RECOMMENDATION_BODIES)
def test_the_body_passes_every_recommendation_parameter_through(http, similar_requests, body,
                                                                 expected):
    from lookalike import SimilarRequest

    response = http.post(SIMILAR, json=body, headers=auth())
    assert similar_requests == [SimilarRequest(**expected)]
    assert response.status_code == 200, response.text
    assert all(isinstance(hit.get("explain"), dict) == bool(body.get("explain"))
               for hit in response.json())


def test_the_url_passes_the_scalar_recommendation_parameters_through(http, similar_requests):
    from lookalike import SimilarRequest

    params = {"ids": ["d1", "d2"], "negative_ids": ["d3"], "strategy": "average_vector",
              "weights": [1, 0.5], "offset": 1, "group_by": "language", "group_size": 2,
              "diversity": 0.2, "candidates": 30, "min_score": -0.9, "explain": "true",
              "exclude_ids": "true", "limit": 3}
    response = http.get(SIMILAR, params=params, headers=auth())
    assert similar_requests == [SimilarRequest(
        ids=["d1", "d2"], negative_ids=["d3"], strategy="average_vector", weights=[1.0, 0.5],
        offset=1, group_by="language", group_size=2, diversity=0.2, candidates=30,
        min_score=-0.9, explain=True, exclude_ids=True, limit=3)]
    assert response.status_code == 200, response.text
    hits = response.json()
    assert hits and all(h["id"] not in ("d1", "d2", "d3") and h["explain"] for h in hits)
    # the same query in a body gives the same answer
    body = {**params, "explain": True, "exclude_ids": True}
    assert http.post(SIMILAR, json=body, headers=auth()).json() == hits


def test_exclusion_lists_groups_and_paging_over_http(http):
    def similar(**body):
        response = http.post(SIMILAR, json={"ids": ["d1"], **body}, headers=auth())
        assert response.status_code == 200, response.text
        return response.json()

    plain = similar(limit=12, output_fields=["language"])
    left_out = [plain[0]["id"], plain[2]["id"]]
    assert [h["id"] for h in similar(limit=5, exclude_ids=left_out)] == [
        h["id"] for h in plain if h["id"] not in left_out][:5]
    assert [h["id"] for h in similar(limit=4, offset=3)] == [h["id"] for h in plain[3:7]]
    grouped = similar(limit=3, group_by="language", output_fields=["language"])
    assert [h["language"] for h in grouped] == list(dict.fromkeys(h["language"] for h in plain))


def test_the_batch_answers_what_each_single_call_answers(http, similar_requests):
    requests = [
        {"ids": ["d1"], "limit": 5, "exclude_ids": True},
        {"ids": ["d2", "d4"], "negative_ids": ["d6"], "limit": 3, "output_fields": ["year"]},
        {"ids": ["d3"], "group_by": "language", "limit": 3, "explain": True},
        {"vectors": [0.5, 0.5, 0, 0], "exclude_ids": ["d2", "d3"], "offset": 2, "limit": 4},
        {"ids": ["d1"], "recency": {"field": "year", "scale": 10, "origin": 2030}, "limit": 3},
    ]
    response = http.post(SIMILAR + "/batch", json={"requests": requests}, headers=auth())
    assert response.status_code == 200, response.text
    batched = response.json()
    assert len(batched) == len(requests) == len(similar_requests)
    singles = [http.post(SIMILAR, json=r, headers=auth()).json() for r in requests]
    assert batched == singles
    assert similar_requests[:len(requests)] == similar_requests[len(requests):]
    empty = http.post(SIMILAR + "/batch", json={"requests": []}, headers=auth())
    assert empty.status_code == 422 and "requests" in empty.json()["detail"]


@pytest.mark.parametrize("body,fragment", [
    ({"requests": [{"ids": ["d1"]}, {"ids": ["d1"], "limit": MAX_LIMIT + 1}]},
     f"limit must be an integer in [1, {MAX_LIMIT}], not {MAX_LIMIT + 1}"),
    ({"requests": [{"ids": ["d1"]}, {"ids": ["d1"], "diversity": 2}]}, "diversity"),
    ({"requests": [{"ids": ["zz"]}]}, "'zz'"),
])
def test_the_batch_refuses_what_a_single_call_refuses(http, body, fragment):
    response = http.post(SIMILAR + "/batch", json=body, headers=auth())
    assert response.status_code == (404 if "zz" in fragment else 400), response.text
    assert fragment in response.json()["detail"]


@pytest.mark.parametrize("extra,parameter", [
    ({"diversity": 1.5}, "diversity"),
    ({"diversity": -0.1}, "diversity"),
    ({"group_by": "language", "group_size": 0}, "group_size"),
    ({"group_by": "no_such_field"}, "group_by"),
    ({"strategy": "nearest"}, "strategy"),
    ({"offset": -1}, "offset"),
    ({"offset": 16384}, "offset"),
    ({"weights": [1, -1], "ids": ["d1", "d2"]}, "weights"),
    ({"weights": [1, 1]}, "weights"),
    ({"candidates": 2, "limit": 5}, "candidates"),
    ({"recency": {"field": "language", "scale": 1}}, "recency"),
    ({"recency": {"field": "year", "scale": 1, "function": "cubic"}}, "recency"),
    ({"negative_ids": ["d3"], "ids": None, "vectors": None}, "ids"),
])
def test_bad_recommendation_values_are_400_naming_the_parameter(http, extra, parameter):
    body = {"ids": ["d1"], **extra}
    response = http.post(SIMILAR, json=body, headers=auth())
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_input"
    assert parameter in response.json()["detail"]


# -- keywords and meaning together (issue 15): full-text fields and keyword/hybrid search -------

NOTES = "/v1/ltlrt/collections/notes"
FULL_TEXT_SCHEMA = {
    "dim": 4,
    "fields": [{"name": "language", "type": "varchar", "max_length": 16},
               {"name": "text", "type": "varchar", "max_length": 512, "enable_analyzer": True}],
    "indexes": {"vec": {"index_type": "HNSW", "metric_type": "IP", "M": 16}},
}
WORDS = ["weather", "market", "football", "election", "concert", "harbour", "budget", "school"]


@pytest.fixture(scope="module")
def notes(http):
    """Collection `notes`: a full-text field `text`, 20 documents whose words say nothing of their
    vectors, and `rare`, the one that says "ICE 1127", with the opposite of d0's vector."""
    created = http.put(NOTES, json=FULL_TEXT_SCHEMA, headers=auth())
    assert created.status_code == 201, created.text
    docs = [{**d, "text": f"news about the {WORDS[i % 8]} and the {WORDS[(i * 3 + 1) % 8]}"}
            for i, d in enumerate(_docs(20, seed=7))]
    for doc in docs:
        del doc["year"]  # not a field of this collection
    docs.append({"id": "rare", "vec": [-x for x in docs[0]["vec"]], "language": "de",
                 "text": "the ICE 1127 to Hamburg is late"})
    assert http.post(f"{NOTES}/documents", json={"documents": docs},
                     headers=auth()).json() == {"indexed": 21}
    return docs


def test_put_declares_a_full_text_field(http, notes):
    described = http.get(NOTES, headers=auth()).json()
    text = next(f for f in described["fields"] if f["name"] == "text")
    assert text["enable_analyzer"] is True and text["max_length"] == 512
    assert [f["name"] for f in described["fields"]] == ["language", "text"]
    # the description is the schema PUT takes back: the same collection again
    again = http.put(NOTES, json={k: described[k] for k in ("dim", "fields", "indexes")},
                     headers=auth())
    assert again.status_code == 200, again.text
    # the shape is the model's (422); the value is the engine's and the library's (400)
    bad_shape = json.loads(json.dumps(FULL_TEXT_SCHEMA))
    bad_shape["fields"][1]["enable_analyzer"] = "sometimes"
    assert http.put("/v1/ltlrt/collections/ft_shape", json=bad_shape,
                    headers=auth()).status_code == 422
    bad_params = json.loads(json.dumps(FULL_TEXT_SCHEMA))
    bad_params["fields"][1]["analyzer_params"] = {"tokenizer": "no_such_tokenizer"}
    refused = http.put("/v1/ltlrt/collections/ft_refused", json=bad_params, headers=auth())
    assert refused.status_code == 400, refused.text
    assert "analyzer_params" in refused.json()["detail"]
    assert "ft_refused" not in http.get("/v1/ltlrt/collections", headers=auth()).json()


KEYWORD_BODIES = [
    ({"keywords": "ICE 1127"}, {"keywords": "ICE 1127"}),
    ({"ids": ["d1"], "keywords": "Hamburg", "fusion": "rrf", "fusion_k": 10,
      "keywords_field": "text", "explain": True, "limit": 3},
     {"ids": ["d1"], "keywords": "Hamburg", "fusion": "rrf", "fusion_k": 10,
      "keywords_field": "text", "explain": True, "limit": 3}),
    ({"vectors": [1, 0, 0, 0], "keywords": "Hamburg", "fusion": "weighted",
      "fusion_weights": [0.7, 0.3], "filter_expr": "language == 'de'"},
     {"vectors": [1.0, 0.0, 0.0, 0.0], "keywords": "Hamburg", "fusion": "weighted",
      "fusion_weights": [0.7, 0.3], "filter_expr": "language == 'de'"}),
]


@pytest.mark.parametrize("body,expected", KEYWORD_BODIES)
def test_the_body_passes_every_keyword_parameter_through(http, notes, similar_requests, body,
                                                          expected):
    from lookalike import SimilarRequest

    response = http.post(f"{NOTES}/similar", json=body, headers=auth())
    assert similar_requests == [SimilarRequest(**expected)]
    assert response.status_code == 200, response.text


def test_the_url_passes_keywords_and_fusion_through(http, notes, similar_requests):
    from lookalike import SimilarRequest

    params = {"ids": ["d0"], "keywords": "ICE 1127", "fusion": "weighted",
              "fusion_weights": [0, 1], "keywords_field": "text", "limit": 1}
    response = http.get(f"{NOTES}/similar", params=params, headers=auth())
    assert response.status_code == 200, response.text
    rrf = http.get(f"{NOTES}/similar", params={"ids": ["d0"], "keywords": "ICE 1127",
                                               "fusion_k": 5, "explain": "true", "limit": 5},
                   headers=auth())
    assert similar_requests == [
        SimilarRequest(ids=["d0"], keywords="ICE 1127", fusion="weighted",
                       fusion_weights=[0.0, 1.0], keywords_field="text", limit=1),
        SimilarRequest(ids=["d0"], keywords="ICE 1127", fusion_k=5, explain=True, limit=5)]
    # weighted fusion with all the weight on the keywords is the keyword ranking
    assert [h["id"] for h in response.json()] == ["rare"]
    hits = rrf.json()
    assert all(h["distance"] == pytest.approx(sum(
        1 / (5 + h["explain"][r]["rank"]) for r in ("dense", "keywords") if r in h["explain"]))
        for h in hits)


def test_a_keyword_only_match_is_found_and_explained_over_http(http, notes):
    def similar(**body):
        response = http.post(f"{NOTES}/similar", json=body, headers=auth())
        assert response.status_code == 200, response.text
        return response.json()

    assert "rare" not in [h["id"] for h in similar(ids=["d0"], limit=5)]
    assert similar(keywords="ICE 1127", limit=3)[0]["id"] == "rare"
    hybrid = similar(ids=["d0"], keywords="ICE 1127", limit=5, explain=True,
                     output_fields=["language"])
    top = {h["id"]: h for h in hybrid[:2]}
    assert set(top) == {"d0", "rare"}, hybrid
    assert top["rare"]["explain"]["keywords"]["rank"] == 1 and top["rare"]["language"] == "de"
    assert top["d0"]["explain"]["dense"]["rank"] == 1
    # the filter applies to both routes
    filtered = similar(ids=["d0"], keywords="ICE 1127", filter_expr="language == 'en'")
    assert filtered and "rare" not in [h["id"] for h in filtered]
    # the batch answers what each single call answers
    requests = [{"keywords": "Hamburg", "limit": 2}, {"ids": ["d0"], "keywords": "ICE 1127",
                                                       "limit": 3, "explain": True}]
    batch = http.post(f"{NOTES}/similar/batch", json={"requests": requests}, headers=auth())
    assert batch.status_code == 200, batch.text
    assert batch.json() == [similar(**r) for r in requests]


@pytest.mark.parametrize("extra,parameter", [
    ({"keywords": "   "}, "keywords"),
    ({"keywords": ""}, "keywords"),
    ({"keywords": "x", "fusion": "max"}, "fusion"),
    ({"keywords": "x", "fusion_k": 0}, "fusion_k"),
    ({"keywords": "x", "fusion": "weighted", "fusion_weights": [1]}, "fusion_weights"),
    ({"keywords": "x", "fusion": "weighted", "fusion_weights": [1, -1]}, "fusion_weights"),
    ({"keywords": "x", "keywords_field": "language"}, "keywords_field"),
    ({"keywords": "x", "keywords_field": "nowhere"}, "keywords_field"),
])
def test_bad_keyword_values_are_400_naming_the_parameter(http, notes, extra, parameter):
    for url, body in ((f"{NOTES}/similar", {"ids": ["d1"], **extra}),
                      (f"{NOTES}/similar/batch", {"requests": [{"ids": ["d1"], **extra}]})):
        response = http.post(url, json=body, headers=auth())
        assert response.status_code == 400, (url, response.text)
        assert response.json()["error"] == "invalid_input"
        assert parameter in response.json()["detail"]
    in_url = http.get(f"{NOTES}/similar", params={"ids": ["d1"], **extra}, headers=auth())
    assert in_url.status_code == 400 and parameter in in_url.json()["detail"], in_url.text


def test_keywords_on_a_collection_without_a_full_text_field_are_400(http):
    response = http.post(SIMILAR, json={"keywords": "x"}, headers=auth())
    assert response.status_code == 400 and "keywords" in response.json()["detail"], response.text


def test_the_openapi_document_states_the_keyword_fields(http):
    document = http.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    body = schemas["RetrieveSimilarRequest"]["properties"]
    for name in ("keywords", "fusion", "fusion_k", "fusion_weights", "keywords_field"):
        assert body[name].get("description"), name
    assert {"type": "string", "enum": ["rrf", "weighted"]} in body["fusion"]["anyOf"]
    field = schemas["FieldDefinition"]["properties"]
    assert field["enable_analyzer"]["description"] and field["analyzer_params"]["description"]
    url = {p["name"]: p for p in document["paths"]["/v1/{codops}/collections/{name}/similar"]
           ["get"]["parameters"]}
    assert {"keywords", "fusion", "fusion_k", "fusion_weights", "keywords_field"} <= set(url)


def test_documents_get_index_and_delete(http):
    got = http.get("/v1/ltlrt/collections/articles/documents",
                   params={"ids": ["d2", "missing", "d1"], "output_fields": ["year"]},
                   headers=auth()).json()
    assert got == [{"id": "d2", "year": 2002}, {"id": "d1", "year": 2001}]
    extra = [{"id": "tmp1", "vec": [1, 0, 0, 0], "language": "en", "year": 1},
             {"id": "tmp2", "vec": [0, 1, 0, 0], "language": "en", "year": 2}]
    assert http.post("/v1/ltlrt/collections/articles/documents", json={"documents": extra},
                     headers=auth()).json() == {"indexed": 2}
    refused = http.post("/v1/ltlrt/collections/articles/documents",
                        json={"documents": extra, "upsert": False}, headers=auth())
    assert refused.status_code == 409
    deleted = http.post("/v1/ltlrt/collections/articles/documents/delete",
                        json={"ids": ["tmp1", "tmp2"]}, headers=auth())
    assert deleted.json() == {"deleted": 2}
    assert http.get("/v1/ltlrt/collections/articles", headers=auth()).json()["count"] == 30


def test_every_route_calls_one_library_function_of_its_name(app, http, monkeypatch):
    import functools
    import inspect

    from fastapi.routing import APIRoute

    from lookalike import Client, Collection

    calls: list[str] = []

    def spy(name, function):
        @functools.wraps(function)
        def recorded(*args, **kwargs):
            if sys._getframe(1).f_globals.get("__name__") == "lookalike.http.app":
                calls.append(name)
            return function(*args, **kwargs)
        return recorded

    for attr, function in inspect.getmembers(Client, inspect.isfunction):
        if not attr.startswith("_"):
            monkeypatch.setattr(Client, attr, spy(f"Client.{attr}", function))
    for attr, function in inspect.getmembers(Collection, inspect.isfunction):
        if not attr.startswith("_"):
            monkeypatch.setattr(Collection, attr, spy(f"Collection.{attr}", function))
    routes = {(method, route.path): route for route in app.routes if isinstance(route, APIRoute)
              for method in route.methods}
    assert set(routes) == set(ROUTES)
    for key, route in routes.items():
        assert route.operation_id == route.endpoint.__name__ == ROUTES[key][0]

    base = "/v1/ltlrt/collections/spied"
    requests = [
        ("PUT", base, {"json": SCHEMA}),
        ("GET", "/v1/ltlrt/collections", {}),
        ("GET", base, {}),
        ("POST", f"{base}/documents", {"json": {"documents": _docs(3)}}),
        ("GET", f"{base}/documents", {"params": {"ids": ["d1"]}}),
        ("POST", f"{base}/similar", {"json": {"ids": ["d1"], "limit": 2}}),
        ("POST", f"{base}/similar/batch", {"json": {"requests": [{"ids": ["d1"], "limit": 2}]}}),
        ("GET", f"{base}/similar", {"params": {"ids": ["d1"], "limit": 2}}),
        ("POST", f"{base}/map", {"json": {"sample": 3, "ids": ["d1"]}}),
        ("GET", f"{base}/map", {"params": {"sample": 3, "color_field": "language"}}),
        ("POST", f"{base}/cluster", {"json": {"k": 2}}),
        ("POST", f"{base}/near-duplicates", {"json": {"threshold": 0.9}}),
        ("GET", f"{base}/count", {"params": {"filter_expr": "year > 2000"}}),
        ("GET", f"{base}/wait_for_index", {"params": {"timeout": 120}}),
        ("GET", f"{base}/export", {}),
        ("POST", f"{base}/documents/delete", {"json": {"ids": ["d0"]}}),
        ("DELETE", base, {}),
    ]
    for method, url, kwargs in requests:
        calls.clear()
        response = http.request(method, url, headers=auth(), **kwargs)
        assert response.status_code in (200, 201), response.text
        template = next(key for key in ROUTES if key[0] == method and re.fullmatch(
            re.sub(r"\{\w+\}", "[^/]+", key[1]), url))
        expected = ROUTES[template][1]
        assert [c for c in calls if c not in LOOKUPS] == [expected], (method, url, calls)


def test_drop_count_and_export_routes(http, tmp_path):
    from lookalike import Client

    base = "/v1/ltlrt/collections/dropme"
    assert http.put(base, json=SCHEMA, headers=auth()).status_code == 201
    http.post(f"{base}/documents", json={"documents": _docs(6)}, headers=auth())
    assert http.get(f"{base}/count", headers=auth()).json() == {"count": 6}
    assert http.get(f"{base}/count", params={"filter_expr": "language == 'fr'"},
                    headers=auth()).json() == {"count": 2}
    assert http.get(f"{base}/count", params={"filter": "language == 'fr'"},
                    headers=auth()).json() == {"count": 2}  # the documented alias
    exported = http.get(f"{base}/export", headers=auth())
    assert exported.status_code == 200
    assert exported.headers["content-type"] == "application/x-ndjson"
    assert 'filename="dropme.jsonl"' in exported.headers["content-disposition"]
    lines = exported.text.splitlines()
    assert json.loads(lines[0])["$lookalike"]["count"] == 6 and len(lines) == 7
    # The same text `lookalike export` writes, and `lookalike import` reads it back.
    stream = tmp_path / "stream.jsonl"
    stream.write_text(exported.text)
    with Client(codops="ltlrt", data_dir=tmp_path / "other") as other:
        collection, written = other.import_collection(stream)
        assert written == 6 and collection.count() == 6
        collection.export(tmp_path / "file.jsonl")
    assert (tmp_path / "file.jsonl").read_text().splitlines()[1:] == lines[1:]

    assert http.delete(base, headers=auth()).json() == {"dropped": True}
    assert http.delete(base, headers=auth()).json() == {"dropped": False}
    assert http.get(base, headers=auth()).status_code == 404
    assert http.get(f"{base}/export", headers=auth()).status_code == 404


@pytest.mark.parametrize("embedder", ["", ".", "/tmp", "..", {"name": ""}, {"name": "/tmp"}, 5,
                                      "not-a-model"])
def test_only_registered_models_can_be_named_over_http(http, embedder):
    response = http.put("/v1/ltlrt/collections/texts", json={"embedder": embedder}, headers=auth())
    assert response.status_code in (400, 422), response.text
    assert "embedder" in response.json()["detail"]
    assert "texts" not in http.get("/v1/ltlrt/collections", headers=auth()).json()


def test_a_model_whose_package_is_missing_is_a_400_naming_the_extra(http, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if not installed
    response = http.put("/v1/ltlrt/collections/texts", json={"embedder": "minilm"}, headers=auth())
    assert response.status_code == 400, response.text
    assert "sentence_transformers" in response.json()["detail"]
    assert "lookalike[sentence-transformers]" in response.json()["detail"]


def test_405_names_every_method_of_the_path(http):
    response = http.patch("/v1/ltlrt/collections/articles", headers=auth())
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, PUT"
    assert response.json()["error"] == "method_not_allowed"
    old_delete = http.request("DELETE", "/v1/ltlrt/collections/articles/documents",
                              json={"ids": ["d1"]}, headers=auth())
    assert old_delete.status_code == 405 and old_delete.headers["allow"] == "GET, POST"


def test_no_token_or_a_wrong_token_is_401(http):
    path = "/v1/ltlrt/collections"
    missing = http.get(path)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert http.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert http.get(path, headers={"Authorization": f"Basic {TOKENS['ltlrt']}"}
                    ).status_code == 401


def test_another_organisations_token_is_403(http):
    response = http.get("/v1/ltlrt/collections/articles/similar", params={"ids": ["d1"]},
                        headers=auth("bbc"))
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"


def test_an_organisation_without_a_token_cannot_be_reached(http):
    for token in (TOKENS["ltlrt"], TOKENS["bbc"], ""):
        response = http.get("/v1/rts/collections", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code in (401, 403)
    assert http.get("/v1/Not-A-Code/collections", headers=auth()).status_code == 403


def test_organisations_are_isolated(http):
    assert http.get("/v1/bbc/collections", headers=auth("bbc")).json() == []
    unknown = http.get("/v1/bbc/collections/articles/similar", params={"ids": ["d1"]},
                       headers=auth("bbc"))
    assert unknown.status_code == 404


def test_one_client_per_organisation_is_reused(app, http):
    organisations = app.state.organisations
    first = organisations.client("ltlrt")
    for _ in range(3):
        http.get("/v1/ltlrt/collections", headers=auth())
    assert organisations.client("ltlrt") is first


@pytest.mark.parametrize("request_args,status,fragment", [
    (("GET", "/v1/ltlrt/collections/nope/similar", {"params": {"ids": ["d1"]}}), 404,
     "collection 'nope' does not exist"),
    (("GET", "/v1/ltlrt/collections/articles/similar", {"params": {"ids": ["zz"]}}), 404,
     "'zz'"),
    (("GET", "/v1/ltlrt/collections/articles/similar",
      {"params": {"ids": ["d1"], "filter": "language = 'fr'"}}), 400, "filter_expr"),
    (("POST", "/v1/ltlrt/collections/articles/similar",
      {"json": {"ids": ["d1"], "filter": "no_such_field > 3"}}), 400, "filter_expr"),
    (("GET", "/v1/ltlrt/collections/articles/similar",
      {"params": {"ids": ["d1"], "limit": MAX_LIMIT + 1}}), 400,
     "limit must be an integer in [1, 50], not 51"),
    (("POST", "/v1/ltlrt/collections/articles/similar",
      {"json": {"ids": ["d1"], "limit": 10_000}}), 400, "[1, 50], not 10000"),
    (("POST", "/v1/ltlrt/collections/articles/similar", {"json": {"ids": ["d1"], "limit": 0}}),
     400, "limit"),
    (("POST", "/v1/ltlrt/collections/articles/similar",
      {"json": {"vectors": [1, 2], "limit": 3}}), 400, "dim"),
    (("POST", "/v1/ltlrt/collections/articles/similar", {"json": {}}), 400, "exactly one"),
    (("POST", "/v1/ltlrt/collections/articles/documents",
      {"json": {"documents": [{"id": "", "vec": [1, 0, 0, 0]}]}}), 400, "id"),
    (("POST", "/v1/ltlrt/collections/articles/documents/delete", {"json": {}}), 400,
     "refusing to delete everything"),
    (("POST", "/v1/ltlrt/collections/articles/similar",
      {"json": {"ids": ["d1"], "filter_expr": "year > 1", "filter": "year > 2"}}), 400,
     "not both"),
    (("POST", "/v1/ltlrt/collections/articles/similar",
      {"json": {"ids": ["d1"], "search_params": {"params": 5}}}), 400, "search_params"),
    (("GET", "/v1/ltlrt/collections/articles/count", {"params": {"filter_expr": "year >"}}), 400,
     "filter_expr"),
    (("POST", "/v1/ltlrt/collections/articles/documents",
      {"content": b'{"documents": [', "headers": {"content-type": "application/json"}}), 422,
     "JSON decode error"),
    (("POST", "/v1/ltlrt/collections/articles/similar",
      {"content": b'{"vectors": [NaN, 0, 0, 0]}',
       "headers": {"content-type": "application/json"}}), 400, "NaN"),
    # bodies the fast JSON parser refuses and json reads: they mean what they always meant
    (("POST", "/v1/ltlrt/collections/articles/similar",
      {"content": b'{"vectors": [-Infinity, 0, 0, 0]}',
       "headers": {"content-type": "application/json"}}), 400, "infinity"),
    (("POST", "/v1/ltlrt/collections/articles/similar",
      {"content": b'{"ids": ["d1"], "limit": 100000000000000000000000}',
       "headers": {"content-type": "application/json"}}), 400, "limit"),
    (("POST", "/v1/ltlrt/collections/articles/similar", {"json": {"idz": ["d1"]}}), 422,
     "idz"),
    (("POST", "/v1/ltlrt/collections/articles/similar", {"json": ["d1"]}), 422, "body"),
    (("GET", "/v1/ltlrt/collections/articles/similar", {"params": {"ids": ["d1"],
                                                                    "limit": "many"}}), 422,
     "limit"),
    (("PUT", "/v1/ltlrt/collections/bad%20name", {"json": SCHEMA}), 400, "'bad name' is invalid"),
    (("POST", "/v1/ltlrt/collections/articles/documents",
      {"content": b"x" * (MAX_BODY + 1), "headers": {"content-type": "application/json"}}),
     413, "maximum of 200000 bytes"),
])
def test_client_errors_get_a_4xx_json_body_never_a_500(http, request_args, status, fragment):
    method, url, kwargs = request_args
    headers = {**auth(), **kwargs.pop("headers", {})}
    response = http.request(method, url, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert fragment in body["detail"]
    assert "Traceback" not in response.text


def test_streamed_body_over_the_maximum_is_413(http):
    def chunks():
        for _ in range(5):
            yield b" " * (MAX_BODY // 4)

    response = http.post("/v1/ltlrt/collections/articles/documents", content=chunks(),
                         headers={**auth(), "content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


def test_tokens_never_appear_in_logs_or_responses(http, caplog):
    with caplog.at_level(logging.DEBUG):
        responses = [
            http.get("/v1/ltlrt/collections", headers=auth()),
            http.get("/v1/ltlrt/collections", headers=auth("bbc")),
            http.get("/v1/ltlrt/collections/nope", headers=auth()),
        ]
    for token in TOKENS.values():
        assert token not in caplog.text
        assert all(token not in r.text for r in responses)


def test_library_calls_run_in_the_threadpool(app):
    """Every endpoint is a plain function: FastAPI runs those in its threadpool, so the library's
    blocking calls never hold the event loop. Our one coroutine dependency is the authenticator
    (a token check; opening a Client goes to the threadpool: the next test)."""
    import inspect

    from fastapi.routing import APIRoute

    def ours(dependant):
        for dependency in dependant.dependencies:
            if inspect.isfunction(dependency.call):  # HTTPBearer's parsing is async and brief
                yield dependency.call
            yield from ours(dependency)

    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    assert len(routes) == len(ROUTES)
    for route in routes:
        assert not inspect.iscoroutinefunction(route.endpoint), route.path
        for call in ours(route.dependant):
            authenticator = call.__qualname__ == "authenticator.<locals>.organisation"
            assert authenticator or not inspect.iscoroutinefunction(call), f"{route.path}: {call.__qualname__}"


def test_an_organisation_client_opens_off_the_event_loop(tmp_path, monkeypatch):
    """The first request of an organisation opens its Client (seconds, on a server) in a worker
    thread, where no event loop runs; later requests reuse it."""
    import asyncio

    from lookalike.http.organisations import Organisations

    opened_in_loop: list[bool] = []
    original = Organisations.client

    def client(self, codops):
        try:
            asyncio.get_running_loop()
            opened_in_loop.append(True)
        except RuntimeError:
            opened_in_loop.append(False)
        return original(self, codops)

    monkeypatch.setattr(Organisations, "client", client)
    app = create_app(settings=Settings(codops="ltlrt", data_dir=tmp_path), environ=ENVIRON)
    with TestClient(app) as http:
        for _ in range(3):
            assert http.get("/v1/bbc/collections", headers=auth("bbc")).json() == []
    assert opened_in_loop == [False]


def test_openapi_document_validates_and_lists_every_route(http):
    from openapi_spec_validator import validate

    document = http.get("/openapi.json").json()
    validate(document)
    routes = {(method.upper(), path) for path, item in document["paths"].items()
              for method in item}
    assert routes == set(ROUTES)
    assert "HTTPBearer" in document["components"]["securitySchemes"]
    assert http.get("/docs").status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int, data_dir: Path, environ: dict[str, str]) -> subprocess.Popen:
    """`lookalike serve` in its own process; returns once /health answers (bounded wait)."""
    env = {**os.environ, **environ, "LOOKALIKE_DATA_DIR": str(data_dir), "CODOPS": "ltlrt"}
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("lookalike")), "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.kill()
    raise AssertionError(f"lookalike serve did not answer: {server.communicate()[0]}")


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_documented_curl_session_gives_the_documented_output(tmp_path):
    port = _free_port()
    tokens = {"CODOPS_LTLRT_API_TOKEN": "doc-token-a", "CODOPS_BBC_API_TOKEN": "doc-token-b"}
    server = _serve(port, tmp_path / "data", tokens)
    env = {**os.environ, "TOKEN": "doc-token-a", "BBC_TOKEN": "doc-token-b"}
    try:
        for command, expected in documented_session("http.md"):
            command = command.replace("127.0.0.1:8765", f"127.0.0.1:{port}")
            done = subprocess.run(["bash", "-c", command], env=env, text=True,
                                  capture_output=True, timeout=120)
            assert done.stdout.strip("\n") == expected, f"docs/http.md: `{command}`"
    finally:
        server.terminate()
        server.communicate(timeout=60)


def test_real_uvicorn_process(tmp_path):
    """`lookalike serve` in its own process, called over TCP with httpx."""
    port = _free_port()
    server = _serve(port, tmp_path / "data", ENVIRON)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            assert client.get("/ready").json() == {"status": "ready", "collections": {}}
            created = client.put("/v1/ltlrt/collections/live", json=SCHEMA, headers=auth())
            assert created.status_code == 201
            assert client.post("/v1/ltlrt/collections/live/documents",
                               json={"documents": _docs(10)}, headers=auth()
                               ).json() == {"indexed": 10}
            hits = client.get("/v1/ltlrt/collections/live/similar",
                              params={"ids": ["d4"], "limit": 3}, headers=auth()).json()
            assert hits[0]["id"] == "d4" and len(hits) == 3
            assert client.get("/v1/ltlrt/collections").status_code == 401
            assert client.get("/v1/ltlrt/collections", headers=auth("bbc")).status_code == 403
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=60)
    for token in TOKENS.values():
        assert token not in output
