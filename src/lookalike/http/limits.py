"""The service's limits: the largest request body, the largest ``limit``, read from the environment.

A ``limit`` over the service's maximum is refused by the library's own rule and message
(:func:`lookalike.retrieval.check_limit` with the service's maximum), so the CLI, the library and
the service say the same thing. A body over the maximum is refused with 413 before it is read
whole, whether its size is declared (``Content-Length``) or streamed.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import InvalidInputError
from ..retrieval import MAX_LIMIT
from .errors import error_response

DEFAULT_MAX_LIMIT = 1000
# 1,000 documents of 768 float32 values as JSON text are ~13 MB: a batch that size fits.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


def setting(env: Mapping[str, str], variable: str, default: int, maximum: int | None = None) -> int:
    """A positive integer setting from the environment (``default`` when unset)."""
    value = env.get(variable) or str(default)
    if not value.isdigit() or not 1 <= int(value) <= (maximum or int(value)):
        bound = f" up to {maximum}" if maximum else ""
        raise InvalidInputError(f"{variable} must be a positive integer{bound}, not {value!r}")
    return int(value)


def max_limit_from(env: Mapping[str, str]) -> int:
    """``LOOKALIKE_HTTP_MAX_LIMIT``: at most the library's own maximum."""
    return setting(env, "LOOKALIKE_HTTP_MAX_LIMIT", DEFAULT_MAX_LIMIT, MAX_LIMIT)


def max_body_from(env: Mapping[str, str]) -> int:
    """``LOOKALIKE_HTTP_MAX_BODY_BYTES``."""
    return setting(env, "LOOKALIKE_HTTP_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)


def too_large_detail(max_bytes: int) -> str:
    return f"the request body is larger than the service's maximum of {max_bytes} bytes"


class BodyLimit:
    """ASGI middleware: refuses request bodies over ``max_bytes`` with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(413, "body_too_large", too_large_detail(self.max_bytes))
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # FastAPI re-raises an HTTPException met while reading the body: our handler answers.
                raise HTTPException(413, too_large_detail(self.max_bytes))
            return message

        await self.app(scope, limited, send)
