"""pytest plugin: one real Milvus 2.3.5 server for the test session, and organisations on it.

Load it from tests/conftest.py with ``pytest_plugins = ["server_fixture"]``. Every test that
uses ``milvus_server`` (directly or through another fixture) is marked ``server``, so
``pytest -m "not server"`` runs without it; without the ``milvus`` wheel those tests skip.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from lookalike.config import Secret, Settings
from lookalike.ops import admin
from lookalike.ops.milvus_server import MILVUS_WHEEL, MilvusServer, wheel_available

# The session's server, once started: `exclusive_server` pauses it.
_session_server: list[MilvusServer] = []


@dataclass(frozen=True)
class ServerOrganisation:
    """An organisation provisioned on the session's server, with its credentials."""

    code: str
    secret: Secret
    uri: str

    @property
    def settings(self) -> Settings:
        """What ``Client(settings)`` needs to work as this organisation."""
        return Settings(codops=self.code, password=self.secret, uri=self.uri)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "milvus_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)
        # The server leg of a test marked `slow_on_server` runs with the slow suites: what it checks
        # there is the engine layer's generic path, covered on the server by the tests kept.
        if item.get_closest_marker("slow_on_server") and item.get_closest_marker("server"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def milvus_server() -> Iterator[MilvusServer]:
    """A Milvus 2.3.5 standalone on 127.0.0.1 with authentication on, for the whole session.

    It runs in a fresh temporary directory and dies with the test process even when that is
    killed; a server left by an earlier killed run is stopped and its directory removed.
    """
    if not sys.platform.startswith("linux"):
        pytest.skip("the Milvus server wheel ships Linux binaries only")
    if not wheel_available():
        pytest.skip(f"server tests need the Milvus server wheel: pip install '{MILVUS_WHEEL}'")
    server = MilvusServer(die_with_parent=True)
    try:
        server.start()
        _session_server.append(server)
        yield server
    finally:
        _session_server.clear()
        server.stop()


@pytest.fixture(scope="session")
def server_organisation(milvus_server: MilvusServer) -> Callable[[str], ServerOrganisation]:
    """``server_organisation("ltlrt")``: that organisation, provisioned once per session with a
    random secret (its database, user and role on the session's server)."""
    provisioned: dict[str, ServerOrganisation] = {}

    def get(code: str) -> ServerOrganisation:
        if code not in provisioned:
            secret = Secret(f"{code}-{secrets.token_urlsafe(12)}")
            admin.provision(code, secret, milvus_server.uri, milvus_server.root_token)
            provisioned[code] = ServerOrganisation(code, secret, milvus_server.uri)
        return provisioned[code]

    return get


@pytest.fixture
def exclusive_server() -> Iterator[None]:
    """Pause the session's server (its data, URI and password are kept) while a test runs
    servers of its own: one server at a time on a small machine."""
    paused = [server for server in _session_server if server.running]
    for server in paused:
        server.stop(keep_data=True)
    try:
        yield
    finally:
        for server in paused:
            server.start()
