"""Fixes and speedups to Milvus Lite's own code: one registry, applied all together or not at all.

Milvus Lite 3.x is pure Python, and lookalike replaces a few of its functions (each group's module
says which, why, and what it measured):

========== ============================================= ==========================================
group      fixes                                         without it (100k rows of 768 floats)
========== ============================================= ==========================================
search     per-row Python loops on every search/count;   ~50 ms a search instead of ~1 ms
           the HNSW search's per-hit loop and hash-set
           filter (``search.py``)
parallel   a collection's segment graphs searched one    at 1M rows, ~8 graphs walked in turn
           after another (``parallel.py``)               on one core
sparse     the keyword (BM25) search's per-row loops     ~65 ms a keyword search instead of ~1 ms
           and per-posting scorer (``sparse.py``)
writes     the cell-by-cell memtable flush; the write    a ~1.4 GB burst of Python floats per flush;
           budgets (``writes.py``)                       three HNSW graphs instead of one
memory     two copies of every segment's vectors, the    peak ~2.3 GB instead of ~0.9 GB
           flush's read back (``memory.py``)
durability the crash windows of the flush and the index  duplicate rows after a crash, truncated
           writes (``durability.py``)                    index files loaded as if whole
build_     a segment without its graph yet scanned with  150-400 ms a query while a graph builds,
window     per-query copies and Python loops; a          against numpy's ~21 ms (and again after
           compaction's graphs dropped before the new    each compaction)
           one is built (``build_window.py``)
========== ============================================= ==========================================

Each group's module has a ``targets()`` listing ``(owner, attribute, make)`` triples: ``make``
receives the engine's attribute and returns its replacement. ``apply()`` resolves every target
of every group first and changes nothing if one is missing; only then does it replace them, so the
engine is either patched as tested or left exactly as released. It does so only for the versions
in ``TESTED_VERSIONS``; on any other it logs one WARNING (what is lost, and the remedy) and leaves
the engine alone, as it does when ``LOOKALIKE_LITE_PATCHES=0`` (one INFO line). The engine works
correctly either way: CI runs the core suite with the patches off (``make test``).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

#: Milvus Lite versions every group was written and tested against. pyproject.toml pins the same.
TESTED_VERSIONS = frozenset({"3.2.2"})

#: Set to 0 (or false/no/off) to run Milvus Lite as released.
SWITCH = "LOOKALIKE_LITE_PATCHES"
_OFF_VALUES = frozenset({"0", "false", "no", "off"})

Target = tuple[Any, str, Callable[[Any], Any]]


@dataclass(frozen=True)
class PatchGroup:
    """A named set of patches: the module whose ``targets()`` lists them, and what running without
    them costs (the WARNING on an untested version names it)."""

    name: str
    module: str
    without: str


GROUPS: tuple[PatchGroup, ...] = (
    PatchGroup("search", "search", "search speed (~50 ms a query instead of ~1 ms at 100k rows)"),
    PatchGroup("parallel", "parallel", "segment graphs searched at once (~8 graphs walked in turn at 1M rows)"),
    PatchGroup("sparse", "sparse", "keyword search speed (~65 ms a query instead of ~1 ms at 100k rows)"),
    PatchGroup(
        "writes", "writes",
        "flush memory and segment size (a ~1.4 GB burst per memtable flush, three HNSW graphs instead of one "
        "at 100k rows)",
    ),
    PatchGroup("memory", "memory", "memory (peak ~2.3 GB instead of ~0.9 GB at 100k rows)"),
    PatchGroup(
        "durability", "durability",
        "the crash fixes (duplicate rows after a crash, truncated index files loaded as if whole)",
    ),
    PatchGroup(
        "build_window", "build_window",
        "search speed while a graph builds (150-400 ms a query instead of numpy's ~21 ms at 100k rows, "
        "and after a compaction until the new graph is built)",
    ),
)


@dataclass(frozen=True)
class _Outcome:
    applied: bool
    reason: str  # applied | off | untested | incomplete | absent
    version: str | None
    detail: str
    groups: tuple[str, ...] = field(default=())


_lock = threading.Lock()
_outcome: _Outcome | None = None  # decided by the first apply() of the process


def apply() -> bool:
    """Patch Milvus Lite with every group, or with none.

    Idempotent and thread-safe; the first call decides for the whole process (call it before the
    engine opens). Nothing is changed when ``LOOKALIKE_LITE_PATCHES=0``, when Milvus Lite is not
    installed or is a version not in ``TESTED_VERSIONS`` (one WARNING), or when any target is
    missing from the installed engine.

    Returns:
        Whether the patches are active in this process.
    """
    global _outcome
    with _lock:
        if _outcome is None:
            _outcome = _decide()
        return _outcome.applied


def is_applied() -> bool:
    """Whether ``apply()`` has patched Milvus Lite in this process."""
    return _outcome is not None and _outcome.applied


def describe() -> dict[str, Any]:
    """The patches' state, for logs and ``describe()``.

    Returns:
        ``milvus_lite`` (installed version or None), ``tested_versions``, ``applied``, ``groups``
        (the names applied), ``reason`` (applied, off, untested, incomplete, absent, or
        not-yet when ``apply()`` has not run) and ``detail`` (one sentence).
    """
    outcome = _outcome or _Outcome(False, "not-yet", _installed_version(), "apply() has not run yet")
    return {
        "milvus_lite": outcome.version,
        "tested_versions": sorted(TESTED_VERSIONS),
        "applied": outcome.applied,
        "groups": list(outcome.groups),
        "reason": outcome.reason,
        "detail": outcome.detail,
    }


def _installed_version() -> str | None:
    try:
        import milvus_lite
    except ImportError:
        return None
    return str(getattr(milvus_lite, "__version__", "unknown"))


def _remedy() -> str:
    pins = " or ".join(f"milvus-lite=={v}" for v in sorted(TESTED_VERSIONS))
    return f"install {pins}, or set {SWITCH}=0 to run unpatched without this warning"


def _decide() -> _Outcome:
    """Check the switch and the version, resolve every target, then apply them all."""
    version = _installed_version()
    if os.environ.get(SWITCH, "").strip().lower() in _OFF_VALUES:
        logger.info("Milvus Lite patches off (%s=0): milvus-lite %s runs as released", SWITCH, version)
        return _Outcome(False, "off", version, f"turned off by {SWITCH}=0")
    if version is None:
        return _Outcome(False, "absent", None, "milvus-lite is not installed")
    if version not in TESTED_VERSIONS:
        detail = f"milvus-lite {version} is not a tested version ({', '.join(sorted(TESTED_VERSIONS))})"
        logger.warning(
            "%s: lookalike's engine patches are NOT applied, so this process runs without %s. To fix: %s.",
            detail, "; ".join(g.without for g in GROUPS), _remedy(),
        )
        return _Outcome(False, "untested", version, detail)
    try:
        plan = _resolve()
    except Exception as exc:  # noqa: BLE001 - whatever fails here, the engine must stay as released
        # A tested version with a target missing: a damaged or modified install.
        detail = f"milvus-lite {version} lacks a patched function or a patch failed ({type(exc).__name__}: {exc})"
        logger.warning("%s: none of lookalike's engine patches is applied. To fix: %s.", detail, _remedy())
        return _Outcome(False, "incomplete", version, detail)
    _replace(plan)
    names = tuple(g.name for g in GROUPS)
    logger.debug("milvus-lite %s: patched %s", version, ", ".join(f"{_label(o)}.{n}" for o, n, _, _ in plan))
    return _Outcome(True, "applied", version, f"groups {', '.join(names)} applied", names)


def _resolve() -> list[tuple[Any, str, Any, Any]]:
    """Every target as (owner, name, original, replacement), computed before anything changes.

    Two groups may wrap the same attribute: the later one wraps the earlier one's replacement.
    """
    plan: list[tuple[Any, str, Any, Any]] = []
    pending: dict[tuple[int, str], Any] = {}
    for group in GROUPS:
        module = importlib.import_module(f"{__name__}.{group.module}")
        for owner, name, make in module.targets():
            key = (id(owner), name)
            original = pending[key] if key in pending else getattr(owner, name)
            pending[key] = replacement = make(original)
            plan.append((owner, name, original, replacement))
    return plan


def _replace(plan: list[tuple[Any, str, Any, Any]]) -> None:
    """Install the replacements; should one fail, put back what was already replaced."""
    # What each attribute was in its owner's own namespace (a classmethod stays one), or absent.
    saved = [(owner, name, vars(owner).get(name, _ABSENT)) for owner, name, _original, _new in plan]
    done = 0
    try:
        for owner, name, _original, replacement in plan:
            setattr(owner, name, replacement)
            done += 1
    except BaseException:
        for owner, name, raw in reversed(saved[:done]):
            if raw is _ABSENT:
                if name in vars(owner):
                    delattr(owner, name)
            else:
                setattr(owner, name, raw)
        raise


_ABSENT = object()


def _label(owner: Any) -> str:
    return str(getattr(owner, "__qualname__", getattr(owner, "__name__", owner)))
