"""Measure one system on one dataset, in a process of its own; print the figures as JSON.

Run by bench/run.py with the python of the system's virtual environment:
``python bench/worker.py --system faiss-hnsw --size 10000 --workdir DIR --out FILE [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import data  # noqa: E402
from systems import SYSTEMS, System, disk_bytes  # noqa: E402

# Queries per measurement: (full run, --quick)
COUNTS = {"single": (200, 40), "batch": (500, 200), "sweep": (100, 30), "groups": (100, 30)}
BATCH_NQ = 100


class PeakRss(threading.Thread):
    """Samples the resident memory of this process and its children (a server) every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        me = psutil.Process()
        while not self.stop.wait(0.2):
            try:
                procs = [me, *me.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                continue

    def result(self) -> int:
        self.stop.set()
        return max(self.peak, own_high_water_mark())


def own_high_water_mark() -> int:
    """This process's peak resident memory in bytes (what sampling can miss between samples).

    Linux's VmHWM belongs to the process's own address space. ``ru_maxrss`` would not do: it
    survives exec, so a worker would report at least what bench/run.py held when it started it.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return 0


def rows_of(ids_found: list[list[str]]) -> list[list[int]]:
    """Dataset row numbers from ids "doc-<row>"."""
    return [[int(i[4:]) for i in ids] for ids in ids_found]


def timed_singles(system: System, queries: np.ndarray, fr_only: bool, param: int | None):
    """One call per query: latencies (s) and the ids found."""
    lat, found = [], []
    for q in queries:
        t = time.perf_counter()
        found.extend(system.search(q[None, :], fr_only, param))
        lat.append(time.perf_counter() - t)
    return np.asarray(lat), found


def latency_figures(lat: np.ndarray) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
        "p95_ms": round(float(np.percentile(lat, 95)) * 1e3, 3),
        "qps_single": round(len(lat) / float(lat.sum()), 1),
    }


def measure(system: System, ds: data.Dataset, quick: bool, reuse: bool) -> dict:
    share = system.query_share
    count = {k: max(10, int((v[1] if quick else v[0]) * share) // 10 * 10) for k, v in COUNTS.items()}
    out: dict = {"n": len(ds.vectors), "dim": int(ds.vectors.shape[1]), "dataset": ds.name}
    ids = ds.ids
    if reuse:
        system.reopen()
        out["reused"] = system.reuses
    else:
        t0 = time.perf_counter()
        system.ingest(ids, ds.vectors, ds.languages)
        ingest_s = time.perf_counter() - t0 - system.setup_s
        system.wait_indexed()
        searchable_s = time.perf_counter() - t0 - system.setup_s
        out.update(ingest_s=round(ingest_s, 2), ingest_vps=round(len(ids) / ingest_s, 1),
                   searchable_s=round(searchable_s, 2))

    param = system.default_param
    system.search(ds.queries[:5], False, param)  # warm caches (filter compilation, lazy loads)
    system.search(ds.queries[:5], True, param)

    for label, fr_only, truth in (("", False, ds.truth), ("fr_", True, ds.truth_fr)):
        n_single = count["single"]
        lat, found = timed_singles(system, ds.queries[:n_single], fr_only, param)
        out.update({f"{label}{k}": v for k, v in latency_figures(lat).items()})
        # Recall over more queries, asked in batches (nq > 1 is the fast path everywhere).
        n_batch = count["batch"]
        t = time.perf_counter()
        batch_found: list[list[str]] = []
        for start in range(0, n_batch, BATCH_NQ):
            batch_found.extend(system.search(ds.queries[start:min(start + BATCH_NQ, n_batch)], fr_only, param))
        elapsed = time.perf_counter() - t
        out[f"{label}batch_qps"] = round(n_batch / elapsed, 1)
        out[f"{label}recall"] = round(data.recall(rows_of(batch_found), truth[:n_batch]), 4)
        out[f"{label}recall_single"] = round(data.recall(rows_of(found), truth[:n_single]), 4)

    sweep = []
    for value in system.sweep:
        for fr_only, truth in ((False, ds.truth), (True, ds.truth_fr)):
            n = count["sweep"]
            lat, found = timed_singles(system, ds.queries[:n], fr_only, value)
            recall = round(data.recall(rows_of(found), truth[:n]), 4)
            sweep.append({"param": value, "filtered": fr_only, "recall": recall, **latency_figures(lat)})
    out["sweep"] = sweep

    lat, found = [], []
    for group in ds.groups[:count["groups"]]:
        t = time.perf_counter()
        found.append(system.similar_to_ids([ids[r] for r in group], param))
        lat.append(time.perf_counter() - t)
    out["similar_ids_p50_ms"] = round(float(np.percentile(lat, 50)) * 1e3, 3)
    out["similar_ids_recall"] = round(data.recall(rows_of(found), ds.truth_groups[:len(found)]), 4)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    parser.add_argument("--size", required=True,
                        help=f"rows of synthetic data, {data.CORPUS!r}, or one of {sorted(data.FULL_CORPUS_SIZES)}")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="open the data already in --workdir")
    args = parser.parse_args()

    rss = PeakRss()
    rss.start()
    ds = data.load(args.size, cached=True)  # run.py prepared it
    args.workdir.mkdir(parents=True, exist_ok=True)
    system = SYSTEMS[args.system](args.workdir, ds.vectors.shape[1], len(ds.vectors))
    result: dict = {"system": system.name, "key": args.system, "param_name": system.param_name,
                    "default_param": system.default_param}
    try:
        result.update(measure(system, ds, args.quick, args.reuse))
        result["disk_mb"] = round(disk_bytes(args.workdir) / 2**20, 1)
    except Exception as exc:  # noqa: BLE001 - a failing system is reported, the suite goes on
        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        try:
            system.close()
        except Exception:  # noqa: BLE001
            traceback.print_exc()
    result["peak_rss_mb"] = round(rss.result() / 2**20, 1)
    result["info"] = system.info
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
