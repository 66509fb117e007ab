"""Capacity sheet of lookalike on a local Milvus 2.3.5 server: ingest rate, time until searchable,
server memory per million 768-d vectors (HNSW M=32, efConstruction=128, IP), queries per second
per core at recall@10 >= 0.95.

    python bench/capacity.py            # N = 50k and 100k (~10-15 min); waits for other benchmarks
    python bench/capacity.py --quick    # N = 10k, fewer queries (~2 min); does not wait

Each N gets a fresh server (``lookalike.ops.milvus_server.MilvusServer``, authentication on), one provisioned
organisation, and the library's own calls: ``Collection.index`` (one flush), ``Collection.similar``
(single queries) and ``Collection.similar_batch`` (100 queries a call). Root only watches (segment
states). Figures are taken once the server's background work (compaction, index builds) is over.
Memory is the resident set of the server's process tree (median of 6 one-second samples) with
the collection empty, and again after a restart has loaded the N vectors from storage;
memory per million vectors is the slope between the two sizes. QPS per core divides queries by
the CPU seconds the server process tree spent on them (the machine's cores are shared).
Results: a table on the terminal and bench/results/capacity-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import data  # noqa: E402
import grpc  # noqa: E402
from pymilvus import MilvusClient  # noqa: E402
from pymilvus.exceptions import MilvusException  # noqa: E402

from lookalike import Client, Settings  # noqa: E402
from lookalike.engines import database_name  # noqa: E402
from lookalike.ops import admin  # noqa: E402
from lookalike.ops.milvus_server import MilvusServer  # noqa: E402

# provision() probes each grant with calls that fail on purpose; pymilvus logs each at ERROR.
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)

CODE = "capacity"
COLLECTION = "vectors"
DIM = 768
INDEX = {"index_type": "HNSW", "metric_type": "IP", "M": 32, "efConstruction": 128}
TARGET_RECALL = 0.95
BATCH_NQ = 100
REPEATS = 3  # per ef and kind of query; the run with the least server CPU is reported
# (sizes, queries for recall and batch QPS, single queries per ef)
PLANS = {"full": ((50_000, 100_000), 1000, 200), "quick": ((10_000,), 200, 50)}
EFS = (16, 32, 64, 128)
SEARCHABLE_TIMEOUT = 900.0
SETTLE_SECONDS = 6.0
# Milvus compacts and re-indexes segments in the background after an ingest (seen here: RSS up by
# 500 MB and queries costing twice the CPU); figures are taken once the server is below this.
QUIET_CORES = 0.15
QUIET_TIMEOUT = 300.0


# -- the machine and its other jobs ---------------------------------------------------------


def other_benchmarks() -> list[str]:
    """Command lines of other running processes that look like benchmarks (``bench/`` in them)."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["pid"] not in mine and "bench/" in cmdline:
            found.append(f"{proc.info['pid']} {cmdline[:160]}")
    return found


def wait_for_quiet(max_wait: float, poll: float = 30.0) -> tuple[list[str], float]:
    """Wait (at most ``max_wait`` s) until no other benchmark runs; return what still ran, and
    how long we waited."""
    began = time.monotonic()
    others = other_benchmarks()
    while others and time.monotonic() - began + poll <= max_wait:
        print(f"waiting for {len(others)} other benchmark process(es): {others[0]}", flush=True)
        time.sleep(poll)
        others = other_benchmarks()
    return others, time.monotonic() - began


class Watch(threading.Thread):
    """Notes every other benchmark seen while we measure (checked every 10 s)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: dict[int, str] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(10.0):
            for line in other_benchmarks():
                pid, _, cmdline = line.partition(" ")
                self.seen.setdefault(int(pid), cmdline)

    def stop(self) -> list[str]:
        self.done.set()
        self.join()
        return [f"{pid} {cmdline}" for pid, cmdline in self.seen.items()]


def machine() -> dict:
    import pymilvus

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=HERE.parent, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu, "cores": psutil.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "numpy": np.__version__, "pymilvus": pymilvus.__version__,
        "lookalike_commit": commit,
    }


# -- the server process tree ------------------------------------------------------------------


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def rss(pid: int) -> int:
    return sum(p.memory_info().rss for p in tree(pid))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server tree so far."""
    return sum(sum(p.cpu_times()[:2]) for p in tree(pid))


