"""Benchmark lookalike against raw pymilvus, other Milvus editions and other vector stores.

    python bench/run.py                 # full run: 10k, 100k and the corpus, every system whose venv exists
    python bench/run.py --quick         # 10k, fewer queries, the systems in this interpreter's venv
    python bench/run.py --sizes 10000 --systems lookalike,numpy

Each system runs in its own process (its own venv's python, see systems.py), one after the
other, on the same seeded data. Results: a table on the terminal, results.json and results.csv
under bench/results/ (or --out), and recall-vs-QPS curves in a PNG when matplotlib is found.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import data  # noqa: E402
from systems import SYSTEMS  # noqa: E402

FULL_ORDER = [
    "lookalike", "lite-api", "pymilvus-lite", "pymilvus-lite-unpatched", "pymilvus-lite-engine-budgets",
    "lite25-ivf", "lite25-flat",
    "milvus-server", "faiss-hnsw", "numpy", "chroma", "lancedb", "qdrant",
]
QUICK_ORDER = ["lookalike", "pymilvus-lite", "numpy"]
# Qdrant's local mode ingests ~120 vectors/s (100k would take 15 min); Lite 2.5 FLAT is brute force.
MAX_SIZE = {"qdrant": 20_000, "lite25-flat": 20_000}
COLUMNS = [
    ("system", "system"), ("dataset", "data"), ("ingest_vps", "ingest vec/s"), ("searchable_s", "searchable s"),
    ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("batch_qps", "batch QPS"), ("recall", "recall@10"),
    ("fr_p50_ms", "filter p50 ms"), ("fr_recall", "filter recall"),
    ("similar_ids_p50_ms", "mean-of-ids p50 ms"), ("peak_rss_mb", "peak RSS MB"), ("disk_mb", "disk MB"),
]


def python_for(key: str) -> Path | None:
    """The interpreter of the system's venv, or None when that venv is not built."""
    venv = SYSTEMS[key].venv
    exe = ROOT / venv / "bin" / "python"
    if venv == ".venv" and not exe.exists():
        return Path(sys.executable)
    return exe if exe.exists() else None


def run_one(key: str, size: int, quick: bool, workroot: Path, timeout: float, keep: set[str]) -> dict:
    """Run one system's worker; its data directory is removed after, unless a later system reuses it."""
    py = python_for(key)
    if py is None:
        return {"key": key, "system": SYSTEMS[key].name, "n": size,
                "error": f"skipped: {SYSTEMS[key].venv} is missing (make bench-venvs)"}
    reused = SYSTEMS[key].reuses
    workdir = workroot / f"{reused or key}-{size}"
    reuse = reused is not None and workdir.exists()
    out = workroot / f"{key}-{size}.json"
    cmd = [str(py), str(HERE / "worker.py"), "--system", key, "--size", str(size), "--workdir", str(workdir),
           "--out", str(out), *(["--quick"] if quick else []), *(["--reuse"] if reuse else [])]
    began = time.time()
    try:
        env = {**os.environ, **SYSTEMS[key].env}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"key": key, "system": SYSTEMS[key].name, "n": size, "error": f"timed out after {timeout:.0f} s"}
    finally:
        if key not in keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if not out.exists():
        tail = (proc.stderr or proc.stdout)[-800:]
        return {"key": key, "system": SYSTEMS[key].name, "n": size, "error": f"worker failed: {tail}"}
    result = json.loads(out.read_text())
    result["wall_s"] = round(time.time() - began, 1)
    if "error" in result:
        result["error"] += " | " + (proc.stderr or "")[-400:]
    return result


