"""The recommendation features' latency beside plain search, in the same run, on embedded Milvus Lite.

    python bench/recommend.py --n 20000           # ~1-2 min here (ingest and index build dominate)
    python bench/recommend.py --n 100000          # the issue's size (~5 min of ingest and index build)

Clustered unit vectors (768-d, HNSW M=32 efC=128, IP), a group field (500 values) and a timestamp.
Each feature: p50/p95 of single ``Collection.similar`` calls for the same queries; the exclusion list
is 10,000 ids, half of them among the nearest neighbours of the queries (a user who has seen the
neighbourhood), as lookalike runs it (over-fetch and drop) and, for comparison, handed to the
engine whole as ``id not in [...]``. Also ``similar_batch`` of 100 requests against 100 single calls.
Results: a table on the terminal and bench/results/recommend-<n>-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from lookalike import Client
from lookalike.documents import id_filter
from lookalike.retrieval import search_params_for

DIM, QUERIES, EXCLUDED = 768, 30, 10_000


def dataset(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 200), DIM))
    v = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def timed(call, queries) -> list[float]:
    call(queries[0])  # warm
    out = []
    for q in queries:
        start = time.perf_counter()
        call(q)
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    vectors = dataset(args.n)
    ids = [f"i{k}" for k in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        client = Client(codops="bench", password="x", data_dir=tmp)
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
        excluded += [i for i in rng.permutation(ids).tolist() if i not in set(excluded)][: EXCLUDED - len(excluded)]
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
        rows = []
        for label, extra in features.items():
            ms = timed(lambda q, extra=extra: col.similar(ids=[q], limit=10, **extra), queries)
            rows.append({"feature": label, "p50_ms": statistics.median(ms),
                         "p95_ms": float(np.percentile(ms, 95))})
        # the alternative: the whole list in the engine's expression
        expr = id_filter(excluded, negate=True)
        params = search_params_for(col.spec, None, 10, wide=True)

        def engine_expr(q: str) -> None:
            vec = vectors[ids.index(q)]
            col.engine.search("rec", data=[vec], filter=expr, limit=10, output_fields=["id"],
                              search_params=params, anns_field="vec")

        ms = timed(engine_expr, queries)
        rows.append({"feature": "exclude 10,000 ids in the engine's expression", "p50_ms": statistics.median(ms),
                     "p95_ms": float(np.percentile(ms, 95))})
        plain = rows[0]["p50_ms"]
        for row in rows:
            row["vs_plain"] = row["p50_ms"] / plain
        # batch: 100 users' requests in one call against 100 single calls
        users = [{"ids": [ids[k]], "limit": 10} for k in rng.choice(args.n, 100, replace=False)]
        start = time.perf_counter()
        for u in users:
            col.similar(u)
        single_s = time.perf_counter() - start
        start = time.perf_counter()
        col.similar_batch(users)
        batch_s = time.perf_counter() - start
        client.close()
    print(f"n={args.n} dim={DIM} ingest+index {ingest_s:.0f} s, {QUERIES} queries each, limit 10")
    print(f"{'feature':48} {'p50 ms':>8} {'p95 ms':>8} {'× plain':>8}")
    for row in rows:
        print(f"{row['feature']:48} {row['p50_ms']:8.1f} {row['p95_ms']:8.1f} {row['vs_plain']:8.2f}")
    print(f"100 requests: 100 single calls {single_s * 1000:.0f} ms, one similar_batch {batch_s * 1000:.0f} ms "
          f"({single_s / batch_s:.1f}×)")
    out = Path(__file__).parent / "results" / f"recommend-{args.n}-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({"n": args.n, "dim": DIM, "queries": QUERIES, "excluded": EXCLUDED, "rows": rows,
                               "batch_100": {"single_calls_s": single_s, "one_batch_s": batch_s},
                               "ingest_s": ingest_s, "python": sys.version.split()[0],
                               "machine": platform.machine()}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
