"""Draw recall@10 against single-query QPS, one line per system, from bench/run.py's results.json.

    python bench/plot.py bench/results/results.json bench/results/recall_vs_qps.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FLOOR = 0.8  # recall below this is not a usable operating point; the axis starts here


def main(results_json: Path, png: Path) -> None:
    results = json.loads(results_json.read_text())["results"]
    sizes = sorted({r["n"] for r in results if "error" not in r})
    names = {r["n"]: f"{r.get('dataset', '')}: {r['n']:,} × {r.get('dim', 768)}" for r in results if "error" not in r}
    fig, axes = plt.subplots(len(sizes), 2, figsize=(13, 5 * len(sizes)), squeeze=False)
    for row, n in enumerate(sizes):
        for col, filtered in enumerate((False, True)):
            ax = axes[row][col]
            runs = [r for r in results if r.get("n") == n and "error" not in r]
            colours = plt.get_cmap("tab20")(range(len(runs)))
            for i, r in enumerate(runs):
                points = [p for p in r.get("sweep", []) if p["filtered"] == filtered]
                if not points:  # no knob: one point at its only setting
                    points = [{"recall": r["fr_recall" if filtered else "recall_single"],
                               "qps_single": r["fr_qps_single" if filtered else "qps_single"], "param": None}]
                points.sort(key=lambda p: p["param"] or 0)
                label = r["system"]
                if max(p["recall"] for p in points) < FLOOR:
                    label += f" (recall < {FLOOR}: off the chart)"
                ax.plot([p["qps_single"] for p in points], [p["recall"] for p in points], marker="os^vD"[i % 5],
                        color=colours[i], label=label)
                for p in points:
                    if p["param"] is not None:
                        ax.annotate(str(p["param"]), (p["qps_single"], p["recall"]), fontsize=7,
                                    textcoords="offset points", xytext=(3, 3))
            ax.set_xscale("log")
            ax.set_ylim(FLOOR, 1.005)
            ax.set_xlabel("queries per second (one query per call)")
            ax.set_ylabel("recall@10")
            ax.set_title(f"{names[n]}, {'filter language == fr' if filtered else 'no filter'} (labels: ef / nprobe)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
