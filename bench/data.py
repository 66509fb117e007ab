"""Benchmark data: clustered synthetic unit vectors, query sets and exact ground truth.

Uniform random vectors make every ANN index look broken, so the generator draws points around
cluster centres with low-rank noise (intrinsic dimension ~64), like text embeddings.
Everything is seeded and cached as .npy under bench/.cache/.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
LANGUAGES = ("en", "de", "es", "it")  # "fr" is drawn separately at FR_SHARE
FR_SHARE = 0.2
K = 10
FILTER_EXPR = 'language == "fr"'


@dataclass
class Dataset:
    """Vectors with ids and a language field, queries, and exact top-K answers."""

    name: str
    vectors: np.ndarray  # (n, dim) float32, unit norm
    languages: np.ndarray  # (n,) str
    queries: np.ndarray  # (nq, dim) float32, unit norm
    truth: np.ndarray  # (nq, K) row numbers, exact inner-product top-K
    truth_fr: np.ndarray  # (nq, K) row numbers among rows with language "fr"
    groups: np.ndarray  # (ng, 5) row numbers whose mean vector is a retrieve_similar query
    truth_groups: np.ndarray  # (ng, K) exact top-K for the normalised group means

    @property
    def ids(self) -> list[str]:
        """String primary keys, as lookalike's users write them."""
        return [f"doc-{i}" for i in range(len(self.vectors))]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(n: int, dim: int = 768, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Return (vectors, cluster labels): n unit vectors around n/100 centres."""
    rng = np.random.default_rng(seed)
    n_clusters = max(8, n // 100)
    rank = 64
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    basis = rng.standard_normal((rank, dim), dtype=np.float32) / np.sqrt(rank)
    labels = rng.integers(0, n_clusters, size=n)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):  # chunks keep peak memory low at 1M
        stop = min(n, start + 50_000)
        low = rng.standard_normal((stop - start, rank), dtype=np.float32) @ basis
        iso = rng.standard_normal((stop - start, dim), dtype=np.float32) * 0.35
        out[start:stop] = _unit(centres[labels[start:stop]] + 1.2 * low + iso)
    return out, labels


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Exact inner-product top-k row numbers, best first."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 256):
        scores = queries[start:start + 256] @ base.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out[start:start + 256] = np.take_along_axis(part, order, axis=1)
    return out


CORPUS = "corpus"  # the size argument that selects the shipped real corpus instead of synthetic data
# The whole DDTP corpus, written by `make bench-corpus` (apt's lists: needs the network once).
FULL_CORPUS = CACHE_DIR / "ddtp-full.jsonl.gz"
# Size arguments for real text from the whole corpus: documents (before the held-out queries).
FULL_CORPUS_SIZES = {"ddtp-50k": 50_000, "ddtp-all": None}
# The languages the default model (USE multilingual v3) reads; the corpus has others (da, sk, uk, cs).
MODEL_LANGUAGES = ("en", "fr", "de", "it", "es", "pt_BR", "ja", "ko", "pl", "ru", "zh_CN")


def is_size(value: str) -> bool:
    """Whether a --sizes entry names a dataset this module makes."""
    return value.isdigit() or value == CORPUS or value in FULL_CORPUS_SIZES


def load(n: int | str, n_queries: int = 1000, dim: int = 768, seed: int = 7, cached: bool = False) -> Dataset:
    """Build (or read from the cache) the synthetic dataset of n vectors, or a real corpus.

    ``cached``: read a corpus's cached vectors as they are, without loading the embedder to check
    them (bench/run.py has checked them; a worker must not hold the model in its memory).
    """
    if n == CORPUS:
        return load_corpus(n_queries, seed, cached)
    if n in FULL_CORPUS_SIZES:
        return load_full_corpus(str(n), n_queries, seed, cached)
    n = int(n)
    key = hashlib.sha1(json.dumps([n, n_queries, dim, seed, 2]).encode()).hexdigest()[:10]
    path = CACHE_DIR / f"synthetic-{n}-{key}.npz"
    name = f"synthetic-{n // 1000}k"
    if not path.exists():
        # Queries are fresh points from the same clusters: generate n + n_queries, split.
        allv, _ = synthetic(n + n_queries, dim, seed)
        rng = np.random.default_rng(seed + 1)
        languages = np.where(rng.random(n) < FR_SHARE, "fr", rng.choice(LANGUAGES, size=n))
        _save(path, _with_truth(name, allv[:n], languages, allv[n:], rng))
    return _read(path, name)


def load_corpus(n_queries: int = 1000, seed: int = 7, cached: bool = False) -> Dataset:
    """The shipped DDTP sample (every description and translation) through the default embedder."""
    key = hashlib.sha1(json.dumps([n_queries, seed, 1]).encode()).hexdigest()[:10]
    return _embedded_corpus(CACHE_DIR / f"corpus-{key}.npz", "sample", None, n_queries, seed, cached)


def load_full_corpus(size: str, n_queries: int = 1000, seed: int = 7, cached: bool = False) -> Dataset:
    """The first documents (smallest md5 first) of the whole DDTP corpus in the model's languages,
    or all of them: real text beyond the shipped sample."""
    limit = FULL_CORPUS_SIZES[size]
    key = hashlib.sha1(json.dumps([size, n_queries, seed, 1]).encode()).hexdigest()[:10]
    path = CACHE_DIR / f"{size}-{key}.npz"
    if not path.exists() and not FULL_CORPUS.exists():
        raise FileNotFoundError(f"{FULL_CORPUS} is missing: run `make bench-corpus` (needs apt's network once)")
    return _embedded_corpus(path, "full", None if limit is None else limit + n_queries, n_queries, seed, cached)


def _embedded_corpus(path: Path, source: str, limit: int | None, n_queries: int, seed: int,
                     cached: bool) -> Dataset:
    """DDTP documents through the default embedder, ``n_queries`` of them held out as queries.

    Embedding takes minutes once; the vectors are cached with the model's name, and embedded
    again when the default model changes. Workers read the cache bench/run.py wrote.
    """
    corpus = embedding = None
    if not (cached and path.exists()):
        try:
            from lookalike.quality import corpus, embedding
        except ImportError:  # a peer's venv: only the cache can be read
            pass
    model = embedding.get_embedder() if embedding else None
    stale = model is not None and (not path.exists() or str(np.load(path)["model"]) != repr(model))
    if stale:
        if source == "sample":
            docs = list(corpus.documents(corpus.load_sample()))
        else:
            docs = list(itertools.islice(corpus.documents(corpus.load_records(FULL_CORPUS), MODEL_LANGUAGES), limit))
        vectors = model.encode([d["text"] for d in docs]).astype(np.float32)
        languages = np.array([d["language"] for d in docs])
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(docs))
        held, kept = order[:n_queries], np.sort(order[n_queries:])
        _save(path, _with_truth("ddtp", vectors[kept], languages[kept], vectors[held], rng), model=repr(model))
    ds = _read(path, "ddtp")
    ds.name = f"ddtp-{len(ds.vectors) // 1000}k"
    return ds


def _with_truth(name: str, vectors: np.ndarray, languages: np.ndarray, queries: np.ndarray,
                rng: np.random.Generator) -> Dataset:
    """Add the exact answers: top-K, top-K among "fr" rows, and top-K of 5-row means."""
    fr_rows = np.flatnonzero(languages == "fr")
    truth = exact_topk(vectors, queries)
    truth_fr = fr_rows[exact_topk(vectors[fr_rows], queries)]
    groups = rng.integers(0, len(vectors), size=(min(200, len(queries)), 5))
    truth_groups = exact_topk(vectors, _unit(vectors[groups].mean(axis=1)))
    return Dataset(name, vectors, languages, queries, truth, truth_fr, groups, truth_groups)


def _save(path: Path, ds: Dataset, **extra: str) -> None:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f: getattr(ds, f) for f in Dataset.__dataclass_fields__ if f != "name"}, **extra)


def _read(path: Path, name: str) -> Dataset:
    z = np.load(path, allow_pickle=False)
    return Dataset(name, *(z[f] for f in Dataset.__dataclass_fields__ if f != "name"))


def recall(found: list[list[int]], truth: np.ndarray, k: int = K) -> float:
    """Mean recall@k of found row numbers against exact answers."""
    hits = sum(len(set(f[:k]) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (k * len(truth))
