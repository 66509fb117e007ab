"""The house keeps its shape: every room docs/architecture.md names exists, the layers import
downwards only (no circle), and nothing above ``engines/`` talks to a Milvus client itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "lookalike"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """The lookalike modules ``name`` imports, at any depth of the file except TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped = {id(node) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test) for node in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c.startswith("lookalike"))
    return found


def test_every_module_the_architecture_names_exists():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)`", text))
    assert len(named) >= 20, "docs/architecture.md should name the package's modules"
    missing = sorted(n for n in named if not (PACKAGE / n).exists())
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_module_is_in_the_architecture():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)`", text))
    unnamed = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                     if str(p.relative_to(PACKAGE)) not in named and p.name != "__init__.py")
    assert not unnamed, f"modules docs/architecture.md does not mention: {unnamed}"


def test_no_import_circle():
    known = modules()
    graph = {name: {m for m in imports_of(name, path) if m in known and m != name} for name, path in known.items()}
    # a package's __init__ re-exporting its own modules is not a circle between layers
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


FORBIDDEN_ABOVE_ENGINES = (
    r"\bMilvusClient\b", r"\.milvus\.", r"\bkind\s*==\s*[\"'](?:lite|server)", r"(?:from|import) milvus_lite",
)


def test_nothing_above_the_engines_talks_to_milvus_itself():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(("engines/", "ops/")):  # ops/ is root administration of a server
            continue
        source = path.read_text(encoding="utf-8")
        for pattern in FORBIDDEN_ABOVE_ENGINES:
            if re.search(pattern, source):
                offenders.append(f"{rel}: {pattern}")
    assert not offenders, offenders
