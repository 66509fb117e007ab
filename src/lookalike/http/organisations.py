"""Organisations: who may call, and one shared Client for each.

Each request to ``/v1/{codops}/...`` carries ``Authorization: Bearer <token>`` where the token is
that organisation's ``CODOPS_<CODE>_API_TOKEN``. Tokens are read from the environment on every
request (a rotated token needs no restart), compared in constant time, and never logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import re
import threading
from collections.abc import Callable, Mapping
from typing import Annotated

from fastapi import Depends, HTTPException, Path
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from ..client import Client
from ..config import Secret, Settings, password_variable, validate_codops
from ..errors import LookalikeError

_TOKEN_VARIABLE = re.compile(r"^CODOPS_([A-Z][A-Z0-9]{1,31})_API_TOKEN$")


class Organisations:
    """One shared Client per organisation, opened lazily and reused for the process's life.

    Every organisation's Client uses the URI and data directory of ``settings``; its Milvus
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
        """The organisation's Client, opened on first use."""
        with self._lock:  # two first requests must not open two clients
            if codops not in self._clients:
                settings = dataclasses.replace(
                    self.settings,
                    codops=codops,
                    password=Secret(self.environ.get(password_variable(codops), "")),
                )
                self._clients[codops] = Client(settings)
            return self._clients[codops]

    def opened(self, codops: str) -> Client | None:
        """The organisation's Client if it is open already (no lock: a dict read)."""
        return self._clients.get(codops)

    def tokens(self) -> dict[str, str]:
        """Organisation code -> configured API token (organisations with none are absent)."""
        found = {}
        for name, value in self.environ.items():
            match = _TOKEN_VARIABLE.match(name)
            if match and value:
                found[match.group(1).lower()] = value
        return found

    def owners(self, token: str) -> list[str]:
        """The organisations whose token ``token`` is: every one is compared, in constant time."""
        given = token.encode()
        return [code for code, known in self.tokens().items()
                if hmac.compare_digest(given, known.encode())]

    def close(self) -> None:
        with self._lock:
            for code, client in self._clients.items():
                if code not in self._given:
                    with contextlib.suppress(LookalikeError):
                        client.close()
            self._clients.clear()


_bearer = HTTPBearer(auto_error=False, description="CODOPS_<CODE>_API_TOKEN of the organisation")


def authenticator(organisations: Organisations) -> Callable[..., Client]:
    """The dependency that authenticates a request for ``{codops}`` and gives its Client.

    It runs on the event loop (a token check is microseconds): a plain ``def`` would cost every
    request a hand-off to the threadpool and back. Only opening a Client, once per
    organisation, goes to a thread."""

    async def organisation(
        codops: Annotated[str, Path(description="organisation code, e.g. ltlrt")],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Client:
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None or not credentials.credentials:
            raise HTTPException(401, "a bearer token is required (Authorization: Bearer <token>)",
                                headers=challenge)
        owners = organisations.owners(credentials.credentials)
        if not owners:
            raise HTTPException(401, "the bearer token is not valid", headers=challenge)
        if codops.lower() not in owners:
            raise HTTPException(403, f"the bearer token does not give access to organisation {codops!r}")
        code = validate_codops(codops)
        client = organisations.opened(code)
        return client if client is not None else await run_in_threadpool(organisations.client, code)

    return organisation
