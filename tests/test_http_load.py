"""The HTTP service under concurrent load, every answer checked (bench/http_load.py's workload).

A fixed number of index, upsert, delete, get and similar requests, and invalid ones, 16 in flight,
to the service on loopback (create_app under uvicorn, the embedded engine, as `lookalike serve`
runs it): no 5xx, no wrong answer, every acknowledged write there at the end, no acknowledged
delete back, and nothing stored by a request answered 4xx.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lookalike.config import Settings
from lookalike.http.app import create_app
from lookalike.http.background import serving

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import http_load  # noqa: E402


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(codops="ltlrt", data_dir=tmp_path_factory.mktemp("load-data"))
    with serving(create_app(settings=settings, environ=http_load.ENVIRON)) as url:
        yield url


def _check(outcome: http_load.Outcome, requests: int) -> None:
    figures = outcome.figures()
    print({k: figures[k] for k in ("in_flight", "requests", "requests_per_s", "p50_ms", "p99_ms")})
    assert outcome.requests == requests
    assert outcome.failures == 0, figures
    # The mix did what it says: every kind sent, invalid ones refused with 4xx.
    assert {"index", "get", "similar", "delete"} <= set(outcome.operations)
    assert sum(n for op, n in outcome.operations.items() if op.startswith("invalid_")) > requests // 20
    assert sum(n for status, n in outcome.statuses.items() if 400 <= status < 500) > 0


def test_concurrent_load_loses_nothing_and_answers_right(live):
    """1,500 requests, 16 in flight (~10 s)."""
    _check(http_load.run_load(live, "load", requests=1500, in_flight=16, seed=7), 1500)


@pytest.mark.slow
@pytest.mark.parametrize("in_flight", [4, 32])
def test_longer_load(live, in_flight):
    _check(http_load.run_load(live, f"load_long_{in_flight}", requests=8000, in_flight=in_flight,
                              seed=in_flight), 8000)
