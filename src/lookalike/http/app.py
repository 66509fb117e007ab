"""The HTTP service: FastAPI routes over the library, one organisation per path prefix.

Each request to ``/v1/{codops}/...`` must carry ``Authorization: Bearer <token>`` where the token
is that organisation's ``CODOPS_<CODE>_API_TOKEN``. One :class:`~lookalike.client.Client` per
organisation is opened on first use and shared by every request after it; the routes are plain
``def`` functions, so FastAPI runs the library's blocking calls in its threadpool and the event
loop stays free. Errors become JSON ``{"error": kind, "detail": message}`` with a 4xx status.
"""

import contextlib
import dataclasses
import hmac
import json
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..client import Client
from ..config import Secret, Settings, password_variable, validate_codops
from ..errors import (
    InvalidInputError,
    LookalikeError,
)
from ..schema import creation_options

log = logging.getLogger(__name__)

DEFAULT_MAX_LIMIT = 1000
# 1,000 documents of 768 float32 values as JSON text are ~13 MB: a batch that size fits.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
_TOKEN_VARIABLE = re.compile(r"^CODOPS_([A-Z][A-Z0-9]{1,31})_API_TOKEN$")


def token_variable(codops: str) -> str:
    """The environment variable that holds an organisation's API token."""
    return f"CODOPS_{validate_codops(codops).upper()}_API_TOKEN"


class Organisations:
    """One shared Client per organisation, opened lazily and reused for the process's life.

    Every organisation's Client uses the same URI and data directory as ``settings``; its Milvus
    password comes from ``CODOPS_<CODE>_MILVUS_PASSWORD``.
    """

    def __init__(self, settings: Settings, environ: Mapping[str, str],
                 clients: Mapping[str, Client] | None = None) -> None:
        self.settings = settings
        self.environ = environ
        self._clients: dict[str, Client] = dict(clients or {})
        self._given = set(self._clients)  # the caller's to close, not ours
        self._lock = threading.Lock()

    def client(self, codops: str) -> Client:
        with self._lock:  # two first requests must not open two clients
            if codops not in self._clients:
                settings = dataclasses.replace(
                    self.settings,
                    codops=codops,
                    password=Secret(self.environ.get(password_variable(codops), "")),
                )
                self._clients[codops] = Client(settings)
            return self._clients[codops]

    def tokens(self) -> dict[str, str]:
        """Organisation code -> configured API token (organisations with none are absent)."""
        found = {}
        for name, value in self.environ.items():
            match = _TOKEN_VARIABLE.match(name)
            if match and value:
                found[match.group(1).lower()] = value
        return found

    def close(self) -> None:
        with self._lock:
            for code, client in self._clients.items():
                if code not in self._given:
                    with contextlib.suppress(LookalikeError):
                        client.close()
            self._clients.clear()


class _BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _too_large(self.max_bytes)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # FastAPI re-raises an HTTPException met while reading the body
                raise HTTPException(413, _too_large_detail(self.max_bytes))
            return message

        await self.app(scope, limited, send)


def _too_large_detail(max_bytes: int) -> str:
    return f"the request body is larger than the service's maximum of {max_bytes} bytes"


def _too_large(max_bytes: int) -> JSONResponse:
    return _error(413, "body_too_large", _too_large_detail(max_bytes))


def _error(status: int, kind: str, detail: str, headers: dict[str, str] | None = None
           ) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


class _JSON(JSONResponse):
    """JSON that also writes the NumPy values a library result may hold."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                          default=lambda v: v.tolist()).encode("utf-8")


# -- request bodies (their JSON Schema is the OpenAPI document's) --------------------------------

class CollectionSchema(BaseModel):
    """The JSON shape of ``Collection.spec.to_json()``; ``create_collection`` validates it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "dim": 768,
        "fields": [{"name": "language", "type": "varchar", "max_length": 16},
                   {"name": "publication_date", "type": "int64"}],
        "indexes": {"vec": {"index_type": "HNSW", "metric_type": "IP", "M": 32},
                    "language": None},
    }]})

    dim: int = Field(768, description="vector dimension")
    fields: list[dict[str, Any]] = Field(
        default_factory=list, description='metadata fields: {"name", "type", "max_length"?}')
    indexes: dict[str, Any] | None = Field(
        None, description='"vec": vector index parameters; a field name: null or its index type')
    embedder: str | dict[str, Any] | None = Field(
        None, description='a text embedding model to bind: its name, or {"name": ...}')


