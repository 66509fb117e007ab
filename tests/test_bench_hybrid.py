"""bench/hybrid.py's quick mode runs end to end and its tables have every row (no quality or speed
thresholds beyond what the construction of the tasks guarantees)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_hybrid", ROOT / "bench" / "hybrid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rare_token_and_gold_rank():
    bench = load_bench()
    df = Counter({"editor": 40, "vimscript": 2, "tiny": 2, "1234567": 1})
    # digits and tokens under 4 characters never count; equal frequencies go to the longer token
    assert bench.rare_token("An editor for VimScript, tiny: 1234567 ok", df) == "vimscript"
    assert bench.rare_token("a b 12345", df) is None
    assert bench.gold_rank(["x", "y", "z"], {"z", "y"}) == 2
    assert bench.gold_rank(["x"], {"z"}) == float("inf")
    assert bench.metrics([1, 2, float("inf")]) == {"r@1": 1 / 3, "r@10": 2 / 3, "mrr": 0.5}


def test_quick_run_writes_every_row(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "hybrid.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    quality = json.loads(next(tmp_path.glob("hybrid-quality-*.json")).read_text())
    rows = {(r["task"], r["route"], r["language"]): r for r in quality["rows"]}
    bench = load_bench()
    for task in bench.TASKS:
        for route in bench.ROUTES:
            for language in ("all", "en", "fr", "de"):
                row = rows[(task, route, language)]
                assert row["queries"] > 0
                assert 0 <= row["r@1"] <= row["r@10"] <= 1 and row["r@1"] <= row["mrr"] <= 1
    # the rarest token of a description is, nearly always, in that description only
    assert rows[("rare token", "keywords", "all")]["r@10"] >= 0.9
    assert rows[("synopsis", "meaning", "all")]["r@10"] >= 0.5
    assert len(quality["weights"]) == 2 and sum(quality["weights"]) > 0
    assert "| synopsis | **all** |" in proc.stdout
    speed = json.loads(next(tmp_path.glob("hybrid-speed-*.json")).read_text())["results"][0]
    assert [r["route"] for r in speed["rows"]] == ["meaning", "keywords", "rrf hybrid", "weighted hybrid",
                                                  "meaning, 100 hits", "keywords, 100 hits"]
    assert set(speed["ingest"]) == {"plain", "full_text"}
    assert all(r["p50_ms"] > 0 and r["cpu_p50_ms"] >= 0 for r in speed["rows"])
