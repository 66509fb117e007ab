"""Shared fixtures: a real embedded Milvus per test session, and clients of it per organisation."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pymilvus import DataType, FieldSchema

from lookalike import Client

# A real Milvus server for tests marked `server` (skipped without the milvus==2.3.5 wheel).
pytest_plugins = ["server_fixture", "conftest_core"]  # conftest_core: the `core` marker (CI runs it unpatched)

# Keep any test from touching the user's real data directory or organisation (the switches of the
# test run itself stay: `make test` runs the core suite with LOOKALIKE_LITE_PATCHES=0, CI requires
# the browser test, a person may ask it for screenshots).
_RUN_SWITCHES = {"LOOKALIKE_LITE_PATCHES", "LOOKALIKE_REQUIRE_BROWSER", "LOOKALIKE_SCREENSHOTS"}
for variable in [v for v in os.environ if v.startswith(("CODOPS", "LOOKALIKE_")) and v not in _RUN_SWITCHES]:
    del os.environ[variable]

_names = itertools.count()

SEED_FIELDS = [
    FieldSchema(name="publication_date", dtype=DataType.INT64),
    FieldSchema(name="language", dtype=DataType.VARCHAR, max_length=16),
    FieldSchema(name="category", dtype=DataType.VARCHAR, max_length=255),
]
SEED_INDEXES = {
    "vec": {"metric_type": "IP", "index_type": "HNSW", "M": 32, "efConstruction": 128},
    "publication_date": None,
    "language": None,
    "category": None,
}


@pytest.fixture(scope="session")
def lite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedded data directory for the session: opening it recovers every collection in it."""
    return tmp_path_factory.mktemp("lite")


@pytest.fixture(scope="session", params=["lite", pytest.param("server", marks=pytest.mark.server)])
def backend(request: pytest.FixtureRequest) -> str:
    """The engine the core suite runs on: embedded Milvus Lite, and a real Milvus 2.3.5 server."""
    return request.param


@pytest.fixture(scope="session")
def org_client(backend: str, lite_dir: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[str], Client]]:
    """``org_client(code)``: a client of that organisation on the current backend (one per code)."""
    clients: dict[str, Client] = {}

    def get(code: str) -> Client:
        if code not in clients:
            if backend == "server":
                settings = request.getfixturevalue("server_organisation")(code).settings
                # the embedding cache lives under data_dir: keep it in the session's directory
                clients[code] = Client(replace(settings, data_dir=lite_dir / "server"))
            else:
                clients[code] = Client(codops=code, password=f"{code}-secret", data_dir=lite_dir)
        return clients[code]

    yield get
    for c in clients.values():
        c.close()


@pytest.fixture(scope="session")
def client(org_client: Callable[[str], Client]) -> Client:
    return org_client("ltlrt")


@pytest.fixture
def name() -> str:
    """A collection name no other test uses."""
    return unique_name()


def unique_name() -> str:
    """A collection name no other test uses (one counter for the whole run: a server outlives a module)."""
    return f"c{next(_names)}_{os.getpid()}"


def make_docs(n: int, dim: int = 16, seed: int = 0, start: int = 0) -> list[dict]:
    """Documents in the seed's shape, with a reproducible random vector each."""
    rng = np.random.default_rng(seed)
    return [
        {
            "id": f"doc{i}",
            "vec": rng.normal(size=dim).astype(np.float32).tolist(),
            "publication_date": 1704067200 + i,
            "language": ("fr", "en", "de")[i % 3],
            "category": ("sports", "news")[i % 2],
        }
        for i in range(start, start + n)
    ]


def lite_schema(dim: int, auto_id: bool = False):
    """A Milvus Lite engine schema with every kind of field the engine patches handle: a string
    (or auto-generated integer) key, a vector, a string, a nullable integer and JSON."""
    from milvus_lite import CollectionSchema
    from milvus_lite import DataType as LiteType
    from milvus_lite import FieldSchema as LiteField

    key = (LiteField(name="id", dtype=LiteType.INT64, is_primary=True, auto_id=True) if auto_id
           else LiteField(name="id", dtype=LiteType.VARCHAR, is_primary=True, max_length=32))
    return CollectionSchema(fields=[
        key,
        LiteField(name="vec", dtype=LiteType.FLOAT_VECTOR, dim=dim),
        LiteField(name="language", dtype=LiteType.VARCHAR, max_length=8),
        LiteField(name="n", dtype=LiteType.INT64, nullable=True),
        LiteField(name="meta", dtype=LiteType.JSON),
    ])