def wait_quiet(pid: int) -> float:
    """Wait (at most QUIET_TIMEOUT s) until the server's background work (compaction, index
    builds) is over: under QUIET_CORES of CPU for 3 s. Returns the seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < QUIET_TIMEOUT:
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(3.0)
        if (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) < QUIET_CORES:
            break
    return time.monotonic() - began


def settled(pid: int, seconds: float = SETTLE_SECONDS) -> tuple[int, float]:
    """Once the server is quiet: median RSS over ``seconds`` (one sample a second), and the CPU
    rate meanwhile (cores busy): background work the query figures include."""
    wait_quiet(pid)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    samples = []
    for _ in range(int(seconds)):
        time.sleep(1.0)
        samples.append(rss(pid))
    return int(statistics.median(samples)), (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)


class PeakRss(threading.Thread):
    """Peak RSS of the server tree, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            try:
                self.peak = max(self.peak, rss(self.pid))
            except psutil.Error:
                continue

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


# -- one size --------------------------------------------------------------------------------


def indexed_loaded_rows(root: MilvusClient) -> int:
    """Rows the query node serves from sealed segments with their HNSW index (not brute force)."""
    return sum(seg.num_rows for seg in root.list_loaded_segments(COLLECTION)
               if seg.index_id and getattr(seg.state, "name", str(seg.state)).endswith("Sealed"))


def segment_rows(root: MilvusClient) -> list[int]:
    """Rows of each loaded segment, sorted."""
    return sorted(seg.num_rows for seg in root.list_loaded_segments(COLLECTION))


def wait_searchable(root: MilvusClient, n: int, began: float) -> tuple[float, float]:
    """Wait until every row is served through the index; return the seconds since ``began`` when
    the index covered every row (index built) and when the query node served them (searchable)."""
    deadline = time.monotonic() + SEARCHABLE_TIMEOUT
    built = None
    while True:
        if built is None:
            info = root.describe_index(COLLECTION, "vec")
            if info.get("indexed_rows", 0) >= n and not info.get("pending_index_rows", 0):
                built = time.perf_counter() - began
        if built is not None and indexed_loaded_rows(root) >= n:
            return built, time.perf_counter() - began
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} rows not indexed and loaded after {SEARCHABLE_TIMEOUT:.0f} s")
        time.sleep(0.25)


def compact(root: MilvusClient) -> float:
    """Merge the small segments an ingest leaves now, and wait until the merged segments are
    indexed and served; return the seconds. (Milvus does it on its own within minutes, building
    indexes in the background: measured, that doubled the server's CPU per query.)"""
    began = time.monotonic()
    job = root.compact(COLLECTION)
    while root.get_compaction_state(job) != "Completed":
        _check_deadline(began, "compaction")
        time.sleep(0.5)
    while True:
        stored = {seg.segment_id for seg in root.list_persistent_segments(COLLECTION)}
        loaded = root.list_loaded_segments(COLLECTION)
        if {seg.segment_id for seg in loaded} == stored and all(seg.index_id for seg in loaded):
            return time.monotonic() - began
        _check_deadline(began, "serving the compacted segments")
        time.sleep(0.5)


def _check_deadline(began: float, what: str) -> None:
    if time.monotonic() - began > SEARCHABLE_TIMEOUT:
        raise TimeoutError(f"{what}: not done after {SEARCHABLE_TIMEOUT:.0f} s")


def rows_of(results: list[list[dict]]) -> list[list[int]]:
    return [[int(hit["id"][4:]) for hit in hits] for hits in results]


@dataclass
class Timed:
    """One timed run: wall seconds, CPU seconds of the server tree, of this process, and of every
    other process on the machine (other jobs share the cores), and what the call returned."""

    wall: float
    server_cpu: float
    client_cpu: float
    others_cpu: float
    result: Any


