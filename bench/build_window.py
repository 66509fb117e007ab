"""The build window: query latency from the moment ``index()`` returns until the HNSW graph is built.

100k x 768 clustered unit vectors (bench/data.py) are indexed with ``flush=True``; from the return
of ``index()`` one thread waits for the graph (``Collection.wait_for_index``) while the main thread
asks one query at a time (a vector, top 10, through ``Collection.similar``), each followed by numpy's
exact search for the same vector over the same matrix (``vectors @ q``, top 10), so that both see
the same machine at the same moment. It goes on for ``--after`` seconds once the graph is built.

Two runs in one process: ``after`` (every patch, the build-window scan included) and ``before``
(the same, with ``BruteForceIndex.search`` put back to the engine's own: what lookalike did before
patches/build_window.py). Each gets a fresh collection.

    python bench/build_window.py                       # 100k x 768, both runs
    python bench/build_window.py --size 20000 --runs after
    .venv-bench/bin/python bench/build_window.py --plot bench/results/build_window-100000-<date>.json

Prints a table and writes ``bench/results/build_window-<size>-<date>.json`` (every sample) and,
where matplotlib is installed (``.venv-bench``, as for bench/plot.py), ``bench/results/build_window.png``:
p50 per bucket of seconds since ``index()`` returned.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import data  # noqa: E402
from systems import HNSW, K  # noqa: E402

RESULTS = HERE / "results"
BUCKET_SECONDS = 5.0


@contextlib.contextmanager
def engine_scan() -> Iterator[None]:
    """The engine's own exact scan of a segment without its graph, for the ``before`` run."""
    from milvus_lite.index.brute_force import BruteForceIndex

    patched = BruteForceIndex.search
    BruteForceIndex.search = inspect.unwrap(patched)
    try:
        yield
    finally:
        BruteForceIndex.search = patched


