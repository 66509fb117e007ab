"""Throughput under concurrency: lookalike in process against FAISS HNSW, and the HTTP service.

In process, T threads each send single queries (one vector, top 10, ef 64) for a fixed time:
lookalike through ``Collection.similar`` on its embedded engine, FAISS HNSW through
``index.search`` with the same vectors, the same M/efConstruction and the same ef (FAISS's own
OpenMP threads set to 1: the Python threads are the concurrency, as in a web service). The two
alternate round by round, so both see the same machine; queries/s is the median round.

Over HTTP, the service (``create_app`` under uvicorn on loopback, as ``lookalike serve`` runs
it, in a process of its own) answers ``POST /similar`` with a vector from N clients at once
(threads, one ``httpx.Client`` each, a fixed number of requests in all): requests/s, p50 and p99.

    python bench/throughput.py --size 100000 --threads 1,2,4 --in-flight 1,4,16
    python bench/throughput.py --size 100000 --workdir /tmp/tp100k   # keeps the built collection
    python bench/throughput.py --size 100000 --chunks 7 --in-flight ""   # several segments: pooled vs one by one
    python bench/throughput.py --size 1000000 --threads "" --in-flight ""   # 1M's segments, no FAISS

A table on the terminal and ``bench/results/throughput-<size>-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import data  # noqa: E402
from systems import HNSW, K  # noqa: E402

CODOPS = "bench"
TOKEN = "bench-throughput-token"
COLLECTION = "bench"
EF = 64


def open_lookalike(workdir: Path, ds: data.Dataset, chunks: int = 1) -> tuple[Any, Any]:
    """The benchmark collection in ``workdir`` (built, indexed and waited for on first use),
    written in ``chunks`` flushed parts: each flush seals a segment (the engine's compaction may
    merge some of them again)."""
    from pymilvus import DataType, FieldSchema

    import lookalike

    client = lookalike.Client(codops=CODOPS, password="bench", uri="", data_dir=str(workdir))
    if COLLECTION in client.list_collections():
        col = client.collection(COLLECTION)
        if col.count() == len(ds.vectors):
            return client, col
        client.drop_collection(COLLECTION)
    col = client.create_collection(
        COLLECTION,
        fields=[FieldSchema(name="language", dtype=DataType.VARCHAR, max_length=16)],
        indexes={"vec": {"metric_type": "IP", "index_type": "HNSW", **HNSW}, "language": None},
        dim=ds.vectors.shape[1],
    )
    ids = ds.ids  # a property that builds the list
    for part in np.array_split(np.arange(len(ids)), chunks):
        col.index(({"id": ids[i], "vec": ds.vectors[i], "language": str(ds.languages[i])} for i in part),
                  flush=True, progress=False)
    client.wait_for_index(COLLECTION)
    return client, col


def segment_rows(col: Any) -> list[int]:
    """The rows of each sealed segment of the collection (an engine internal: Milvus Lite's)."""
    return col.engine._reading(COLLECTION, "count segments",  # noqa: SLF001
                               lambda c: [int(s.num_rows) for s in c._read_snapshot()[0]])  # noqa: SLF001


def open_faiss(workdir: Path, ds: data.Dataset) -> Any:
    """FAISS HNSW over the same vectors with the same parameters (cached in ``workdir``).

    When the collection is one segment (up to ~130k rows), its graph file is that very graph
    (the engine's build is FAISS's, rows in the same order): FAISS reads it instead of building.
    """
    import faiss

    path = workdir / f"faiss-hnsw-{len(ds.vectors)}.index"
    graphs = list(workdir.glob(f"milvus.db/databases/*/collections/{COLLECTION}/partitions/*/indexes/*.vec.hnsw.idx"))
    if not path.exists() and len(graphs) == 1:
        index = faiss.read_index(str(graphs[0]))
        if index.ntotal == len(ds.vectors):
            return index
    if path.exists():
        return faiss.read_index(str(path))
    index = faiss.IndexHNSWFlat(ds.vectors.shape[1], HNSW["M"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW["efConstruction"]
    index.add(np.ascontiguousarray(ds.vectors))
    faiss.write_index(index, str(path))
    return index


def queries_per_second(search: Callable[[np.ndarray], Any], queries: np.ndarray, threads: int,
                       seconds: float) -> float:
    """Queries answered per second by ``threads`` threads, each sending one query at a time."""
    stop = threading.Event()
    counts = [0] * threads
    start_line = threading.Barrier(threads + 1)

    def work(t: int) -> None:
        start_line.wait()
        i, n = t, 0
        while not stop.is_set():
            search(queries[i % len(queries)])
            i += threads
            n += 1
        counts[t] = n

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    start_line.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in pool:
        thread.join()
    return sum(counts) / (time.perf_counter() - began)


def in_process(col: Any, index: Any, ds: data.Dataset, levels: list[int], seconds: float,
               rounds: int) -> list[dict[str, Any]]:
    """lookalike and FAISS queries/s at each thread count (median of alternating rounds)."""
    import faiss

    faiss.omp_set_num_threads(1)
    params = faiss.SearchParametersHNSW(efSearch=EF)

    def faiss_search(q: np.ndarray) -> Any:
        return index.search(q[None, :], K, params=params)

    def lookalike_search(q: np.ndarray) -> Any:
        return col.similar(vectors=q, limit=K, search_params={"ef": EF})

    # Same answers first: the comparison is between equal searches.
    q0 = ds.queries[0]
    rows = [int(h["id"][4:]) for h in lookalike_search(q0)]
    _, frows = faiss_search(q0)
    out = []
    for threads in levels:
        ours, theirs = [], []
        for _ in range(rounds):
            ours.append(queries_per_second(lookalike_search, ds.queries, threads, seconds))
            theirs.append(queries_per_second(faiss_search, ds.queries, threads, seconds))
        row = {"threads": threads, "lookalike_qps": round(statistics.median(ours), 1),
               "faiss_qps": round(statistics.median(theirs), 1),
               "lookalike_rounds": [round(x, 1) for x in ours], "faiss_rounds": [round(x, 1) for x in theirs]}
        row["ratio"] = round(row["faiss_qps"] / row["lookalike_qps"], 2)
        out.append(row)
        print(f"threads {threads}: lookalike {row['lookalike_qps']:>8} q/s   FAISS {row['faiss_qps']:>8} q/s   "
              f"FAISS/lookalike {row['ratio']}", flush=True)
    out_of_top = len(set(rows) ^ set(frows[0].tolist()))
    if out_of_top:
        print(f"note: the first query's top {K} differs between the two in {out_of_top} rows")
    return out


# The service in a process of its own, as `lookalike serve` runs it (one uvicorn worker: the
# embedded engine belongs to one process), so the clients' threads do not share its GIL.
SERVER = """
import sys
sys.path.insert(0, sys.argv[1])
import uvicorn
from pathlib import Path
from lookalike.config import Settings
from lookalike.http.app import create_app
app = create_app(settings=Settings(codops=sys.argv[2], data_dir=Path(sys.argv[3])), environ={sys.argv[4]: sys.argv[5]})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[6]), log_level="warning")
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_level(url: str, headers: dict[str, str], path: str, bodies: list[bytes], in_flight: int,
               requests: int) -> dict[str, Any]:
    """``requests`` POSTs, ``in_flight`` clients each waiting for its answer: requests/s, p50, p99."""
    import httpx

    clients = [httpx.Client(base_url=url, headers=headers, timeout=120) for _ in range(in_flight)]
    for c in clients:  # connect and warm
        c.post(path, content=bodies[0]).raise_for_status()
    latencies: list[float] = []
    lock = threading.Lock()
    remaining = [requests]

    def work(client: httpx.Client, t: int) -> None:
        mine, i = [], t
        while True:
            with lock:
                remaining[0] -= 1
                if remaining[0] < 0:
                    break
            began = time.perf_counter()
            client.post(path, content=bodies[i % len(bodies)]).raise_for_status()
            mine.append(time.perf_counter() - began)
            i += in_flight
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=work, args=(c, t)) for t, c in enumerate(clients)]
    began = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - began
    for c in clients:
        c.close()
    lat = np.asarray(latencies) * 1e3
    return {"in_flight": in_flight, "requests": len(lat), "requests_per_s": round(len(lat) / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2)}


def parallel_vs_sequential(col: Any, ds: data.Dataset, efs: tuple[int, ...] = (64, 256), n: int = 200,
                           rounds: int = 3) -> list[dict[str, Any]]:
    """Single-query p50 with the segments searched by the pool (``patches/parallel.py``) and one
    after another (the search group's own step), alternating rounds, with the same answers."""
    from lookalike.engines.lite.patches import search as lite_search

    pooled = lite_search.search_sources
    steps = {"parallel": pooled, "sequential": getattr(pooled, "__wrapped__", pooled)}
    out = []
    for ef in efs:
        lat: dict[str, list[float]] = {name: [] for name in steps}
        found: dict[str, list[list[str]]] = {}
        for _ in range(rounds):
            for name, step in steps.items():
                lite_search.search_sources = step
                hits = []
                for q in ds.queries[:n]:
                    began = time.perf_counter()
                    hits.append([h["id"] for h in col.similar(vectors=q, limit=K, search_params={"ef": ef})])
                    lat[name].append(time.perf_counter() - began)
                found[name] = hits
        lite_search.search_sources = pooled
        rows = [[int(i[4:]) for i in h] for h in found["parallel"]]
        row = {"ef": ef, "recall": round(data.recall(rows, ds.truth[:n]), 4),
               "same_answers": found["parallel"] == found["sequential"],
               **{f"{name}_p50_ms": round(float(np.percentile(v, 50)) * 1e3, 3) for name, v in lat.items()}}
        out.append(row)
        print(f"ef {ef}: parallel p50 {row['parallel_p50_ms']} ms, sequential {row['sequential_p50_ms']} ms, "
              f"recall {row['recall']}, same answers {row['same_answers']}", flush=True)
    return out


def over_http(workdir: Path, ds: data.Dataset, levels: list[int], requests: int) -> list[dict[str, Any]]:
    """Requests/s, p50 and p99 of ``POST /similar`` at each number of requests in flight."""
    import subprocess

    import httpx

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(HERE.parent / "src"), CODOPS, str(workdir),
                               f"CODOPS_{CODOPS.upper()}_API_TOKEN", TOKEN, str(port)])
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    path = f"/v1/{CODOPS}/collections/{COLLECTION}/similar"
    bodies = [json.dumps({"vectors": q.tolist(), "limit": K, "search_params": {"ef": EF}}).encode()
              for q in ds.queries[:200]]
    out = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(url + "/health", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the service did not start") from None
                time.sleep(0.2)
        for in_flight in levels:
            row = http_level(url, headers, path, bodies, in_flight, requests)
            out.append(row)
            print(f"in flight {in_flight:>2}: {row['requests_per_s']:>7} req/s   p50 {row['p50_ms']:>7} ms   "
                  f"p99 {row['p99_ms']:>7} ms", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--threads", default="1,2,4", help="in-process thread counts ('' to skip, and FAISS with it)")
    parser.add_argument("--in-flight", default="1,4,16", help="HTTP requests in flight ('' to skip)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per in-process round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per thread count")
    parser.add_argument("--requests", type=int, default=1000, help="HTTP requests per level")
    parser.add_argument("--workdir", type=Path, help="keep the collection and the FAISS graph here")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--chunks", type=int, default=1,
                        help="write the collection in this many flushed parts, for several segments: to compare "
                             "searching them in parallel and one after another (a kept --workdir is reused as built)")
    args = parser.parse_args()

    ds = data.load(args.size)
    with tempfile.TemporaryDirectory(prefix="lookalike-throughput-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        client, col = open_lookalike(workdir, ds, args.chunks)
        levels = [int(x) for x in args.threads.split(",") if x]
        # FAISS only for the in-process comparison ('' skips it: at 1M its graph takes ~30 min here)
        index = open_faiss(workdir, ds) if levels else None
        print(f"{args.size} x {ds.vectors.shape[1]} ready after {time.perf_counter() - t0:.0f} s "
              f"({os.cpu_count()} cores)", flush=True)
        segments = segment_rows(col)
        print(f"segments: {len(segments)} ({', '.join(map(str, segments))} rows)", flush=True)
        result: dict[str, Any] = {"size": args.size, "ef": EF, "k": K, "hnsw": HNSW, "cores": os.cpu_count(),
                                  "segments": len(segments), "segment_rows": segments, "chunks": args.chunks,
                                  "in_process": in_process(col, index, ds, levels, args.seconds, args.rounds)
                                  if levels else []}
        if len(segments) > 1:
            result["segments_searched"] = parallel_vs_sequential(col, ds)
        client.close()
        http_levels = [int(x) for x in args.in_flight.split(",") if x]
        result["http"] = over_http(workdir, ds, http_levels, args.requests) if http_levels else []

    if result["in_process"]:
        print("\n| threads | lookalike q/s | FAISS HNSW q/s | FAISS / lookalike |\n|---:|---:|---:|---:|")
    for r in result["in_process"]:
        print(f"| {r['threads']} | {r['lookalike_qps']:,.0f} | {r['faiss_qps']:,.0f} | {r['ratio']} |")
    if result["http"]:
        print("\n| in flight | requests/s | p50 ms | p99 ms |\n|---:|---:|---:|---:|")
        for r in result["http"]:
            print(f"| {r['in_flight']} | {r['requests_per_s']:,.0f} | {r['p50_ms']} | {r['p99_ms']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    target = args.out / f"throughput-{args.size}-{stamp}.json"
    target.write_text(json.dumps({"date": stamp, **result}, indent=1) + "\n")
    print(f"\nwrote {target}")


if __name__ == "__main__":
    main()
