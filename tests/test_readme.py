"""The README's Python examples run, and print what the README says they print."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def expected_output(code: str) -> list[str]:
    """Lines marked ``# -> `` are what the example prints, in order; '...' stands for anything."""
    return [line.strip()[5:] for line in code.splitlines() if line.strip().startswith("# -> ")]


def matches(pattern: str, line: str) -> bool:
    regex = ".*?".join(re.escape(part) for part in pattern.split("..."))
    return re.fullmatch(regex, line) is not None


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example(code, tmp_path):
    env = {"LOOKALIKE_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = run.stdout.strip().splitlines()
    wanted = expected_output(code)
    assert len(printed) == len(wanted), (printed, wanted)
    for pattern, line in zip(wanted, printed, strict=True):
        assert matches(pattern, line), (pattern, line)