def numpy_exact(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The exact top K by inner product (the vectors are unit: cosine)."""
    scores = vectors @ query
    top = np.argpartition(-scores, K)[:K]
    return top[np.argsort(-scores[top])]


def window(ds: data.Dataset, workdir: Path, after_seconds: float, seed: int) -> dict[str, Any]:
    """One build window: index, then query until the graph is built and ``after_seconds`` more."""
    from pymilvus import DataType, FieldSchema

    import lookalike

    client = lookalike.Client(codops="bench", uri="", data_dir=str(workdir))
    try:
        col = client.create_collection(
            "window", dim=ds.vectors.shape[1],
            fields=[FieldSchema(name="language", dtype=DataType.VARCHAR, max_length=16)],
            indexes={"vec": {"metric_type": "IP", "index_type": "HNSW", **HNSW}, "language": None},
        )
        docs = ({"id": i, "vec": v, "language": str(lang)}
                for i, v, lang in zip(ds.ids, ds.vectors, ds.languages, strict=True))
        started = time.perf_counter()
        col.index(docs, progress=False, flush=True)
        returned = time.perf_counter()
        built: list[float] = []
        states: list[dict[str, Any]] = []
        waiter = threading.Thread(target=lambda: (states.append(col.wait_for_index()),
                                                  built.append(time.perf_counter() - returned)))
        waiter.start()
        rng = np.random.default_rng(seed)
        ids = np.asarray(ds.ids)
        samples: list[tuple[float, float, float, bool]] = []  # (t, lookalike ms, numpy ms, same top 10)
        while not built or time.perf_counter() - returned < built[0] + after_seconds:
            q = ds.queries[rng.integers(len(ds.queries))]
            t = time.perf_counter()
            hits = col.similar(vectors=q, limit=K)
            ours = time.perf_counter() - t
            t2 = time.perf_counter()
            exact = numpy_exact(ds.vectors, q)
            theirs = time.perf_counter() - t2
            samples.append((t - returned, ours * 1e3, theirs * 1e3,
                            [h["id"] for h in hits] == ids[exact].tolist()))
        waiter.join()
        return {"index_seconds": returned - started, "graph_seconds": built[0], "state": states[0],
                "samples": samples}
    finally:
        client.close()


def summary(run: dict[str, Any]) -> dict[str, Any]:
    """p50s in the window (before the graph) and after it, and how often the top 10 was exact."""
    inside = [s for s in run["samples"] if s[0] < run["graph_seconds"]]
    outside = [s for s in run["samples"] if s[0] >= run["graph_seconds"]]

    def p50(rows: list, col: int) -> float | None:
        return round(statistics.median(r[col] for r in rows), 2) if rows else None

    return {
        "index_seconds": round(run["index_seconds"], 1), "graph_seconds": round(run["graph_seconds"], 1),
        "queries_in_window": len(inside), "p50_ms_in_window": p50(inside, 1),
        "numpy_p50_ms_in_window": p50(inside, 2),
        "exact_top10_in_window": round(sum(s[3] for s in inside) / len(inside), 3) if inside else None,
        "p50_ms_after": p50(outside, 1), "numpy_p50_ms_after": p50(outside, 2),
    }


def buckets(samples: list, col: int) -> tuple[list[float], list[float]]:
    """p50 per BUCKET_SECONDS of seconds since index() returned."""
    by: dict[int, list[float]] = {}
    for s in samples:
        by.setdefault(int(s[0] // BUCKET_SECONDS), []).append(s[col])
    keys = sorted(by)
    return [(k + 0.5) * BUCKET_SECONDS for k in keys], [statistics.median(by[k]) for k in keys]


def plot(results: Path, png: Path) -> None:
    """Draw the curves of a results file (needs matplotlib only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved = json.loads(results.read_text())
    runs, size = saved["runs"], saved["size"]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    styles = {"after": ("tab:blue", "lookalike (build-window scan)"),
              "before": ("tab:red", "lookalike before (the engine's scan)")}
    for name, run in runs.items():
        colour, label = styles[name]
        x, y = buckets(run["samples"], 1)
        ax.plot(x, y, marker="o", ms=3, color=colour, label=label)
        nx, ny = buckets(run["samples"], 2)
        ax.plot(nx, ny, ls="--", color=colour, alpha=0.6, label=f"numpy exact, same moments ({name} run)")
        ax.axvline(run["graph_seconds"], color=colour, ls=":", alpha=0.8)
        ax.text(run["graph_seconds"], 0.97, f" graph built ({name})", transform=ax.get_xaxis_transform(),
                fontsize=8, color=colour, va="top")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since index() returned")
    ax.set_ylabel(f"p50 query latency, ms (per {BUCKET_SECONDS:g} s)")
    ax.set_title(f"The build window: {size:,} x 768, one query at a time, top 10")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--runs", default="after,before", help="after, before, or both (the order they run in)")
    parser.add_argument("--after", type=float, default=10.0, help="seconds to go on once the graph is built")
    parser.add_argument("--plot", type=Path, metavar="JSON", help="only draw the curves of a results file")
    args = parser.parse_args()
    if args.plot:
        plot(args.plot, RESULTS / "build_window.png")
        return
    ds = data.load(args.size)
    runs: dict[str, dict[str, Any]] = {}
    for name in args.runs.split(","):
        with tempfile.TemporaryDirectory(prefix="build-window-") as workdir:
            with engine_scan() if name == "before" else contextlib.nullcontext():
                runs[name] = window(ds, Path(workdir), args.after, seed=11)
        print(f"{name}: {summary(runs[name])}", flush=True)
    import milvus_lite

    import lookalike
    from lookalike.engines.lite import patches

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"build_window-{args.size}-{stamp}.json"
    out.write_text(json.dumps({
        "size": args.size, "dim": int(ds.vectors.shape[1]), "hnsw": HNSW, "k": K,
        "lookalike": lookalike.__version__, "milvus_lite": milvus_lite.__version__, "patches": patches.describe(),
        "summary": {name: summary(run) for name, run in runs.items()},
        "runs": {name: {**run, "samples": [list(s) for s in run["samples"]]} for name, run in runs.items()},
    }, indent=1))
    print(f"\n{'run':<8} {'index s':>8} {'graph s':>8} {'queries':>8} {'p50 ms':>8} {'numpy p50':>10} "
          f"{'exact top10':>12} {'p50 after':>10} {'numpy after':>12}")
    for name, run in runs.items():
        s = summary(run)
        print(f"{name:<8} {s['index_seconds']:>8} {s['graph_seconds']:>8} {s['queries_in_window']:>8} "
              f"{s['p50_ms_in_window']!s:>8} {s['numpy_p50_ms_in_window']!s:>10} {s['exact_top10_in_window']!s:>12} "
              f"{s['p50_ms_after']!s:>10} {s['numpy_p50_ms_after']!s:>12}")
    try:
        plot(out, RESULTS / "build_window.png")
        print(f"\n{out}\n{RESULTS / 'build_window.png'}")
    except ImportError:
        print(f"\n{out}\nno matplotlib here: .venv-bench/bin/python bench/build_window.py --plot {out}")


if __name__ == "__main__":
    main()
