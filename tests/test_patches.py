"""The registry of Milvus Lite patches: all groups or none, loud on an untested version, an off switch.

What happens on another version or with the switch off is decided once per process, and this test
process keeps its engine patched: those cases run in a fresh interpreter each (~1 s apiece).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

milvus_lite = pytest.importorskip("milvus_lite")

from lookalike.engines.lite import patches  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# A fresh interpreter: optionally another engine version, then apply() twice; prints what happened.
_PROBE = """
import importlib, json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s:%(name)s:%(message)s")
import milvus_lite
if {version!r}:
    milvus_lite.__version__ = {version!r}
from lookalike.engines.lite import patches

pairs = []
for group in patches.GROUPS:
    module = importlib.import_module(f"{{patches.__name__}}.{{group.module}}")
    pairs += [(owner, name) for owner, name, _make in module.targets()]
before_state = patches.describe()
before = [getattr(owner, name) for owner, name in pairs]
{setup}
results = [patches.apply(), patches.apply()]
after = [getattr(owner, name) for owner, name in pairs]
print(json.dumps({{
    "results": results,
    "is_applied": patches.is_applied(),
    "unchanged": len(before) == len(after) and all(a == b for a, b in zip(before, after)),
    "before": before_state,
    "after": patches.describe(),
}}))
"""


def _probe(version: str = "", switch: str | None = None, setup: str = "") -> tuple[dict[str, Any], list[str]]:
    """Run the probe; returns its report and the log lines of the patches' logger."""
    env = {k: v for k, v in os.environ.items() if k != patches.SWITCH}
    if switch is not None:
        env[patches.SWITCH] = switch
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(version=version, setup=setup)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if f":{patches.__name__}:" in line]
    return json.loads(done.stdout.strip().splitlines()[-1]), lines


def _targets() -> list[tuple[Any, str]]:
    found = []
    for group in patches.GROUPS:
        module = importlib.import_module(f"{patches.__name__}.{group.module}")
        found += [(owner, name) for owner, name, _make in module.targets()]
    return found


def test_the_installed_engine_is_the_pinned_and_tested_version():
    """CI fails here on an untested Milvus Lite: pyproject pins one release, the registry lists it."""
    pin = re.search(r'"milvus-lite==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin, "pyproject.toml pins milvus-lite exactly"
    assert pin.group(1) in patches.TESTED_VERSIONS
    assert milvus_lite.__version__ == pin.group(1), (
        f"milvus-lite {milvus_lite.__version__} is installed, {pin.group(1)} is pinned: run `make install`"
    )


@pytest.mark.skipif(os.environ.get(patches.SWITCH) == "0", reason="LOOKALIKE_LITE_PATCHES=0: the engine runs unpatched")
def test_apply_is_idempotent_thread_safe_and_applies_every_group():
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(patches.apply())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 8 and patches.is_applied()
    state = patches.describe()
    assert state["applied"] and state["reason"] == "applied"
    assert state["groups"] == [group.name for group in patches.GROUPS]
    assert state["milvus_lite"] == milvus_lite.__version__
    # Each function is wrapped once per group that patches it, however often apply() ran.
    targets = _targets()
    for owner, name in set(targets):
        current = getattr(owner, name)
        if not callable(current):  # a budget: a number, not a function
            continue
        depth = 0
        while hasattr(current, "__wrapped__"):
            current, depth = current.__wrapped__, depth + 1
        assert depth == targets.count((owner, name)), f"{owner}.{name}"


def test_an_untested_version_warns_once_and_patches_nothing():
    report, lines = _probe(version="3.9.0")
    assert report["results"] == [False, False] and not report["is_applied"]
    assert report["unchanged"], "a function of the engine was replaced"
    assert report["before"]["reason"] == "not-yet"
    assert report["after"]["reason"] == "untested" and report["after"]["milvus_lite"] == "3.9.0"
    warnings = [line for line in lines if line.startswith("WARNING:")]
    assert len(warnings) == 1 and len(lines) == 1, lines
    warning = warnings[0]
    for needed in (
        "milvus-lite 3.9.0",  # the version
        "NOT applied",
        "~50 ms a query instead of ~1 ms",  # what is lost: speed, memory, the crash fixes
        "~2.3 GB instead of ~0.9 GB",
        "duplicate rows after a crash",
        "truncated index files",
        "install milvus-lite==3.2.2",  # the remedies
        "LOOKALIKE_LITE_PATCHES=0",
    ):
        assert needed in warning, needed


def test_the_off_switch_patches_nothing_and_says_so_once_at_info():
    report, lines = _probe(switch="0")
    assert report["results"] == [False, False] and not report["is_applied"]
    assert report["unchanged"]
    assert report["after"]["reason"] == "off" and report["after"]["milvus_lite"] == milvus_lite.__version__
    assert len(lines) == 1 and lines[0].startswith("INFO:") and "LOOKALIKE_LITE_PATCHES=0" in lines[0], lines


def test_the_off_switch_also_silences_an_untested_version():
    report, lines = _probe(version="3.9.0", switch="off")
    assert report["after"]["reason"] == "off" and report["unchanged"]
    assert not [line for line in lines if line.startswith("WARNING:")], lines


def test_one_missing_target_leaves_every_group_unapplied():
    """All or none: the last group lists a function the engine lacks; no other group is applied."""
    last = patches.GROUPS[-1].module
    setup = f"""
module = importlib.import_module("lookalike.engines.lite.patches.{last}")
listed = module.targets
def with_a_missing_target():
    from milvus_lite.storage.segment import Segment
    return listed() + [(Segment, "no_such_method", lambda original: original)]
module.targets = with_a_missing_target
"""
    report, lines = _probe(setup=setup)
    assert report["results"] == [False, False] and report["unchanged"]
    assert report["after"]["reason"] == "incomplete"
    assert len(lines) == 1 and lines[0].startswith("WARNING:") and "no_such_method" in lines[0], lines


def test_a_replacement_that_cannot_be_installed_puts_back_the_ones_before_it():
    """The all-or-none promise holds while installing too (throwaway owners, not the engine)."""

    class Index:
        @classmethod
        def build(cls) -> str:
            return "engine"

    class Refuses(type):
        def __setattr__(cls, name: str, value: Any) -> None:
            raise RuntimeError("read-only owner")

    class Frozen(metaclass=Refuses):
        pass

    module = type(sys)("fake_engine_module")
    module.search = original_search = lambda: "engine"
    raw_build = vars(Index)["build"]
    plan = [
        (module, "search", original_search, lambda: "patched"),
        (Index, "build", Index.build, classmethod(lambda cls: "patched")),
        (Frozen, "anything", None, lambda: "patched"),
    ]
    with pytest.raises(RuntimeError, match="read-only owner"):
        patches._replace(plan)
    assert module.search is original_search
    assert vars(Index)["build"] is raw_build and Index.build() == "engine"
