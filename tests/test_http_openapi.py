"""The OpenAPI document is true: a client generated from it works, and a fuzzer run from it finds
no answer it does not declare, and no 5xx.

Both run against a live service (uvicorn on loopback, embedded engine) with a valid token and an
existing collection, as a client would see it.
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lookalike.config import Settings
from lookalike.http.app import create_app
from lookalike.http.background import serving
from lookalike.http.models import Error, ValidationErrorBody

TOKENS = {"ltlrt": "openapi-token-ltlrt", "bbc": "openapi-token-bbc"}
ENVIRON = {f"CODOPS_{code.upper()}_API_TOKEN": token for code, token in TOKENS.items()}
AUTH = {"Authorization": f"Bearer {TOKENS['ltlrt']}"}
# `text` is a full-text field: the fuzzer's keyword searches reach the engine's BM25 route.
SCHEMA = {
    "dim": 4,
    "fields": [{"name": "language", "type": "varchar", "max_length": 16},
               {"name": "year", "type": "int64"},
               {"name": "text", "type": "varchar", "max_length": 256, "enable_analyzer": True}],
    "indexes": {"vec": {"index_type": "HNSW", "metric_type": "IP", "M": 16}, "language": None},
}
# The library's calls, one operation each (retrieve_similar twice: a JSON body, or ids in the URL).
OPERATIONS = {
    "health", "ready", "list_collections", "create_collection", "describe", "drop_collection",
    "count", "export", "index", "get_documents", "delete_documents", "retrieve_similar",
    "retrieve_similar_by_ids", "retrieve_similar_batch", "map_sample", "map_sample_in_url",
    "cluster", "near_duplicates", "wait_for_index",
}


class _ServerErrors(logging.Handler):
    """Counts what the service logs at ERROR: every 5xx it answers, and any crash in uvicorn."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


