"""The HTTP service: one route per library call, named after it, for every organisation.

Each route authenticates the organisation in its path (``organisations.py``), calls the one
:class:`~lookalike.client.Client` method of the same name, and answers its result as JSON; a
library error answers with the status it carries (``errors.py``). The routes are plain ``def``
functions: FastAPI runs them, and so the library's blocking calls, in its threadpool, and the
event loop stays free. The OpenAPI document (``/openapi.json``) names each operation after its
library call and declares every status a route answers, with the model of its body.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' local Annotated aliases.
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Annotated, Any

import pydantic_core
from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute

from .. import __version__
from ..client import Client
from ..config import Settings
from ..embedding import registered_embedder
from ..errors import LookalikeError
from ..retrieval import SimilarRequest, check_limit
from ..schema import creation_options
from . import explorer
from .errors import declared, error_response, install_error_handlers
from .limits import BodyLimit, max_body_from, max_limit_from
from .models import (
    FILTER_ALIAS_DESCRIPTION,
    FILTER_DESCRIPTION,
    FUSION_DESCRIPTION,
    FUSION_K_DESCRIPTION,
    FUSION_WEIGHTS_DESCRIPTION,
    KEYWORDS_DESCRIPTION,
    KEYWORDS_FIELD_DESCRIPTION,
    Cluster,
    ClusterRequest,
    CollectionDescription,
    CollectionSchema,
    Count,
    Deleted,
    DeleteDocumentsRequest,
    Document,
    Dropped,
    Error,
    Fusion,
    Hit,
    Indexed,
    IndexRequest,
    IndexState,
    MapRequest,
    MapSample,
    NearDuplicates,
    NearDuplicatesRequest,
    Readiness,
    RetrieveSimilarBatchRequest,
    RetrieveSimilarRequest,
    Status,
    Strategy,
    one_filter,
)
from .organisations import Organisations, authenticator

# A wait for the index holds one of the service's worker threads: bounded, unlike the library's.
DEFAULT_WAIT_SECONDS = 60.0
MAX_WAIT_SECONDS = 600.0

COLLECTIONS = "/v1/{codops}/collections"
COLLECTION = COLLECTIONS + "/{name}"

# What every /v1 route may answer besides its own success: no token or another organisation's,
# a path that matches no route (a parameter holding '/'), a malformed request, a failed engine.
_ANY = (401, 403, 404, 422, 503)
_READ = declared(400, *_ANY)
_WRITE = declared(400, *_ANY, 409, 413, 507)


class _JSON(JSONResponse):
    """JSON that also writes the NumPy values a library result may hold."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                          default=lambda v: v.tolist()).encode("utf-8")


class _JSONRequest(Request):
    """A request whose JSON body pydantic's parser reads: ~9× json's speed on a vector's floats
    (0.026 against 0.23 ms for 768), on the event loop every request shares (json's parse was
    17% of the service's busy time at 16 requests in flight). It reads every body json reads as
    json does (big integers, NaN and ±Infinity included: tests/test_service.py); what it refuses
    (a lone surrogate, a byte-order mark, UTF-16) goes to json, so every body means what it did."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body, allow_inf_nan=True)
            except ValueError:
                self._json = json.loads(body)
        return self._json


class _Route(APIRoute):
    """Every route's request is a :class:`_JSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_JSONRequest(request.scope, request.receive))

        return route


class JSONLines(StreamingResponse):
    """A stream of JSON Lines: the text of an export file."""

    media_type = "application/x-ndjson"


