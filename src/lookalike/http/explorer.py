"""The explorer page: a person's view of the service, served at ``/`` from ``static/``.

Plain files, no build step and nothing fetched from elsewhere (the Content-Security-Policy says
so to the browser). The page asks for the organisation's token and calls the same ``/v1`` routes
as any client; the token stays in the tab's memory and never enters a URL.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request

STATIC = Path(__file__).parent / "static"
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and its script and style under ``/static`` (out of the OpenAPI
    document: they are for people, not programs)."""

    def page(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=HEADERS)

    app.add_route("/", page, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
