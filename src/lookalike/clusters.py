"""Clusters of a collection's documents: by k-means, or by a similarity threshold.

The vectors stream out of the collection (``Collection.iterate``, a batch at a time) into one
float32 matrix, the only copy held: n × dim × 4 bytes (100k × 512: 200 MB). For IP and COSINE
the rows are normalised in place and directions are clustered (cosine similarity); for L2 the
vectors are clustered as they are (squared distance, the engine's L2 score).

- ``k`` given: k-means, spherical for IP/COSINE (unit centroids, assignment by cosine) and
  ordinary for L2, by FAISS (``faiss.Kmeans``, 25 iterations), started from greedy k-means++
  centres drawn with ``seed`` from at most 20,000 rows (random starts, and even plain k-means++,
  often put two starts in one well-separated group and none in another, which k-means never
  undoes). The same seed and documents give the same clusters.
- ``threshold`` given: leader clustering, as a news desk groups stories. Documents are taken in
  id order; each joins the cluster whose leader (first member) is nearest, if that leader is at
  least ``threshold`` similar (for L2: within ``threshold``), else it leads a new cluster. One
  pass, exact (a FAISS flat index of the leaders, searched a batch at a time; the leaders a
  batch adds are compared within it, so the result is the one-by-one result), deterministic; it
  costs O(n · clusters · dim), so a high threshold on a large collection (many clusters) is slow.

Each cluster reports its size, its medoid (the member nearest the mean of its members, or its
k-means centroid), its members' ids and, where the collection has a text field, the words that
set it apart: class-based TF-IDF over the field's text (see ``_terms``), read in a second pass (lowercased
words of three or more letters, split at anything that is not a letter; each word counted once
per document; Chinese and Japanese runs are not segmented and stay whole). The text field is the
collection's first full-text field, else a varchar field called ``text``, else the varchar field
declared longest.

``field`` writes each document's cluster label into an integer field the collection has (int8
to int64; a third pass, an upsert of every field as read, vector included): a label field is
part of the schema, declared when the collection is created; one of another type is refused.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from .duplicates import check_threshold, checked_count, vector_batches
from .errors import InvalidInputError
from .schema import ID_FIELD, CollectionSpec, shown

if TYPE_CHECKING:
    from .collection import Collection

KMEANS_ITERATIONS = 25
KMEANS_PP_SAMPLE = 20_000
TERMS = 10
# Rows a leader batch searches at once: the leaders it adds are compared within the batch.
LEADER_BATCH = 2048
_LABEL_RANGES = {"int8": 2**7, "int16": 2**15, "int32": 2**31, "int64": 2**63}
_WORD = re.compile(r"[^\W\d_]{3,}")


def cluster(
    collection: Collection,
    k: int | None = None,
    threshold: float | None = None,
    filter_expr: str | None = None,
    field: str | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Group the documents (all, or those matching ``filter_expr``) into clusters.

    Args:
        collection: the collection.
        k: the number of clusters of k-means, in [1, documents]; or
        threshold: the similarity of leader clustering (IP/COSINE: in [-1, 1]; L2: a squared
            distance >= 0). Give exactly one of ``k`` and ``threshold``.
        filter_expr: cluster only the documents matching it.
        field: an integer field to write each document's label into (an upsert keeping every
            other field).
        seed: k-means' start; the same seed and documents give the same clusters.
        progress: a progress bar (default: on a terminal, past 10,000 documents).

    Returns:
        One dict per cluster, largest first (then by first id), ``label`` its position:
        ``{"label", "size", "medoid", "ids", "terms"}`` (``ids`` sorted; ``terms`` the words
        that set it apart, best first, empty without a text field). An empty collection gives [].
    """
    spec = collection.spec
    if (k is None) == (threshold is None):
        raise InvalidInputError("give exactly one of k (k-means) and threshold (leader clustering), "
                                f"got {'both' if k is not None else 'neither'}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise InvalidInputError(f"k must be an integer >= 1, got {shown(k)}")
    if threshold is not None:
        threshold = check_threshold(threshold, spec.metric)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise InvalidInputError(f"seed must be an integer in [0, 2**31), got {shown(seed)}")
    label_type = _label_field(spec, field)
    total = checked_count(collection, filter_expr)
    if not total:
        return []
    if k is not None and k > total:
        raise InvalidInputError(f"k must be at most the number of documents ({total}), got {k}")

    ids, matrix = _read(collection, filter_expr, total, progress)
    if k is not None and k > len(ids):  # documents deleted while reading
        raise InvalidInputError(f"k must be at most the number of documents ({len(ids)}), got {k}")
    spherical = spec.metric != "L2"
    if spherical:
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        np.divide(matrix, norms, out=matrix, where=norms > 0)
    if k is not None:
        labels, centres = _kmeans(matrix, k, spherical, seed)
    else:
        labels = _leaders(matrix, threshold, spherical)  # type: ignore[arg-type]
        centres = None
    labels, order = _by_size(labels)
    count = len(order)
    if centres is not None:
        centres = centres[order]
    if label_type is not None and count > _LABEL_RANGES[label_type]:
        raise InvalidInputError(f"field {field!r} is {label_type}: it cannot hold {count} cluster labels; "
                                "use a wider integer field")
    medoids = _medoids(matrix, labels, count, spherical, centres)
    del matrix
    label_of = dict(zip(ids, labels.tolist(), strict=True))
    text_field = _text_field(spec)
    members: list[list[str]] = [[] for _ in range(count)]
    for doc_id, label in zip(ids, labels.tolist(), strict=True):
        members[label].append(doc_id)
    sizes = [len(m) for m in members]
    terms = _terms(collection, text_field, filter_expr, label_of, sizes) if text_field else [[]] * count
    if field is not None:
        collection.index((dict(row, **{field: label_of[row[ID_FIELD]]})
                          for row in collection.iterate(filter_expr=filter_expr)
                          if row[ID_FIELD] in label_of), normalize=False, progress=progress)
    return [{"label": label, "size": len(members[label]), "medoid": ids[medoids[label]],
             "ids": sorted(members[label]), "terms": terms[label]} for label in range(count)]


def _label_field(spec: CollectionSpec, field: str | None) -> str | None:
    """The type of the label field, checked (None when no labels are written)."""
    if field is None:
        return None
    found = spec.field(field) if isinstance(field, str) else None
    if found is None:
        raise InvalidInputError(
            f"field {shown(field)} is not a metadata field of the collection: the cluster labels go into an "
            "integer field declared when the collection is created (e.g. topic:int32)")
    if found.type not in _LABEL_RANGES:
        raise InvalidInputError(f"field {field!r} is {found.type}: cluster labels need an integer field "
                                "(int8, int16, int32 or int64)")
    return found.type


def _read(collection: Collection, filter_expr: str | None, total: int,
          progress: bool | None) -> tuple[list[str], np.ndarray]:
    """The ids (in id order) and the vectors of the documents, in one matrix filled in place."""
    matrix = np.empty((total, collection.spec.dim), dtype=np.float32)
    ids: list[str] = []
    for batch_ids, vectors in vector_batches(collection, filter_expr, total, progress, "clustering"):
        end = len(ids) + len(batch_ids)
        if end > len(matrix):  # documents added while reading: grow (rare)
            matrix = np.concatenate([matrix, np.empty((max(end, 2 * len(matrix)) - len(matrix), matrix.shape[1]),
                                                      dtype=np.float32)])
        matrix[len(ids):end] = vectors
        ids.extend(batch_ids)
    return ids, matrix[: len(ids)]


def _kmeans(matrix: np.ndarray, k: int, spherical: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and centroids of k-means from k-means++ centres."""
    import faiss

    rng = np.random.default_rng(seed)
    sample = matrix if len(matrix) <= KMEANS_PP_SAMPLE else matrix[np.sort(
        rng.choice(len(matrix), KMEANS_PP_SAMPLE, replace=False))]
    start = _kmeans_pp(sample, k, rng)
    if spherical:
        start /= np.maximum(np.linalg.norm(start, axis=1, keepdims=True), 1e-12)
    # min_points_per_centroid=1: k <= n is checked already; FAISS would warn below 39 points a cluster
    kmeans = faiss.Kmeans(matrix.shape[1], k, niter=KMEANS_ITERATIONS, seed=seed, spherical=spherical,
                          verbose=False, min_points_per_centroid=1)
    kmeans.train(matrix, init_centroids=start)
    _, nearest = kmeans.index.search(matrix, 1)
    return nearest[:, 0].astype(np.int64), kmeans.centroids


def _kmeans_pp(sample: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k rows of ``sample`` drawn by greedy k-means++ (Arthur and Vassilvitskii, 2007; as
    scikit-learn draws them): each next one among 2 + log k candidates drawn with probability
    proportional to their squared distance to the nearest row drawn so far, the candidate that
    leaves the least total squared distance winning (a single draw often lands two starts in one
    well-separated group)."""
    squares = np.einsum("ij,ij->i", sample, sample)

    def distances(rows: np.ndarray) -> np.ndarray:  # squared, of every sample row to each of rows
        return np.maximum(squares[None, :] + squares[rows][:, None] - 2 * sample[rows] @ sample.T, 0)

    trials = 2 + int(math.log(k))
    chosen = [int(rng.integers(len(sample)))]
    nearest = distances(np.array(chosen))[0]
    for _ in range(1, k):
        total = float(nearest.sum())
        candidates = (rng.choice(len(sample), size=trials, p=nearest / total) if total > 0
                      else rng.integers(len(sample), size=trials))
        options = np.minimum(nearest[None, :], distances(candidates))
        best = int(np.argmin(options.sum(axis=1)))
        chosen.append(int(candidates[best]))
        nearest = options[best]
    return sample[chosen].copy()


def _leaders(matrix: np.ndarray, threshold: float, spherical: bool) -> np.ndarray:
    """Leader clustering's labels, in row order (see the module docstring)."""
    import faiss

    dim = matrix.shape[1]
    index = faiss.IndexFlatIP(dim) if spherical else faiss.IndexFlatL2(dim)
    labels = np.empty(len(matrix), dtype=np.int64)
    sign = 1.0 if spherical else -1.0  # scores compared as "higher is closer"
    bar = sign * threshold
    for start in range(0, len(matrix), LEADER_BATCH):
        batch = matrix[start:start + LEADER_BATCH]
        if index.ntotal:
            scores, nearest = index.search(batch, 1)
            best, label = sign * scores[:, 0], nearest[:, 0].astype(np.int64)
        else:
            best, label = np.full(len(batch), -np.inf), np.full(len(batch), -1, dtype=np.int64)
        # Leaders within the batch, one by one: only rows no earlier leader takes can lead.
        new: list[int] = []
        for row in np.flatnonzero(best < bar):
            if not new or (sign * _scores(batch[new], batch[row], spherical)).max() < bar:
                new.append(int(row))
        if new:
            # Each row's nearest leader among the earlier ones of the batch, beside its old one.
            near = sign * _pairwise(batch, batch[new], spherical)
            near[np.arange(len(batch))[:, None] <= np.asarray(new)[None, :]] = -np.inf
            pick = near.argmax(axis=1)
            closer = near[np.arange(len(batch)), pick] > best
            label[closer] = index.ntotal + pick[closer]
            label[new] = index.ntotal + np.arange(len(new))
            index.add(np.ascontiguousarray(batch[new]))
        labels[start:start + len(batch)] = label
    return labels


def _scores(rows: np.ndarray, vector: np.ndarray, spherical: bool) -> np.ndarray:
    """Each row's similarity (IP) or squared distance (L2) to ``vector``."""
    if spherical:
        return rows @ vector
    difference = rows - vector
    return np.einsum("ij,ij->i", difference, difference)


def _pairwise(rows: np.ndarray, others: np.ndarray, spherical: bool) -> np.ndarray:
    """Similarities (IP) or squared distances (L2) of every row to every other."""
    products = rows @ others.T
    if spherical:
        return products
    return np.maximum(np.einsum("ij,ij->i", rows, rows)[:, None] + np.einsum("ij,ij->i", others, others)[None, :]
                      - 2 * products, 0)


def _by_size(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels renumbered largest cluster first, then by first member, empty clusters dropped;
    and the old label of each new one."""
    sizes = np.bincount(labels)
    first = np.full(len(sizes), len(labels))
    np.minimum.at(first, labels, np.arange(len(labels)))
    kept = np.flatnonzero(sizes)
    order = kept[np.lexsort((first[kept], -sizes[kept]))]
    renumber = np.empty(len(sizes), dtype=np.int64)
    renumber[order] = np.arange(len(order))
    return renumber[labels], order


def _medoids(matrix: np.ndarray, labels: np.ndarray, count: int, spherical: bool,
             centres: np.ndarray | None) -> np.ndarray:
    """Per cluster, the row of the member nearest its centre (the members' mean when no centres
    are given; normalised for IP/COSINE); ties go to the earlier row."""
    if centres is None:
        centres = np.zeros((count, matrix.shape[1]), dtype=np.float32)
        for start in range(0, len(matrix), LEADER_BATCH):
            np.add.at(centres, labels[start:start + LEADER_BATCH], matrix[start:start + LEADER_BATCH])
        centres /= np.bincount(labels, minlength=count)[:, None]
    if spherical:
        centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    closeness = np.empty(len(matrix), dtype=np.float32)
    for start in range(0, len(matrix), LEADER_BATCH):
        rows, own = matrix[start:start + LEADER_BATCH], centres[labels[start:start + LEADER_BATCH]]
        products = np.einsum("ij,ij->i", rows, own)
        closeness[start:start + len(rows)] = products if spherical else -np.einsum("ij,ij->i", rows - own, rows - own)
    order = np.lexsort((np.arange(len(labels)), -closeness, labels))
    starts = np.flatnonzero(np.r_[True, np.diff(labels[order]) != 0])
    return order[starts]


def _text_field(spec: CollectionSpec) -> str | None:
    """The field the distinguishing terms are read from (see the module docstring)."""
    full_text = spec.full_text_fields
    if full_text:
        return full_text[0]
    texts = [f for f in spec.fields if f.type == "varchar"]
    named = [f for f in texts if f.name == "text"]
    if named:
        return named[0].name
    return max(texts, key=lambda f: f.max_length or 0).name if texts else None


def words(text: str) -> set[str]:
    """The distinct words of a text, as the terms count them (see the module docstring)."""
    return set(_WORD.findall(text.lower()))


def _terms(collection: Collection, text_field: str, filter_expr: str | None, label_of: dict[str, int],
           sizes: list[int]) -> list[list[str]]:
    """Per cluster, its ``TERMS`` best words by class-based TF-IDF: each cluster is one document
    of its members' words, a word's frequency there the share of its members that use it, its
    IDF ``log(documents / documents using it)``; so a word everyone uses ("the", "package")
    scores about 0 however frequent, and a word of one member only is left out of a larger cluster."""
    per_cluster: list[Counter[str]] = [Counter() for _ in sizes]
    for row in collection.iterate(output_fields=[text_field], filter_expr=filter_expr):
        label = label_of.get(row[ID_FIELD])
        text = row.get(text_field)
        if label is not None and isinstance(text, str):
            per_cluster[label].update(words(text))
    overall: Counter[str] = Counter()
    for counts in per_cluster:
        overall.update(counts)
    documents = sum(sizes)
    out = []
    for counts, size in zip(per_cluster, sizes, strict=True):
        least = 2 if size > 1 else 1
        scored = sorted((-(c / size) * math.log(documents / overall[w]), w) for w, c in counts.items() if c >= least)
        out.append([w for score, w in scored[:TERMS] if score < 0])
    return out