def busy_cpu() -> float:
    """CPU seconds the whole machine has spent busy (all cores)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def least_cpu(pid: int, call: Callable[[], Any]) -> tuple[Timed, list[Timed]]:
    """Run ``call`` REPEATS times; the run that cost the server least CPU (interference from
    other jobs only adds), and all runs."""
    runs = []
    for _ in range(REPEATS):
        machine0, server0, own0, t0 = busy_cpu(), cpu_seconds(pid), time.process_time(), time.perf_counter()
        result = call()
        wall, server, own = time.perf_counter() - t0, cpu_seconds(pid) - server0, time.process_time() - own0
        runs.append(Timed(wall, server, own, busy_cpu() - machine0 - server - own, result))
    return min(runs, key=lambda r: r.server_cpu), runs


def one_by_one(col, queries: np.ndarray, params: dict) -> tuple[list[float], list[list[dict]]]:
    """One ``similar`` call per query: latencies (s) and results."""
    lat, found = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(col.similar(vectors=q, limit=data.K, search_params=params))
        lat.append(time.perf_counter() - t)
    return lat, found


def in_batches(col, queries: np.ndarray, params: dict) -> list[list[dict]]:
    """``similar_batch`` calls of BATCH_NQ queries: results."""
    found: list[list[dict]] = []
    for start in range(0, len(queries), BATCH_NQ):
        found.extend(col.similar_batch(queries[start:start + BATCH_NQ], limit=data.K, search_params=params))
    return found


def sweep(col, pid: int, ds: data.Dataset, efs: tuple[int, ...], n_single: int) -> list[dict]:
    """Per ef: single-query latency, batch QPS, recall@10, and the server's CPU time for each."""
    queries, truth = ds.queries, ds.truth
    nq = len(queries)
    col.similar_batch(queries[:BATCH_NQ], limit=data.K, search_params={"ef": max(efs)})  # warm up
    out = []
    for ef in efs:
        params = {"ef": ef}
        single, single_runs = least_cpu(pid, partial(one_by_one, col, queries[:n_single], params))
        batch, batch_runs = least_cpu(pid, partial(in_batches, col, queries, params))
        lat, found_single = single.result
        out.append({
            "ef": ef,
            "recall": round(data.recall(rows_of(batch.result), truth), 4),
            "recall_single": round(data.recall(rows_of(found_single), truth[:n_single]), 4),
            "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 2),
            "p95_ms": round(float(np.percentile(lat, 95)) * 1e3, 2),
            "single_qps": round(n_single / single.wall, 1),
            "single_server_cpu_s": round(single.server_cpu, 3),
            "single_qps_per_core": round(n_single / single.server_cpu, 1),
            "single_qps_per_core_runs": [round(n_single / r.server_cpu, 1) for r in single_runs],
            "batch_qps": round(nq / batch.wall, 1),
            "batch_server_cpu_s": round(batch.server_cpu, 3),
            "batch_client_cpu_s": round(batch.client_cpu, 3),
            "batch_qps_per_core": round(nq / batch.server_cpu, 1),
            "batch_qps_per_core_runs": [round(nq / r.server_cpu, 1) for r in batch_runs],
            "others_cores": round(max(0.0, batch.others_cpu) / batch.wall, 2),
        })
    return out


def wait_served(root: MilvusClient, n: int) -> float:
    """After a restart: wait until the query node serves all ``n`` rows again; return the seconds."""
    began = time.monotonic()
    while time.monotonic() - began < SEARCHABLE_TIMEOUT:
        try:
            if indexed_loaded_rows(root) >= n:
                return time.monotonic() - began
            if getattr(root.get_load_state(COLLECTION).get("state"), "name", "") == "NotLoad":
                root.load_collection(COLLECTION)
        except (MilvusException, grpc.RpcError):
            pass  # the server is still loading
        time.sleep(0.5)
    raise TimeoutError(f"{n} rows not served {SEARCHABLE_TIMEOUT:.0f} s after the restart")


