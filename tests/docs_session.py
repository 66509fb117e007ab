"""Read the console session a documentation page shows, to run it again in a test."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def documented_session(page: str) -> list[tuple[str, str]]:
    """(command, output) pairs of the first console block under '## A session' in docs/<page>."""
    section = (DOCS / page).read_text(encoding="utf-8").split("## A session", 1)[1]
    block = section.split("```console\n", 1)[1].split("```", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return [(command, "\n".join(lines).strip("\n")) for command, lines in steps]