@pytest.fixture(scope="module")
def server_errors() -> Iterator[_ServerErrors]:
    handler = _ServerErrors()
    loggers = [logging.getLogger(name) for name in ("lookalike.http", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, server_errors: _ServerErrors) -> Iterator[str]:
    """A live service with collection ``articles`` (20 documents) for organisation ltlrt."""
    settings = Settings(codops="ltlrt", data_dir=tmp_path_factory.mktemp("openapi-data"))
    app = create_app(settings=settings, environ=ENVIRON, max_limit=50, max_body_bytes=200_000)
    with serving(app) as url:
        assert httpx.put(f"{url}/v1/ltlrt/collections/articles", json=SCHEMA,
                         headers=AUTH).status_code == 201
        documents = [{"id": f"d{i}", "vec": [1.0, float(i), 0.0, 1.0], "language": "en",
                      "year": 2000 + i, "text": f"article {i} about the year {2000 + i}"}
                     for i in range(20)]
        assert httpx.post(f"{url}/v1/ltlrt/collections/articles/documents",
                          json={"documents": documents}, headers=AUTH).json() == {"indexed": 20}
        yield url


def test_operations_are_named_after_the_library_calls_and_declare_their_errors(live):
    document = httpx.get(f"{live}/openapi.json").json()
    operations = {op["operationId"]: op for item in document["paths"].values()
                  for op in item.values()}
    assert set(operations) == OPERATIONS
    for name, operation in operations.items():
        if not name.startswith(("health", "ready")):
            assert {"401", "403", "422", "503"} <= set(operation["responses"]), name
    error = {"$ref": "#/components/schemas/Error"}
    unprocessable = {"$ref": "#/components/schemas/ValidationErrorBody"}
    similar = operations["retrieve_similar"]["responses"]
    assert similar["400"]["content"]["application/json"]["schema"] == error
    assert similar["422"]["content"]["application/json"]["schema"] == unprocessable
    assert similar["200"]["content"]["application/json"]["schema"] == {
        "type": "array", "items": {"$ref": "#/components/schemas/Hit"}, "title": "Response Retrieve Similar"}
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_the_422_body_is_the_declared_model(live):
    response = httpx.post(f"{live}/v1/ltlrt/collections/articles/similar", content=b'{"ids": [',
                          headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 422
    body = ValidationErrorBody.model_validate(response.json())
    assert body.error == "validation_error" and body.errors[0].type == "json_invalid"
    refused = httpx.get(f"{live}/v1/ltlrt/collections")
    assert Error.model_validate(refused.json()).error == "unauthenticated"


def _generate_client(url: str, into: Path) -> None:
    """openapi-python-client, from the live service's document, as a package in ``into``."""
    (into / "openapi.json").write_text(httpx.get(f"{url}/openapi.json").text)
    # No formatter hooks (they need ruff on PATH); the export's JSON Lines read as text.
    (into / "generator.yaml").write_text(
        "post_hooks: []\npackage_name_override: lookalike_http_client\n"
        "content_type_overrides:\n  application/x-ndjson: text/plain\n")
    done = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path",
         str(into / "openapi.json"), "--meta", "none", "--config", str(into / "generator.yaml"),
         "--output-path", str(into / "lookalike_http_client"), "--fail-on-warning"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_generated_client_calls_every_route(live, tmp_path, monkeypatch):
    _generate_client(live, tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        _call_through_generated_client(live)
    finally:
        for module in [m for m in sys.modules if m.split(".")[0] == "lookalike_http_client"]:
            del sys.modules[module]


def _call_through_generated_client(url: str) -> None:
    gen = importlib.import_module("lookalike_http_client")
    api = {name: importlib.import_module(f"lookalike_http_client.api.{tag}.{name}")
           for tag, names in {"service": ["health"],
                              "collections": ["create_collection", "describe", "list_collections",
                                              "count", "export", "drop_collection", "wait_for_index"],
                              "documents": ["index", "get_documents", "delete_documents"],
                              "similar": ["retrieve_similar", "retrieve_similar_by_ids",
                                          "retrieve_similar_batch"],
                              # the generator names the module of tag "map" map_ (a builtin's name)
                              "map_": ["map_sample", "map_sample_in_url"],
                              "clusters": ["cluster", "near_duplicates"]}.items()
           for name in names}
    models = importlib.import_module("lookalike_http_client.models")
    client = gen.AuthenticatedClient(base_url=url, token=TOKENS["ltlrt"], raise_on_unexpected_status=True)
    org = {"client": client, "codops": "ltlrt", "name": "generated"}

    assert api["health"].sync(client=client).status == "ok"
    schema = models.CollectionSchema.from_dict(SCHEMA)
    created = api["create_collection"].sync_detailed(body=schema, **org)
    assert created.status_code == 201 and created.parsed.dim == 4
    assert api["create_collection"].sync_detailed(body=schema, **org).status_code == 200
    documents = [models.IndexRequestDocumentsItem.from_dict(
        {"id": f"g{i}", "vec": [float(i == j) for j in range(4)], "language": "fr", "year": i,
         "text": ("the ICE 1127 is late" if i == 3 else f"note number {i}")})
        for i in range(4)]
    assert api["index"].sync(body=models.IndexRequest(documents=documents), **org).indexed == 4
    state = api["wait_for_index"].sync(timeout=120.0, **org)
    assert (state.indexed_rows, state.pending_rows, state.built) == (4, 0, True)
    assert api["describe"].sync(**org).index.built

    got = api["get_documents"].sync(ids=["g2", "nope"], output_fields=["year"], **org)
    assert [(d.id, d.additional_properties) for d in got] == [("g2", {"year": 2})]
    query = models.RetrieveSimilarRequest(vectors=[0.0, 0.0, 1.0, 0.0], limit=2,
                                          filter_expr='language == "fr"', output_fields=["year"])
    hits = api["retrieve_similar"].sync(body=query, **org)
    assert hits[0].id == "g2" and hits[0].additional_properties == {"year": 2} and len(hits) == 2
    by_ids = api["retrieve_similar_by_ids"].sync(ids=["g1"], limit=1, **org)
    assert [h.id for h in by_ids] == ["g1"]
    # the recommendation parameters, typed: an exclusion list, groups, recency, explain
    recommend = models.RetrieveSimilarRequest(
        ids=["g1", "g2"], negative_ids=["g3"], exclude_ids=["g1"], group_by="language", limit=2,
        offset=0, diversity=0.0, min_score=-1.0, explain=True, output_fields=["year"],
        recency=models.Recency(field="year", scale=10.0, origin=3.0))
    recommended = api["retrieve_similar"].sync(body=recommend, **org)
    # the query 2·mean(g1, g2) − g3 is nearest g1 and g2; g1 is excluded; one group (all French)
    assert [h.id for h in recommended] == ["g2"]
    assert recommended[0].explain is not None and recommended[0].explain.additional_properties
    # keywords and meaning together, typed: the keyword match g3 comes up beside g1
    hybrid = api["retrieve_similar"].sync(body=models.RetrieveSimilarRequest(
        ids=["g1"], keywords="ICE 1127", fusion="rrf", fusion_k=60, keywords_field="text",
        limit=2, explain=True), **org)
    assert {h.id for h in hybrid} == {"g1", "g3"}
    routes = {h.id: h.explain.additional_properties for h in hybrid}
    assert routes["g3"]["keywords"]["rank"] == 1 and routes["g1"]["dense"]["rank"] == 1
    weighted = api["retrieve_similar_by_ids"].sync(
        ids=["g1"], keywords="ICE 1127", fusion="weighted", fusion_weights=[0.0, 1.0], limit=1,
        **org)
    assert [h.id for h in weighted] == ["g3"]
    paged = api["retrieve_similar_by_ids"].sync(ids=["g1"], limit=1, offset=1, explain=True, **org)
    assert len(paged) == 1 and paged[0].id != "g1"
    # (a query with no tie among its hits: tied hits may come in either order)
    untied = models.RetrieveSimilarRequest(vectors=[0.0, 0.3, 1.0, 0.0], limit=2)
    batch = api["retrieve_similar_batch"].sync(body=models.RetrieveSimilarBatchRequest(
        requests=[untied, recommend]), **org)
    assert [[h.id for h in answer] for answer in batch] == [["g2", "g1"], ["g2"]]
    assert api["count"].sync(filter_expr="year >= 2", **org).count == 2
    assert api["describe"].sync(**org).count == 4
    mapped = api["map_sample"].sync(body=models.MapRequest(sample=3, seed=1, color_field="language",
                                                           ids=["g1"]), **org)
    assert (mapped.sample, mapped.count, [p.id for p in mapped.projected]) == (3, 4, ["g1"])
    assert {p.color for p in mapped.points} == {"fr"} and len(mapped.basis.components) == 2
    assert api["map_sample_in_url"].sync(sample=3, seed=1, color_field="language", **org).points == mapped.points
    clustered = api["cluster"].sync(body=models.ClusterRequest(k=2, seed=1), **org)
    assert sorted(i for c in clustered for i in c.ids) == ["g0", "g1", "g2", "g3"]
    assert [c.label for c in clustered] == [0, 1] and clustered[0].medoid in clustered[0].ids
    duplicates = api["near_duplicates"].sync(body=models.NearDuplicatesRequest(threshold=0.5), **org)
    assert (duplicates.pairs, duplicates.groups) == ([], [])  # four orthogonal vectors
    lines = api["export"].sync(**org).splitlines()
    assert json.loads(lines[0])["$lookalike"]["count"] == 4 and len(lines) == 5

    deleted = api["delete_documents"].sync(body=models.DeleteDocumentsRequest(ids=["g0"]), **org)
    assert deleted.deleted == 1 and api["count"].sync(**org).count == 3
    refused = api["retrieve_similar"].sync_detailed(
        body=models.RetrieveSimilarRequest(vectors=[1.0, 0.0]), **org)
    assert refused.status_code == 400 and isinstance(refused.parsed, models.Error)
    assert "generated" in api["list_collections"].sync(client=client, codops="ltlrt")
    assert api["drop_collection"].sync(**org).dropped is True
    missing = api["describe"].sync_detailed(**org)
    assert missing.status_code == 404 and missing.parsed.error == "not_found"


def _fuzz(url: str, workdir: Path, max_examples: int, seed: int | None) -> dict:
    """schemathesis, every default check and phase, on ``url``; returns its JSON report."""
    config = workdir / "schemathesis.toml"
    config.write_text(f'''
headers = {{ Authorization = "Bearer {TOKENS['ltlrt']}" }}
request-timeout = 30

[parameters]
"path.codops" = "ltlrt"
"path.name" = "articles"

# Dropping the one collection would leave the other operations nothing to reach.
[[operations]]
include-operation-id = "drop_collection"
parameters = {{ "path.name" = "scratch" }}

# A request the schema allows may still break one of the library's value rules the schema
# cannot state (a filter's grammar, a vector of the collection's dimension, its fields): 400.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
''')
    report = workdir / "schemathesis.json"
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
               "run", f"{url}/openapi.json", "--max-examples", str(max_examples),
               "--report", "json", "--report-json-path", str(report)]
    if seed is not None:
        command += ["--seed", str(seed)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=540, cwd=workdir)
    summary = done.stdout[done.stdout.rfind("SUMMARY"):]
    print(summary)  # the figures, for the record (pytest -s)
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert done.returncode == 0 and not result["failures"] and not result["errors"], done.stdout[-6000:]
    return result


def _check_fuzz(result: dict, server_errors: _ServerErrors, at_least: int) -> None:
    assert result["operations"]["tested"] == len(OPERATIONS)
    assert result["test_cases"]["generated"] >= at_least
    assert result["test_cases"]["with_failures"] == 0
    assert server_errors.records == []  # no 5xx answered, no crash


def test_schemathesis_finds_no_failure_and_no_5xx(live, tmp_path, server_errors):
    """Bounded: 15 examples an operation and phase, a fixed seed (~10 s)."""
    _check_fuzz(_fuzz(live, tmp_path, max_examples=15, seed=20261204), server_errors, 500)


@pytest.mark.slow
def test_schemathesis_at_length(live, tmp_path, server_errors):
    """200 examples an operation and phase, a new seed each run (a few minutes)."""
    _check_fuzz(_fuzz(live, tmp_path, max_examples=200, seed=None), server_errors, 3000)