def measure(n: int, n_queries: int, n_single: int, efs: tuple[int, ...]) -> dict:
    """Fresh server, one organisation, N vectors through the library; every figure for this N."""
    ds = data.load(n, n_queries=n_queries, dim=DIM)
    out: dict = {"n": n, "dataset": ds.name, "queries": n_queries, "single_queries": n_single}
    with MilvusServer(die_with_parent=True) as server, tempfile.TemporaryDirectory() as tmp:
        secret = secrets.token_urlsafe(18)
        admin.provision(CODE, secret, server.uri, server.root_token)
        root = MilvusClient(server.uri, token=server.root_token.reveal(), db_name=database_name(CODE),
                            dedicated=True)
        with Client(Settings(codops=CODE, password=secret, uri=server.uri, data_dir=tmp)) as client:
            out["server_version"] = root.get_server_version()
            col = client.create_collection(COLLECTION, dim=DIM, indexes={"vec": INDEX})
            rss_empty, _ = settled(server.pid)
            disk_empty = _disk_bytes(server.data_dir)

            peak = PeakRss(server.pid)
            peak.start()
            docs = ({"id": f"doc-{i}", "vec": v} for i, v in enumerate(ds.vectors))
            t0 = time.perf_counter()
            written = col.index(docs, flush=True)
            ingest_s = time.perf_counter() - t0
            built_s, searchable_s = wait_searchable(root, n, t0)
            peak_rss = peak.stop()
            if written != n:
                raise RuntimeError(f"Collection.index wrote {written} of {n} documents")
            segments_searchable = segment_rows(root)
            compacted_s = compact(root)
            rss_built, idle_cpu = settled(server.pid)
            out.update(
                ingest_s=round(ingest_s, 2), ingest_vps=round(n / ingest_s, 1),
                index_built_s=round(built_s, 2), searchable_s=round(searchable_s, 2),
                segments_searchable=segments_searchable, compacted_s=round(compacted_s, 1),
                rss_empty_mb=round(rss_empty / 1e6, 1), peak_rss_mb=round(peak_rss / 1e6, 1),
                rss_after_build_mb=round(rss_built / 1e6, 1),
                disk_delta_mb=round((_disk_bytes(server.data_dir) - disk_empty) / 1e6, 1),
                idle_server_cores=round(idle_cpu, 3),
                segments=segment_rows(root),
            )
            out["sweep"] = sweep(col, server.pid, ds, efs, n_single)
            out["segments_after_sweep"] = segment_rows(root)  # differs if a compaction ran meanwhile

            # Right after a build the process still holds ingest buffers and index-build memory its
            # allocators have not returned (RSS went down and up by hundreds of MB). A restart loads
            # the collection from storage alone: the memory a query node needs to serve it.
            server.restart()
            reload_s = wait_served(root, n)
            # The same client, unchanged, still finds what it found before the restart.
            found = col.similar_batch(ds.queries[:BATCH_NQ], limit=data.K, search_params={"ef": max(efs)})
            rss_served, _ = settled(server.pid)
            # A cross-check on the same process: what releasing the collection gives back.
            root.release_collection(COLLECTION)
            rss_released, _ = settled(server.pid)
            out.update(
                rss_released_mb=round(rss_released / 1e6, 1),
                release_freed_mb=round((rss_served - rss_released) / 1e6, 1),
                reload_s=round(reload_s, 1), rss_served_mb=round(rss_served / 1e6, 1),
                recall_after_restart=round(data.recall(rows_of(found), ds.truth[:BATCH_NQ]), 4),
                rss_delta_mb=round((rss_served - rss_empty) / 1e6, 1),
                bytes_per_vector=round((rss_served - rss_empty) / n, 1),
            )
        root.close()
    return out


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


# -- summary and report ----------------------------------------------------------------------


def summarise(sizes: list[dict]) -> dict:
    """Memory per million vectors from the two largest sizes (the slope removes the fixed part),
    and the cheapest ef that reaches the target recall at the largest size."""
    summary: dict = {"raw_vectors_per_million_mb": DIM * 4}
    if len(sizes) >= 2:
        a, b = sizes[-2], sizes[-1]
        slope = (b["rss_delta_mb"] - a["rss_delta_mb"]) / (b["n"] - a["n"])  # MB per vector
        summary["memory_per_million_mb"] = round(slope * 1e6)
        summary["memory_fixed_mb"] = round(a["rss_delta_mb"] - slope * a["n"], 1)
        freed = (b["release_freed_mb"] - a["release_freed_mb"]) / (b["n"] - a["n"])
        summary["release_freed_per_million_mb"] = round(freed * 1e6)
        summary["memory_method"] = (
            f"slope between N={a['n']} and N={b['n']} of (server RSS serving the collection after a restart "
            f"- RSS with the collection empty), times 1e6"
        )
    largest = sizes[-1]
    good = [row for row in largest["sweep"] if row["recall"] >= TARGET_RECALL]
    if good:
        summary["at_target"] = {"n": largest["n"], **good[0]}
    return summary


