"""Errors as JSON: ``{"error": kind, "detail": message}``, with the status each error carries.

A library error answers with its own ``http_status`` and ``kind`` (``lookalike.errors`` is the one
table the CLI reads too); the service's own refusals (401, 403, 404, 405, 413) and the 422 of a
malformed request get the same body. :func:`declared` lists, for the OpenAPI document, the
statuses a route really answers and the model each is sent with.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import LookalikeError
from .models import Error, ValidationErrorBody

log = logging.getLogger("lookalike.http")

# The service's own refusals, by status: the ``error`` kind of each.
HTTP_KINDS = {401: "unauthenticated", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 413: "body_too_large"}

_WHEN = {
    400: "invalid input: a value the library refuses (filter expression, vector, document, name, "
         "limit, search parameter, embedder, a recommendation parameter such as diversity, "
         "group_by, recency, weights or offset), named in the detail",
    401: "no bearer token, or not one of any organisation",
    403: "the token of another organisation, or Milvus denied the organisation's user",
    404: "no such collection, or query ids that are not stored",
    409: "a conflict with what is stored (another schema; upsert false with stored ids; another model)",
    413: "the request body is over the service's maximum",
    422: "malformed request: not JSON, or a body, path or query parameter of the wrong shape",
    503: "the engine is unavailable or failed (data directory held, damaged, server down)",
    504: "the vector index was not built within the timeout asked for (the build goes on)",
    507: "the disk holding the data directory is full",
}


def declared(*statuses: int, by_reference: bool = False) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route: each status with its description and error model.

    ``by_reference`` names the model as JSON by reference, for a route whose success is not JSON
    (FastAPI would otherwise declare its errors in the success's media type); the models are in
    the document through the other routes.
    """
    def model(status: int) -> type[Error]:
        return ValidationErrorBody if status == 422 else Error

    if by_reference:
        return {status: {"description": _WHEN[status], "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{model(status).__name__}"}}}}
            for status in statuses}
    return {status: {"model": model(status), "description": _WHEN[status]} for status in statuses}


def error_response(status: int, kind: str, detail: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body every refusal is sent with."""
    return JSONResponse(Error(error=kind, detail=detail).model_dump(), status_code=status,
                        headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every exception a route can raise with a JSON error body; never a trace."""

    @app.exception_handler(LookalikeError)
    async def library_error(request: Request, exc: LookalikeError) -> JSONResponse:
        if exc.http_status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return error_response(exc.http_status, exc.kind, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette's Allow names the methods of one route; a path has a route per method.
            headers = {"Allow": ", ".join(_methods(app, request.url.path))}
        return error_response(exc.status_code, HTTP_KINDS.get(exc.status_code, "http_error"),
                              str(exc.detail), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Where and what, without echoing the client's input back.
        errors = [{"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
                   "msg": str(e.get("msg", "")), "type": str(e.get("type", "invalid"))}
                  for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"])
        body = ValidationErrorBody(error="validation_error", detail=f"{where}: {first['msg']}",
                                   errors=errors)
        return JSONResponse(body.model_dump(), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The trace goes to the log, never into the response.
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal_error", "the service failed; see its log")


def _methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route of ``app`` answers on ``path``."""
    return sorted({method for route in app.router.routes
                   if isinstance(route, APIRoute) and route.path_regex.match(path)
                   for method in route.methods or ()})