def table(results: list[dict]) -> str:
    rows = [[h for _, h in COLUMNS]]
    for r in results:
        if "error" in r:
            rows.append([r["system"], _data(r), r["error"][:90]] + [""] * (len(COLUMNS) - 3))
            continue
        rows.append([_fmt(r.get(k)) for k, _ in COLUMNS])
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(COLUMNS))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(results: list[dict]) -> str:
    """The same table in Markdown, for bench/README.md."""
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    body = []
    for r in results:
        if "error" in r:
            body.append(f"| {r['system']} | {_data(r)} | {r['error'][:80]} |" + " |" * (len(COLUMNS) - 3))
        else:
            body.append("| " + " | ".join(_fmt(r.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join([head, sep, *body])


def sweep_markdown(results: list[dict]) -> str:
    """Recall@10 at each value of the search parameter, with its single-query p50, per dataset
    and parameter (ef for HNSW, nprobe for IVF)."""
    out = []
    swept = [r for r in results if r.get("sweep")]
    for dataset, param in dict.fromkeys((r["dataset"], r["param_name"]) for r in swept):
        rows = [r for r in swept if (r["dataset"], r["param_name"]) == (dataset, param)]
        values = sorted({p["param"] for r in rows for p in r["sweep"]})
        out += [f"### {dataset}: recall@10 @ single-query p50 (ms), by {param}", "",
                f"| system | {' | '.join(f'{param} {v}' for v in values)} |", "|" + "---|" * (len(values) + 1)]
        for r in rows:
            for filtered in (False, True):
                points = {p["param"]: p for p in r["sweep"] if p["filtered"] == filtered}
                cells = [f"{points[v]['recall']:.3f} @ {_fmt(points[v]['p50_ms'])}" if v in points else "—"
                         for v in values]
                out.append(f"| {r['system']}{', filtered' if filtered else ''} | {' | '.join(cells)} |")
        out.append("")
    return "\n".join(out)


def _data(r: dict) -> str:
    """The dataset of a result, or the size it was asked for when the worker failed early."""
    return str(r.get("dataset", r.get("n", "")))


def _fmt(v: object) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.3f}" if v < 1 else f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def write_csv(results: list[dict], path: Path) -> None:
    keys = ["key", "system", "dataset", "n", "dim", "ingest_s", "ingest_vps", "searchable_s", "p50_ms", "p95_ms",
            "qps_single", "batch_qps", "recall", "recall_single", "fr_p50_ms", "fr_p95_ms", "fr_batch_qps", "fr_recall",
            "similar_ids_p50_ms", "similar_ids_recall", "peak_rss_mb", "disk_mb", "error"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow(r)


def plot(results_json: Path, png: Path) -> str:
    """Draw the sweeps with matplotlib from whichever venv has it; return what happened."""
    for py in (Path(sys.executable), ROOT / ".venv-bench" / "bin" / "python"):
        if not py.exists():
            continue
        proc = subprocess.run([str(py), str(HERE / "plot.py"), str(results_json), str(png)],
                              capture_output=True, text=True, cwd=ROOT)
        if proc.returncode == 0:
            return f"plot: {png}"
    return "plot: skipped (matplotlib not found in .venv or .venv-bench)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k rows, fewer queries, systems of this venv")
    parser.add_argument("--sizes", help=f"comma-separated row counts, {data.CORPUS!r} (the shipped sample) and/or "
                        f"{', '.join(data.FULL_CORPUS_SIZES)} (make bench-corpus first); "
                        f"default 10000,100000,{data.CORPUS}; quick: 10000")
    parser.add_argument("--systems", help=f"comma-separated, from: {', '.join(SYSTEMS)}")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results directory")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per system and size")
    args = parser.parse_args()

    default_sizes = "10000" if args.quick else f"10000,100000,{data.CORPUS}"
    sizes = [int(s) if s.isdigit() else s for s in (args.sizes or default_sizes).split(",")]
    if not all(data.is_size(str(s)) for s in sizes):
        parser.error(f"--sizes takes row counts, {data.CORPUS!r} and {', '.join(data.FULL_CORPUS_SIZES)}")
    keys = args.systems.split(",") if args.systems else (QUICK_ORDER if args.quick else FULL_ORDER)
    unknown = [k for k in keys if k not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems: {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)

    keep = {SYSTEMS[k].reuses for k in keys if SYSTEMS[k].reuses in keys}
    results: list[dict] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        for size in sizes:
            ds = data.load(size)  # build and cache the data once, before the workers read it
            rows = len(ds.vectors)
            for key in keys:
                if rows > MAX_SIZE.get(key, rows):
                    continue
                print(f"[{time.time() - started:6.0f}s] {key} on {ds.name} ({rows:,} rows) ...", flush=True)
                r = run_one(key, size, args.quick, Path(tmp), args.timeout, keep)
                results.append(r)
                status = r.get("error", f"p50 {r.get('p50_ms')} ms, recall {r.get('recall')}")
                print(f"          {status}", flush=True)

    meta = {"quick": args.quick, "sizes": sizes, "dim": 768, "k": data.K, "filter": data.FILTER_EXPR,
            "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_avg_end": os.getloadavg(), "wall_s": round(time.time() - started, 1),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    results_json = args.out / "results.json"
    results_json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    write_csv(results, args.out / "results.csv")
    (args.out / "results.md").write_text(markdown(results) + "\n\n" + sweep_markdown(results))
    print()
    print(table(results))
    print()
    print(plot(results_json, args.out / "recall_vs_qps.png"))
    print(f"results: {results_json}, {args.out / 'results.csv'} ({meta['wall_s']} s)")
    return 1 if all("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