def print_table(sizes: list[dict], summary: dict) -> None:
    head = ("N", "ingest vec/s", "index built s", "searchable s", "compacted s", "RSS empty MB", "peak RSS MB",
            "RSS after build MB", "RSS served MB", "delta MB", "B/vector", "freed by release MB")
    keys = ("n", "ingest_vps", "index_built_s", "searchable_s", "compacted_s", "rss_empty_mb", "peak_rss_mb",
            "rss_after_build_mb", "rss_served_mb", "rss_delta_mb", "bytes_per_vector", "release_freed_mb")
    _print_rows(head, [[s[k] for k in keys] for s in sizes])
    print()
    head = ("N", "ef", "recall@10", "p50 ms", "p95 ms", "single QPS", "single QPS/core", "batch QPS",
            "batch QPS/core", "server CPU s", "client CPU s", "others' cores")
    rows = [[s["n"], r["ef"], r["recall"], r["p50_ms"], r["p95_ms"], r["single_qps"], r["single_qps_per_core"],
             r["batch_qps"], r["batch_qps_per_core"], r["batch_server_cpu_s"], r["batch_client_cpu_s"],
             r["others_cores"]]
            for s in sizes for r in s["sweep"]]
    _print_rows(head, rows)
    print()
    if "memory_per_million_mb" not in summary:
        print(f"memory per vector at N={sizes[-1]['n']}: {sizes[-1]['bytes_per_vector']:.0f} bytes "
              "(one size: the server's fixed part included; give two sizes for the slope)")
    else:
        print(f"memory per million vectors: {summary['memory_per_million_mb']:.0f} MB "
              f"({summary['memory_method']}); fixed part {summary['memory_fixed_mb']} MB; "
              f"freed by releasing it after the restart: {summary['release_freed_per_million_mb']:.0f} MB per million; "
              f"raw float32 vectors alone: {summary['raw_vectors_per_million_mb']:.0f} MB")
    at = summary.get("at_target")
    if at:
        print(f"recall@10 >= {TARGET_RECALL} at N={at['n']}: ef={at['ef']} (recall {at['recall']}), "
              f"batch {at['batch_qps_per_core']} QPS per server core, single queries "
              f"{at['single_qps_per_core']} per server core, p50 {at['p50_ms']} ms")
    else:
        print(f"no ef in the sweep reached recall@10 >= {TARGET_RECALL}")


def _print_rows(head: tuple[str, ...], rows: list[list]) -> None:
    cells = [list(head), *[[f"{v:,}" if isinstance(v, int) else str(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 10k, fewer queries; no waiting")
    parser.add_argument("--sizes", help="comma-separated N values (default: 50000,100000; quick: 10000)")
    parser.add_argument("--efs", default=",".join(map(str, EFS)), help="HNSW ef values to sweep")
    parser.add_argument("--max-wait", type=float, default=None,
                        help="seconds to wait for other benchmarks to finish (default 1200; quick 0)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    plan_sizes, n_queries, n_single = PLANS["quick" if args.quick else "full"]
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else plan_sizes
    efs = tuple(int(e) for e in args.efs.split(","))
    max_wait = args.max_wait if args.max_wait is not None else (0.0 if args.quick else 1200.0)

    others, waited = wait_for_quiet(max_wait)
    if others:
        print(f"NOTE: {len(others)} other benchmark process(es) running; figures may be disturbed:")
        print("\n".join(f"  {o}" for o in others))
    began = time.monotonic()
    report: dict = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "index": INDEX, "dim": DIM, "limit": data.K, "batch_nq": BATCH_NQ,
        "machine": machine(),
        "others_running_at_start": others, "waited_s": round(waited, 1),
        "sizes": [],
    }
    watch = Watch()
    watch.start()
    for n in sizes:
        print(f"N={n:,}: fresh server, ingest, index, sweep ef {efs} ...", flush=True)
        report["sizes"].append(measure(n, n_queries, n_single, efs))
    report["others_seen_while_measuring"] = watch.stop()
    report["total_s"] = round(time.monotonic() - began, 1)
    report["summary"] = summarise(report["sizes"])

    print()
    print_table(report["sizes"], report["summary"])
    if report["others_seen_while_measuring"]:
        print("NOTE: other benchmark process(es) ran while we measured; figures may be disturbed:")
        print("\n".join(f"  {o[:160]}" for o in report["others_seen_while_measuring"]))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = args.out / f"capacity-{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten {path} ({report['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
