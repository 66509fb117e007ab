"""pytest plugin: the ``core`` marker, the subset of the suite that CI also runs with the engine patches off.

The core files test what lookalike promises on every engine (documents in, similar documents out,
validation, persistence, organisations, concurrent use). ``make test`` runs them a second time
with ``LOOKALIKE_LITE_PATCHES=0``, so no patch of Milvus Lite can be the only thing that makes one
of those behaviours correct. The marker is given here by file name, so that a file joins the
subset by being listed below, not by editing it. Load it from tests/conftest.py with
``pytest_plugins = [..., "conftest_core"]``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CORE_FILES = frozenset({
    "test_core.py",
    "test_validation.py",
    "test_persistence.py",
    "test_namespaces.py",
    "test_concurrency.py",
})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "core: the core suite, also run with the engine patches off (LOOKALIKE_LITE_PATCHES=0)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).name in CORE_FILES:
            item.add_marker(pytest.mark.core)
