"""The benchmark's quick mode runs end to end and measures what it says (no speed thresholds)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_bench_writes_results_with_recall(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "results.json").read_text())
    results = {r["key"]: r for r in report["results"]}
    assert set(results) == {"lookalike", "pymilvus-lite", "numpy"}
    for r in results.values():
        assert "error" not in r, r["error"]
        assert r["n"] == 10_000
        for key in ("recall", "fr_recall", "similar_ids_recall", "p50_ms", "batch_qps", "peak_rss_mb"):
            assert key in r, key
        assert 0.0 <= r["recall"] <= 1.0 and 0.0 <= r["fr_recall"] <= 1.0
    # The exact search is the ground truth's own method: anything else means the harness is wrong.
    assert results["numpy"]["recall"] == 1.0
    assert results["numpy"]["fr_recall"] == 1.0
    assert results["numpy"]["similar_ids_recall"] == 1.0
    # HNSW at ef 64 on 10k rows finds nearly all true neighbours; a broken id mapping finds none.
    assert results["lookalike"]["recall"] > 0.9
    assert results["lookalike"]["similar_ids_recall"] > 0.9
    sweep = results["lookalike"]["sweep"]
    assert {p["param"] for p in sweep} == {16, 32, 64, 128, 256}
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["key"] for row in rows] == ["lookalike", "pymilvus-lite", "numpy"]
    report_md = (tmp_path / "results.md").read_text()
    assert report_md.startswith("| system |")
    sweep_md = report_md.split("### synthetic-10k: recall@10 @ single-query p50 (ms), by ef")[1]
    assert next(line for line in sweep_md.splitlines() if line.startswith("| lookalike |")).count(" @ ") == 5
    assert "lookalike" in proc.stdout