def create_app(
    client: Client | None = None,
    settings: Settings | None = None,
    *,
    max_limit: int | None = None,
    max_body_bytes: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> FastAPI:
    """The HTTP service.

    Args:
        client: an open Client to serve for its own organisation (others open lazily); the
            caller closes it.
        settings: the URI and data directory every organisation's Client uses (default: from
            the environment).
        max_limit: the largest ``limit`` accepted (``LOOKALIKE_HTTP_MAX_LIMIT``, default 1000).
        max_body_bytes: the largest request body (``LOOKALIKE_HTTP_MAX_BODY_BYTES``, default
            32 MiB).
        environ: where tokens and passwords are read (default ``os.environ``, read per request,
            so a rotated token takes effect without a restart).

    Returns:
        The FastAPI application (serve it with uvicorn, or ``lookalike serve``).
    """
    env = os.environ if environ is None else environ
    settings = settings or (client.settings if client else Settings.from_env(env))
    max_limit = max_limit or max_limit_from(env)
    max_body_bytes = max_body_bytes or max_body_from(env)
    organisations = Organisations(
        settings, env, {client.settings.codops: client} if client is not None else None)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        organisations.close()

    app = FastAPI(
        title="lookalike",
        version=__version__,
        summary="Store embeddings with metadata and find similar items, per organisation.",
        default_response_class=_JSON,
        lifespan=lifespan,
    )
    app.router.route_class = _Route
    app.state.organisations = organisations
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    install_error_handlers(app)

    Org = Annotated[Client, Depends(authenticator(organisations))]
    Name = Annotated[str, Path(description="collection name")]
    Filter = Annotated[str | None, Query(description=FILTER_DESCRIPTION)]
    FilterAlias = Annotated[str | None, Query(description=FILTER_ALIAS_DESCRIPTION, deprecated=True)]
    Fields = Annotated[list[str] | None, Query(description="fields to return (repeat)")]

    # -- the service itself ------------------------------------------------------------------

    @app.get("/health", tags=["service"], operation_id="health", response_model=Status)
    def health() -> Response:
        """Liveness: the process answers (no token needed)."""
        return _JSON({"status": "ok"})

    @app.get("/ready", tags=["service"], operation_id="ready", response_model=Readiness,
             responses={503: {"model": Error, "description": "the engine cannot be reached"}})
    def ready() -> Response:
        """Readiness: the engine answers for the service's own organisation (``CODOPS``); the index
        state of each of its collections (ready either way: searches are correct while they build)."""
        try:
            client = organisations.client(settings.codops)
            states = {name: client.collection(name).describe()["index"] for name in client.list_collections()}
        except LookalikeError as exc:
            return error_response(503, "not_ready", str(exc))
        return _JSON({"status": "ready", "collections": states})

    # -- collections -------------------------------------------------------------------------

    @app.get(COLLECTIONS, tags=["collections"], operation_id="list_collections",
             response_model=list[str], responses=declared(*_ANY))
    def list_collections(client: Org) -> Response:
        """The organisation's collection names, sorted."""
        return _JSON(client.list_collections())

    @app.put(COLLECTION, tags=["collections"], operation_id="create_collection",
             response_model=CollectionDescription,
             responses={201: {"model": CollectionDescription, "description": "created"}, **_WRITE})
    def create_collection(client: Org, name: Name, schema: CollectionSchema) -> Response:
        """Create the collection: 201 when created, 200 when it exists with this schema, 409 with another."""
        existed = client.has_collection(name)
        options = creation_options(schema.to_spec_json())
        if "embedder" in options:
            # Over HTTP only registered models: never a directory on the service's machine.
            options["embedder"] = registered_embedder(options["embedder"])
        collection = client.create_collection(name, **options)
        return _JSON(collection.describe(), status_code=200 if existed else 201)

    @app.get(COLLECTION, tags=["collections"], operation_id="describe",
             response_model=CollectionDescription, responses=_READ)
    def describe(client: Org, name: Name) -> Response:
        """The collection's schema, indexes, engine and document count."""
        return _JSON(client.describe(name))

    @app.get(COLLECTION + "/wait_for_index", tags=["collections"], operation_id="wait_for_index",
             response_model=IndexState, responses=declared(400, *_ANY, 504))
    def wait_for_index(client: Org, name: Name, timeout: Annotated[float, Query(
            ge=0, le=MAX_WAIT_SECONDS, description="seconds to wait at most")] = DEFAULT_WAIT_SECONDS) -> Response:
        """Wait until the vector index covers every document indexed before the request; 504 past
        ``timeout`` (the build goes on)."""
        return _JSON(client.wait_for_index(name, timeout))

    @app.delete(COLLECTION, tags=["collections"], operation_id="drop_collection",
                response_model=Dropped, responses=declared(400, *_ANY, 507))
    def drop_collection(client: Org, name: Name) -> Response:
        """Drop the collection and its documents (``dropped`` is false when there was none)."""
        return _JSON({"dropped": client.drop_collection(name)})

    @app.get(COLLECTION + "/count", tags=["collections"], operation_id="count",
             response_model=Count, responses=_READ)
    def count(client: Org, name: Name, filter_expr: Filter = None,
              filter: FilterAlias = None) -> Response:
        """How many documents are stored, or match ``filter_expr``."""
        return _JSON({"count": client.count(name, one_filter(filter_expr, filter))})

    @app.get(COLLECTION + "/export", tags=["collections"], operation_id="export",
             response_class=JSONLines, responses={
                 200: {"description": "the header line (version, collection, spec, count), then "
                                      "one document a line, vectors included: the text "
                                      "`lookalike export` writes to a .jsonl file",
                       "content": {JSONLines.media_type: {"schema": {"type": "string"}}}},
                 **declared(400, *_ANY, by_reference=True)})
    def export(client: Org, name: Name) -> Response:
        """Every document and the collection's spec, streamed as JSON Lines (import it with
        ``lookalike import``)."""
        lines = client.collection(name).export_lines()  # the header is read here
        return JSONLines(lines, headers={
            "Content-Disposition": f'attachment; filename="{name}.jsonl"'})

    # -- documents ---------------------------------------------------------------------------

    @app.post(COLLECTION + "/documents", tags=["documents"], operation_id="index",
              response_model=Indexed, responses=_WRITE)
    def index(client: Org, name: Name, body: IndexRequest) -> Response:
        """Store documents (replacing those with the same id unless ``upsert`` is false).

        A request answered with an error stores none of its documents."""
        return _JSON({"indexed": client.index(name, body.documents, normalize=body.normalize,
                                              upsert=body.upsert)})

    @app.get(COLLECTION + "/documents", tags=["documents"], operation_id="get_documents",
             response_model=list[Document], responses=_READ)
    def get_documents(
        client: Org,
        name: Name,
        ids: Annotated[list[str], Query(description="ids to fetch (repeat)")],
        output_fields: Fields = None,
    ) -> Response:
        """Stored documents in the order of ``ids``; ids not stored are left out."""
        return _JSON(client.get_documents(name, ids, output_fields))

    @app.post(COLLECTION + "/documents/delete", tags=["documents"],
              operation_id="delete_documents", response_model=Deleted,
              responses=declared(400, *_ANY, 413, 507))
    def delete_documents(client: Org, name: Name, body: DeleteDocumentsRequest) -> Response:
        """Delete documents by ``ids``, by ``filter_expr``, or both (a POST: a DELETE has no body)."""
        return _JSON({"deleted": client.delete_documents(
            name, body.ids, one_filter(body.filter_expr, body.filter))})

    # -- similarity --------------------------------------------------------------------------

    @app.post(COLLECTION + "/similar", tags=["similar"], operation_id="retrieve_similar",
              response_model=list[Hit], responses=declared(400, *_ANY, 413))
    def retrieve_similar(client: Org, name: Name, query: RetrieveSimilarRequest) -> Response:
        """The documents most similar to ids, vectors or texts, or matching ``keywords`` in a
        full-text field, or both (a hybrid search, fused), best first."""
        return _JSON(client.retrieve_similar(name, query.to_request(max_limit)))

    @app.post(COLLECTION + "/similar/batch", tags=["similar"], operation_id="retrieve_similar_batch",
              response_model=list[list[Hit]], responses=declared(400, *_ANY, 413))
    def retrieve_similar_batch(client: Org, name: Name, body: RetrieveSimilarBatchRequest) -> Response:
        """Many similarity queries in one call: one list of hits per request, in their order,
        each the answer ``retrieve_similar`` gives it (each limit held to the service's maximum)."""
        return _JSON(client.retrieve_similar_batch(name, body.to_requests(max_limit)))

    @app.get(COLLECTION + "/similar", tags=["similar"], operation_id="retrieve_similar_by_ids",
             response_model=list[Hit], responses=_READ)
    def retrieve_similar_by_ids(
        client: Org,
        name: Name,
        ids: Annotated[list[str], Query(description="stored ids to start from (repeat)")],
        filter_expr: Filter = None,
        filter: FilterAlias = None,
        limit: Annotated[int, Query(description="the number of hits (at most the service's "
                                                "maximum)", json_schema_extra={"minimum": 1})] = 10,
        exclude_ids: Annotated[bool, Query(
            description="leave the query's own ids (and negative_ids) out of the hits; a list of "
                        "ids to leave out goes in the POST body")] = False,
        output_fields: Fields = None,
        negative_ids: Annotated[list[str] | None, Query(
            description="stored ids to steer away from (repeat)")] = None,
        strategy: Annotated[Strategy | None, Query(
            description="average_vector (default) or best_score")] = None,
        weights: Annotated[list[float] | None, Query(
            description="one weight per id (repeat, in the order of ids)")] = None,
        offset: Annotated[int | None, Query(
            description="hits (groups with group_by) to skip first, for paging",
            json_schema_extra={"minimum": 0})] = None,
        group_by: Annotated[str | None, Query(
            description="a scalar field: at most group_size hits per value")] = None,
        group_size: Annotated[int | None, Query(
            description="hits per group with group_by (default 1)",
            json_schema_extra={"minimum": 1})] = None,
        diversity: Annotated[float | None, Query(
            description="maximal marginal relevance in [0, 1] (0: the plain ranking)",
            json_schema_extra={"minimum": 0, "maximum": 1})] = None,
        candidates: Annotated[int | None, Query(
            description="how many nearest items the rescoring steps choose from",
            json_schema_extra={"minimum": 1})] = None,
        min_score: Annotated[float | None, Query(
            description="leave out hits scoring below it (above it for L2)")] = None,
        explain: Annotated[bool, Query(description="give each hit an explain object")] = False,
        keywords: Annotated[str | None, Query(description=KEYWORDS_DESCRIPTION)] = None,
        fusion: Annotated[Fusion | None, Query(description=FUSION_DESCRIPTION)] = None,
        fusion_k: Annotated[int | None, Query(description=FUSION_K_DESCRIPTION,
                                              json_schema_extra={"minimum": 1})] = None,
        fusion_weights: Annotated[list[float] | None, Query(
            description=FUSION_WEIGHTS_DESCRIPTION + " (repeat: meaning, then keywords)")] = None,
        keywords_field: Annotated[str | None, Query(description=KEYWORDS_FIELD_DESCRIPTION)] = None,
    ) -> Response:
        """``retrieve_similar`` by stored ids, in a URL: the documents most similar to ``ids``
        (with ``keywords``: a hybrid search; ``recency`` and an exclusion list need the POST
        body)."""
        given = {key: value for key, value in {
            "negative_ids": negative_ids, "strategy": strategy, "weights": weights,
            "offset": offset, "group_by": group_by, "group_size": group_size,
            "diversity": diversity, "candidates": candidates, "min_score": min_score,
            "explain": explain or None, "keywords": keywords, "fusion": fusion,
            "fusion_k": fusion_k, "fusion_weights": fusion_weights,
            "keywords_field": keywords_field}.items() if value is not None}
        return _JSON(client.retrieve_similar(name, SimilarRequest(
            ids=ids, filter_expr=one_filter(filter_expr, filter),
            limit=check_limit(limit, max_limit), exclude_ids=exclude_ids,
            output_fields=output_fields, **given)))

    # -- the map -----------------------------------------------------------------------------

    @app.post(COLLECTION + "/map", tags=["map"], operation_id="map_sample",
              response_model=MapSample, responses=declared(400, *_ANY, 413))
    def map_sample(client: Org, name: Name, body: MapRequest) -> Response:
        """A 2-D map (PCA) of a sample of the collection, with ``ids`` and ``texts`` placed on it."""
        return _JSON(client.map_sample(name, **body.options()))

    @app.get(COLLECTION + "/map", tags=["map"], operation_id="map_sample_in_url",
             response_model=MapSample, responses=_READ)
    def map_sample_in_url(
        client: Org,
        name: Name,
        sample: Annotated[int, Query(description="documents to sample, in [2, 20000]")] = 2000,
        seed: Annotated[int, Query(description="picks the sample")] = 0,
        color_field: Annotated[str | None, Query(description="a scalar field each point carries "
                                                             "as `color`")] = None,
        ids: Annotated[list[str] | None, Query(description="stored ids to place on the map "
                                                           "(repeat)")] = None,
    ) -> Response:
        """``map_sample`` in a URL (texts to place need the POST body)."""
        return _JSON(client.map_sample(name, sample=sample, seed=seed, color_field=color_field, ids=ids))

    # -- clusters and near-duplicates --------------------------------------------------------

    @app.post(COLLECTION + "/cluster", tags=["clusters"], operation_id="cluster",
              response_model=list[Cluster], responses=declared(400, *_ANY, 413, 507))
    def cluster(client: Org, name: Name, body: ClusterRequest) -> Response:
        """Group the documents by k-means (``k``) or by a similarity ``threshold``: each cluster's
        size, medoid, members and distinguishing words; ``field`` receives each label."""
        return _JSON(client.cluster(name, **body.options()))

    @app.post(COLLECTION + "/near-duplicates", tags=["clusters"], operation_id="near_duplicates",
              response_model=NearDuplicates, responses=declared(400, *_ANY, 413))
    def near_duplicates(client: Org, name: Name, body: NearDuplicatesRequest) -> Response:
        """Pairs of documents at or above ``threshold`` (a batched self-search of the index) and
        the groups they link."""
        return _JSON(client.near_duplicates(name, **body.options()))

    explorer.install(app)
    return app
