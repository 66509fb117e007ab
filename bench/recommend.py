"""The recommendation features' latency beside plain search, in the same run, on embedded Milvus Lite.

    python bench/recommend.py --n 20000           # ~1-2 min here (ingest and index build dominate)
    python bench/recommend.py --n 100000          # the issue's size (~5 min of ingest and index build)
    python bench/recommend.py --n 100000 --data-dir /tmp/rec100k   # keeps the collection for the next run

Clustered unit vectors (768-d, HNSW M=32 efC=128, IP), a group field (500 values) and a timestamp.
Each feature: p50/p95 of single ``Collection.similar`` calls for the same queries, wall clock and
this process's CPU time (on a shared machine the wall clock also counts the time spent waiting for a
core); the features take turns on each query in a fresh random order, so neither a burst of load
nor what the call before left in the CPU caches falls on one of them more than on another (with a
fixed cycle, plain search always ran right after the engine's 28 ms `id not in` scan, cold). The
exclusion list is 10,000 ids, half of them among the nearest neighbours of the queries (a user who
has seen the neighbourhood), as lookalike runs it (over-fetch and drop) and, for comparison, handed
to the engine whole as ``id not in [...]``. For comparison too, Milvus Lite's own grouping search and
its decay ranker (the function-score chain its gRPC search runs) over the same candidates (README,
"Recommendations": why lookalike runs its own). Also ``similar_batch`` of 100 requests against 100
single calls (best of 3). Results: a table on the terminal and bench/results/recommend-<n>-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from milvus_lite.function.builder import build_hybrid_function_score_chain
from milvus_lite.function.dataframe import DataFrame
from milvus_lite.function.types import ID_FIELD, SCORE_FIELD

from lookalike import Client
from lookalike.documents import id_filter
from lookalike.retrieval import search_params_for

DIM, QUERIES, EXCLUDED, ROUNDS = 768, 30, 10_000, 3


def dataset(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 200), DIM))
    v = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def timed(calls: dict[str, Callable[[str], object]], queries: list[str]) -> list[dict[str, object]]:
    """p50/p95 wall and CPU ms of each call over the queries, the calls taking turns on each query
    in a seeded random order (no call always runs first, or always after the same one)."""
    wall: dict[str, list[float]] = {label: [] for label in calls}
    cpu: dict[str, list[float]] = {label: [] for label in calls}
    for call in calls.values():
        call(queries[0])  # warm
    labels = list(calls)
    order = np.random.default_rng(2)
    for _ in range(ROUNDS):
        for q in queries:
            for label in order.permutation(labels).tolist():
                call = calls[label]
                start, start_cpu = time.perf_counter(), time.process_time()
                call(q)
                wall[label].append((time.perf_counter() - start) * 1000)
                cpu[label].append((time.process_time() - start_cpu) * 1000)
    return [{"feature": label, "p50_ms": statistics.median(wall[label]),
             "p95_ms": float(np.percentile(wall[label], 95)), "cpu_p50_ms": statistics.median(cpu[label])}
            for label in calls]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--data-dir", help="keep the collection here for the next run (default: a temporary directory)")
    args = parser.parse_args()
    vectors = dataset(args.n)
    ids = [f"i{k}" for k in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        client = Client(codops="bench", password="x", data_dir=args.data_dir or tmp)
        ingest_s = None
        if "rec" in client.list_collections() and client.collection("rec").count() == args.n:
            col = client.collection("rec")
        else:
            client.drop_collection("rec")
            col = client.create_collection(
                "rec", [{"name": "grp", "type": "int64"}, {"name": "ts", "type": "int64"}],
                {"vec": {"index_type": "HNSW", "metric_type": "IP", "M": 32, "efConstruction": 128}}, dim=DIM)
            start = time.perf_counter()
            col.index(({"id": ids[k], "vec": vectors[k], "grp": k % 500, "ts": 1_700_000_000 + k}
                       for k in range(args.n)), progress=False)
            col.engine.wait_for_index("rec")
            ingest_s = time.perf_counter() - start
        rng = np.random.default_rng(1)
        picked = rng.choice(args.n, QUERIES, replace=False)
        queries = [ids[k] for k in picked]
        # half the excluded ids are the queries' nearest neighbours, half random
        near = [h["id"] for q in queries[:5] for h in col.similar(ids=[q], limit=1000)]
        excluded = list(dict.fromkeys(near))[: EXCLUDED // 2]
        near_set = set(excluded)
        excluded += [i for i in rng.permutation(ids).tolist() if i not in near_set][: EXCLUDED - len(excluded)]
        recency = {"field": "ts", "scale": args.n / 10, "origin": 1_700_000_000 + args.n}
        features = {
            "plain": {},
            "exclude 10,000 ids": {"exclude_ids": excluded},
            "negative_ids (average_vector)": {"negative_ids": [ids[0]]},
            "best_score": {"negative_ids": [ids[0]], "strategy": "best_score"},
            "group_by (size 1)": {"group_by": "grp"},
            "diversity 0.3": {"diversity": 0.3},
            "recency exp": {"recency": recency},
            "min_score 0.2": {"min_score": 0.2},
            "offset 20": {"offset": 20},
            "all: group_by+diversity+recency+exclude": {"group_by": "grp", "diversity": 0.3, "recency": recency,
                                                         "exclude_ids": excluded},
        }
        calls: dict[str, Callable[[str], object]] = {
            label: (lambda q, extra=extra: col.similar(ids=[q], limit=10, **extra)) for label, extra in features.items()
        }
        position = {i: k for k, i in enumerate(ids)}
        params = search_params_for(col.spec, None, 100, wide=False)

        def lite(q: str, **parameters: object) -> list[dict]:
            """Milvus Lite's own search (its Collection.search, no lookalike stages) of q's vector,
            read as lookalike reads it."""
            vector = col.columns_by_id([q], ["vec"])[q]["vec"]
            return col.engine._reading("rec", "search", lambda c: c.search(  # noqa: SLF001
                [vector], metric_type="IP", anns_field="vec", search_params=params["params"], **parameters))[0]

        ranker = SimpleNamespace(name="recency", input_field_names=["ts"], output_field_names=[], params={
            "reranker": "decay", "function": "exp", "origin": recency["origin"], "scale": recency["scale"]})

        def lite_decay(q: str) -> None:
            hits = lite(q, top_k=100, output_fields=["ts"])
            chain = build_hybrid_function_score_chain(ranker, search_params={"limit": 10}, search_metrics=["IP"])
            chain.execute(DataFrame([[{ID_FIELD: h["id"], SCORE_FIELD: h["distance"], **h["entity"]} for h in hits]]))

        # the alternative: the whole list in the engine's expression
        expr = id_filter(excluded, negate=True)
        expr_params = search_params_for(col.spec, None, 10, wide=True)
        calls["group_by in Lite's own grouping search"] = lambda q: lite(q, top_k=10, output_fields=["id"],
                                                                          group_by_field="grp")
        calls["recency by Lite's decay ranker (same pool)"] = lite_decay
        rows = timed(calls, queries)
        # alone: its 10,000-literal expression would slow the calls after it (caches)
        rows += timed({"exclude 10,000 ids in the engine's expression": lambda q: col.engine.search(
            "rec", data=[vectors[position[q]]], filter=expr, limit=10, output_fields=["id"],
            search_params=expr_params, anns_field="vec")}, queries)
        plain, plain_cpu = rows[0]["p50_ms"], rows[0]["cpu_p50_ms"]
        for row in rows:
            row["vs_plain"], row["cpu_vs_plain"] = row["p50_ms"] / plain, row["cpu_p50_ms"] / plain_cpu
        # batch: 100 users' requests in one call against 100 single calls, best of 3
        users = [{"ids": [ids[k]], "limit": 10} for k in rng.choice(args.n, 100, replace=False)]
        single_s = batch_s = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for u in users:
                col.similar(u)
            single_s = min(single_s, time.perf_counter() - start)
            start = time.perf_counter()
            col.similar_batch(users)
            batch_s = min(batch_s, time.perf_counter() - start)
        client.close()
    load = os.getloadavg()[0]
    built = "collection reused" if ingest_s is None else f"ingest+index {ingest_s:.0f} s"
    print(f"n={args.n} dim={DIM} {built}, {QUERIES} queries × {ROUNDS} rounds, limit 10, "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    print(f"{'feature':48} {'p50 ms':>8} {'p95 ms':>8} {'× plain':>8} {'CPU p50':>8} {'× plain':>8}")
    for row in rows:
        print(f"{row['feature']:48} {row['p50_ms']:8.2f} {row['p95_ms']:8.2f} {row['vs_plain']:8.2f} "
              f"{row['cpu_p50_ms']:8.2f} {row['cpu_vs_plain']:8.2f}")
    print(f"100 requests: 100 single calls {single_s * 1000:.0f} ms, one similar_batch {batch_s * 1000:.0f} ms "
          f"({single_s / batch_s:.1f}×)")
    out = Path(__file__).parent / "results" / f"recommend-{args.n}-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({"n": args.n, "dim": DIM, "queries": QUERIES, "excluded": EXCLUDED, "rows": rows,
                               "batch_100": {"single_calls_s": single_s, "one_batch_s": batch_s},
                               "ingest_s": ingest_s, "load_average": load, "python": sys.version.split()[0],
                               "machine": platform.machine()}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