class SimilarRequest(BaseModel):
    """Query by stored ids, by vectors or by texts (exactly one)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = None
    vectors: list[list[float]] | list[float] | None = None
    texts: list[str] | None = None
    filter: str | None = Field(None, description="a Milvus boolean expression")
    limit: int = 10
    exclude_ids: bool = False
    output_fields: list[str] | None = None
    search_params: dict[str, Any] | None = None


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[dict[str, Any]] = Field(description='{"id", "vec" or "text", **metadata}')
    normalize: bool = True
    upsert: bool = True


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = None
    filter: str | None = None


# -- the application ---------------------------------------------------------------------------

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
    """
    env = os.environ if environ is None else environ
    settings = settings or (client.settings if client else Settings.from_env(env))
    max_limit = max_limit or _positive(env, "LOOKALIKE_HTTP_MAX_LIMIT", DEFAULT_MAX_LIMIT)
    max_body_bytes = max_body_bytes or _positive(env, "LOOKALIKE_HTTP_MAX_BODY_BYTES",
                                                 DEFAULT_MAX_BODY_BYTES)
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
    app.state.organisations = organisations
    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)
    _add_error_handlers(app)
    bearer = HTTPBearer(auto_error=False, description="CODOPS_<CODE>_API_TOKEN of the organisation")

    def organisation(
        codops: Annotated[str, Path(description="organisation code, e.g. ltlrt")],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Client:
        """Authenticate the request for ``codops`` and return that organisation's Client."""
        if credentials is None or not credentials.credentials:
            raise HTTPException(401, "a bearer token is required (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})
        # Compare with every configured token, in constant time each, and only then decide.
        given = credentials.credentials.encode()
        owners = [code for code, token in organisations.tokens().items()
                  if hmac.compare_digest(given, token.encode())]
        if not owners:
            raise HTTPException(401, "the bearer token is not valid",
                                headers={"WWW-Authenticate": "Bearer"})
        if codops.lower() not in owners:
            raise HTTPException(403, f"the bearer token does not give access to organisation "
                                     f"{codops!r}")
        return organisations.client(validate_codops(codops))

    Org = Annotated[Client, Depends(organisation)]
    Name = Annotated[str, Path(description="collection name")]

    def check_limit(limit: int) -> int:
        if limit > max_limit:
            raise InvalidInputError(f"limit {limit} is over this service's maximum of {max_limit}")
        return limit

    @app.get("/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["service"], responses={503: {"description": "Milvus unreachable"}})
    def ready() -> Any:
        """Readiness: Milvus answers for the service's own organisation (``CODOPS``)."""
        try:
            organisations.client(settings.codops).list_collections()
        except LookalikeError as exc:
            return _error(503, "not_ready", str(exc))
        return {"status": "ready"}

    @app.get("/v1/{codops}/collections", tags=["collections"])
    def list_collections(client: Org) -> list[str]:
        """The organisation's collection names."""
        return client.list_collections()

    @app.get("/v1/{codops}/collections/{name}", tags=["collections"])
    def describe(client: Org, name: Name) -> dict[str, Any]:
        """The collection's schema, indexes and document count."""
        return client.collection(name).describe()

    @app.put("/v1/{codops}/collections/{name}", tags=["collections"],
             responses={201: {"description": "created"},
                        409: {"description": "exists with another schema"}})
    def create_collection(client: Org, name: Name, schema: CollectionSchema) -> Any:
        """Create the collection (idempotent: the same schema again answers 200)."""
        existed = name in client.list_collections()
        options = creation_options(schema.model_dump(exclude_none=True))
        collection = client.create_collection(name, **options)
        return _JSON(collection.describe(), status_code=200 if existed else 201)

    @app.get("/v1/{codops}/collections/{name}/similar", tags=["similar"])
    def similar_by_ids(
        client: Org,
        name: Name,
        ids: Annotated[list[str], Query(description="stored ids to start from (repeat)")],
        filter: Annotated[str | None, Query(description="a Milvus boolean expression")] = None,
        limit: int = 10,
        exclude_ids: bool = False,
        output_fields: Annotated[list[str] | None, Query(description="fields to return")] = None,
    ) -> list[dict[str, Any]]:
        """The documents most similar to stored ``ids``, best first."""
        return client.collection(name).similar(
            ids=ids, filter_expr=filter, limit=check_limit(limit), exclude_ids=exclude_ids,
            output_fields=output_fields)

    @app.post("/v1/{codops}/collections/{name}/similar", tags=["similar"])
    def similar(client: Org, name: Name, query: SimilarRequest) -> list[dict[str, Any]]:
        """The documents most similar to ids, vectors or texts, best first."""
        return client.collection(name).similar(
            ids=query.ids, vectors=query.vectors, texts=query.texts, filter_expr=query.filter,
            limit=check_limit(query.limit), exclude_ids=query.exclude_ids,
            output_fields=query.output_fields, search_params=query.search_params)

    @app.get("/v1/{codops}/collections/{name}/documents", tags=["documents"])
    def get_documents(
        client: Org,
        name: Name,
        ids: Annotated[list[str], Query(description="ids to fetch (repeat)")],
        output_fields: Annotated[list[str] | None, Query(description="fields to return")] = None,
    ) -> list[dict[str, Any]]:
        """Stored documents in the order of ``ids``; missing ids are left out."""
        return client.collection(name).get(ids, output_fields=output_fields)

    @app.post("/v1/{codops}/collections/{name}/documents", tags=["documents"])
    def index_documents(client: Org, name: Name, body: IndexRequest) -> dict[str, int]:
        """Index documents (upsert by id unless ``upsert`` is false)."""
        count = client.collection(name).index(
            body.documents, normalize=body.normalize, upsert=body.upsert)
        return {"indexed": count}

    @app.delete("/v1/{codops}/collections/{name}/documents", tags=["documents"])
    def delete_documents(client: Org, name: Name, body: DeleteRequest) -> dict[str, int]:
        """Delete documents by ``ids`` or by ``filter``."""
        return {"deleted": client.collection(name).delete(ids=body.ids,
                                                                 filter_expr=body.filter)}

    return app


def _positive(env: Mapping[str, str], variable: str, default: int) -> int:
    value = env.get(variable) or str(default)
    if not value.isdigit() or int(value) < 1:
        raise InvalidInputError(f"{variable} must be a positive integer, not {value!r}")
    return int(value)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LookalikeError)
    async def library_error(request: Request, exc: LookalikeError) -> JSONResponse:
        status, kind = exc.http_status, exc.kind
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return _error(status, kind, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {401: "unauthenticated", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 413: "body_too_large"}
        return _error(exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail),
                      headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The client's input is not echoed back: only where and what.
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type")}
                  for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"])
        return JSONResponse({"error": "validation_error", "detail": f"{where}: {first['msg']}",
                             "errors": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The trace goes to the log, never into the response.
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal_error", "the service failed; see its log")
