"""Clusters and near-duplicates: planted answers recovered, the leader algorithm against a
one-by-one oracle, labels written back, every refusal, and the CLI and HTTP shells."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import unique_name
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lookalike import Client, InvalidInputError, clusters
from lookalike.cli import app as cli_app
from lookalike.config import Settings
from lookalike.http.app import create_app

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
FIELDS = [{"name": "text", "type": "varchar", "max_length": 200},
          {"name": "year", "type": "int64"},
          {"name": "topic", "type": "int32"},
          {"name": "small", "type": "int8"}]


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory):
    with Client(codops="ltlrt", data_dir=tmp_path_factory.mktemp("clusters")) as client:
        yield client


def blobs(groups: int = 6, size: int = 30, dim: int = 16, spread: float = 0.05, seed: int = 0):
    """Well-separated groups: random unit centres, members a small step from theirs."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.concatenate([c + spread * rng.normal(size=(size, dim)) for c in centres])
    return vectors.astype(np.float32), np.repeat(np.arange(groups), size)


def stored(client: Client, vectors: np.ndarray, truth: np.ndarray, metric: str = "COSINE", index: str = "FLAT"):
    """A collection of the vectors, ids in a shuffled order, with text naming the planted group."""
    collection = client.create_collection(unique_name(), FIELDS,
                                          {"vec": {"index_type": index, "metric_type": metric}},
                                          dim=vectors.shape[1])
    order = np.random.default_rng(1).permutation(len(vectors))
    collection.index([{"id": f"d{order[i]:04d}", "vec": v, "year": 2000 + i, "topic": -1, "small": 0,
                       "text": f"news about {WORDS[t % len(WORDS)]} today"}
                      for i, (v, t) in enumerate(zip(vectors, truth, strict=True))], normalize=metric != "L2")
    return collection, {f"d{order[i]:04d}": i for i in range(len(vectors))}


def partition(groups) -> set[frozenset[str]]:
    return {frozenset(g) for g in groups}


def planted(truth: np.ndarray, row_of: dict[str, int]) -> set[frozenset[str]]:
    return partition([[i for i, r in row_of.items() if truth[r] == t] for t in set(truth.tolist())])


@pytest.mark.parametrize("metric", ["COSINE", "IP", "L2"])
def test_kmeans_recovers_planted_clusters(lite, metric):
    vectors, truth = blobs()
    collection, row_of = stored(lite, vectors, truth, metric)
    found = collection.cluster(k=6, seed=3)
    assert partition(c["ids"] for c in found) == planted(truth, row_of)  # ARI == 1
    assert found == collection.cluster(k=6, seed=3)  # deterministic
    assert [c["label"] for c in found] == list(range(6))
    for c in found:
        assert c["size"] == len(c["ids"]) == 30 and c["ids"] == sorted(c["ids"])
        # the medoid: the member nearest the members' mean (unit directions for IP/COSINE)
        members = vectors[[row_of[i] for i in c["ids"]]].astype(np.float64)
        if metric != "L2":
            members /= np.linalg.norm(members, axis=1, keepdims=True)
            centre = members.mean(axis=0)
            best = np.argmax(members @ centre)
        else:
            best = np.argmin(((members - members.mean(axis=0)) ** 2).sum(axis=1))
        assert c["medoid"] == c["ids"][best]
        # the planted group's own word sets it apart, before the words every group shares
        word = WORDS[truth[row_of[c["ids"][0]]]]
        assert c["terms"][0] == word


def test_threshold_clusters_are_the_planted_groups(lite):
    vectors, truth = blobs(groups=5, size=20)
    collection, row_of = stored(lite, vectors, truth)
    found = collection.cluster(threshold=0.9)
    assert partition(c["ids"] for c in found) == planted(truth, row_of)
    # a threshold no two documents reach: every document leads its own cluster
    assert len(collection.cluster(threshold=1.0)) == len(vectors)


def leader_oracle(matrix: np.ndarray, threshold: float, spherical: bool) -> list[int]:
    """Leader clustering one document at a time, in plain Python."""
    leaders: list[int] = []
    labels = []
    for i, row in enumerate(matrix):
        if spherical:
            scores = [float(matrix[j] @ row) for j in leaders]
            best = int(np.argmax(scores)) if scores else -1
            passed = best >= 0 and scores[best] >= threshold
        else:
            scores = [float(((matrix[j] - row) ** 2).sum()) for j in leaders]
            best = int(np.argmin(scores)) if scores else -1
            passed = best >= 0 and scores[best] <= threshold
        if passed:
            labels.append(best)
        else:
            labels.append(len(leaders))
            leaders.append(i)
    return labels


@pytest.mark.parametrize(("spherical", "threshold"), [(True, 0.6), (False, 1.2)])
def test_batched_leaders_equal_one_by_one(monkeypatch, spherical, threshold):
    rng = np.random.default_rng(5)
    matrix = rng.normal(size=(300, 6)).astype(np.float32)
    if spherical:
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    monkeypatch.setattr(clusters, "LEADER_BATCH", 7)  # leaders found within and across batches
    labels = clusters._leaders(matrix, threshold, spherical)
    expected = leader_oracle(matrix.astype(np.float64), threshold, spherical)
    assert 10 < len(set(expected)) < 290
    assert labels.tolist() == expected


def test_field_receives_labels_and_keeps_everything_else(client):
    vectors, truth = blobs(groups=3, size=10)
    collection, _ = stored(client, vectors, truth)
    before = {d["id"]: d for d in collection.iterate()}
    found = collection.cluster(k=3, field="topic", filter_expr="year >= 2005")
    after = {d["id"]: d for d in collection.iterate()}
    assert after.keys() == before.keys()
    label_of = {i: c["label"] for c in found for i in c["ids"]}
    assert len(label_of) == 25
    for doc_id, doc in after.items():
        old = before[doc_id]
        assert doc["topic"] == label_of.get(doc_id, -1)
        assert {k: v for k, v in doc.items() if k not in ("topic", "vec")} == \
               {k: v for k, v in old.items() if k not in ("topic", "vec")}
        np.testing.assert_array_equal(doc["vec"], old["vec"])


def duplicates_collection(client: Client, index: str = "FLAT"):
    """200 random documents, and planted groups of near-copies (one of 40, above the first limit)."""
    rng = np.random.default_rng(7)
    base = rng.normal(size=(200, 32))
    docs = {f"r{i:03d}": v for i, v in enumerate(base)}
    groups = []
    for g, size in enumerate([2, 2, 3, 4, 40]):
        source = rng.normal(size=32)
        ids = [f"g{g}_{j:02d}" for j in range(size)]
        docs.update({i: source + 0.01 * rng.normal(size=32) for i in ids})
        groups.append(sorted(ids))
    params = {"M": 16, "efConstruction": 64} if index == "HNSW" else {}
    collection = client.create_collection(unique_name(), [{"name": "year", "type": "int64"}],
                                          {"vec": {"index_type": index, "metric_type": "IP", **params}}, dim=32)
    collection.index([{"id": i, "vec": v, "year": 2000 + n % 2} for n, (i, v) in enumerate(docs.items())])
    return collection, docs, groups


@pytest.mark.slow_on_server
@pytest.mark.parametrize("index", ["FLAT", "HNSW"])
def test_near_duplicates_are_the_planted_ones_and_no_others(client, index):
    collection, docs, groups = duplicates_collection(client, index)
    found = collection.near_duplicates(threshold=0.97)
    assert sorted(found["groups"]) == sorted(groups)
    # every pair at or above the threshold, by all-pairs comparison, and nothing else
    ids = sorted(docs)
    unit = np.array([docs[i] / np.linalg.norm(docs[i]) for i in ids])
    scores = unit @ unit.T
    expected = {(ids[a], ids[b]) for a, b in zip(*np.nonzero(np.triu(scores >= 0.97, 1)), strict=True)}
    assert {(p["a"], p["b"]) for p in found["pairs"]} == expected
    assert len(expected) == 1 + 1 + 3 + 6 + 40 * 39 // 2
    assert all(p["a"] < p["b"] and p["score"] >= 0.97 for p in found["pairs"])
    assert [p["score"] for p in found["pairs"]] == sorted((p["score"] for p in found["pairs"]), reverse=True)
    assert [len(g) for g in found["groups"]] == [40, 4, 3, 2, 2]
    # a filter pairs only the documents matching it
    odd = collection.near_duplicates(threshold=0.97, filter_expr="year == 2001")
    years = {i: 2000 + n % 2 for n, i in enumerate(docs)}
    assert {(p["a"], p["b"]) for p in odd["pairs"]} == {(a, b) for a, b in expected
                                                         if years[a] == years[b] == 2001}


def test_refusals_name_the_parameter(lite):
    vectors, truth = blobs(groups=3, size=60)
    collection, _ = stored(lite, vectors, truth)
    l2, _ = stored(lite, vectors[:5], truth[:5], "L2")
    refused = {
        "k must be an integer >= 1": lambda: collection.cluster(k=0),
        "k must be an integer": lambda: collection.cluster(k=True),
        "k must be at most the number of documents (180)": lambda: collection.cluster(k=181),
        "got both": lambda: collection.cluster(k=2, threshold=0.5),
        "got neither": lambda: collection.cluster(),
        "threshold must be a COSINE similarity, in [-1, 1]": lambda: collection.cluster(threshold=1.5),
        "threshold must be a squared L2 distance": lambda: l2.cluster(threshold=-0.1),
        "threshold must be a number": lambda: collection.near_duplicates(threshold=float("nan")),
        "threshold must be a COSINE": lambda: collection.near_duplicates(threshold=-2),
        "filter_expr 'year > 3000' matches no document": lambda: collection.cluster(k=2, filter_expr="year > 3000"),
        "filter_expr 'year < 0' matches no document": lambda: collection.near_duplicates(filter_expr="year < 0"),
        "field 'nosuch' is not a metadata field": lambda: collection.cluster(k=2, field="nosuch"),
        "field 'vec' is not a metadata field": lambda: collection.cluster(k=2, field="vec"),
        "field 'text' is varchar: cluster labels need an integer field": lambda: collection.cluster(k=2, field="text"),
        "field 'small' is int8: it cannot hold 180 cluster labels": lambda: collection.cluster(threshold=1.0,
                                                                                               field="small"),
        "seed must be an integer": lambda: collection.cluster(k=2, seed=-1),
    }
    for message, call in refused.items():
        with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            call()
    assert {d["small"] for d in collection.iterate(output_fields=["small"])} == {0}  # nothing written


def test_empty_collection_gives_empty_results(lite):
    empty = lite.create_collection(unique_name(), FIELDS, dim=8)
    assert empty.cluster(k=3) == [] and empty.cluster(threshold=0.5, filter_expr="year > 1") == []
    assert empty.near_duplicates() == {"pairs": [], "groups": []}


@pytest.mark.slow_on_server
def test_iterate_with_a_filter(client, name):
    collection = client.create_collection(name, [{"name": "year", "type": "int64"}], dim=4)
    collection.index([{"id": f"d{i:02d}", "vec": [1, i, 0, 0], "year": i} for i in range(30)])
    assert [d["id"] for d in collection.iterate(batch_size=4, output_fields=["year"], filter_expr="year >= 17")] \
        == [f"d{i}" for i in range(17, 30)]
    with pytest.raises(InvalidInputError, match="filter_expr 'nosuch > 1' was rejected"):
        list(collection.iterate(filter_expr="nosuch > 1"))


def test_cli_round_trip(tmp_path):
    runner = CliRunner()
    env = {"LOOKALIKE_DATA_DIR": str(tmp_path / "data"), "CODOPS": "ltlrt"}

    def run(*args: str):
        return runner.invoke(cli_app, list(args), env=env)

    vectors, truth = blobs(groups=3, size=8, dim=4, spread=0.02)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i:02d}", "vec": v.tolist(), "topic": 0,
                                        "text": f"about {WORDS[t]}"}) + "\n"
                            for i, (v, t) in enumerate(zip(vectors, truth, strict=True))))
    assert run("collections", "create", "cli", "--dim", "4", "--field", "topic:int32",
               "--field", "text:varchar:100").exit_code == 0
    assert run("index", "cli", str(path)).exit_code == 0
    result = run("cluster", "cli", "--k", "3", "--field", "topic", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert partition(c["ids"] for c in found) == partition(
        [[f"d{i:02d}" for i in range(24) if truth[i] == t] for t in range(3)])
    table = run("cluster", "cli", "--threshold", "0.9")
    assert table.exit_code == 0 and "medoid" in table.stdout and "alpha" in table.stdout
    duplicates = run("near-duplicates", "cli", "--threshold", "0.999", "--json")
    assert duplicates.exit_code == 0 and set(json.loads(duplicates.stdout)) == {"pairs", "groups"}
    assert "pair" in run("near-duplicates", "cli").stdout
    refused = run("cluster", "cli", "--k", "2", "--threshold", "0.5")
    assert refused.exit_code == 1 and "give exactly one of k" in refused.stderr


def test_http_round_trip(tmp_path):
    token = "token-of-ltlrt-7f3a"
    app = create_app(settings=Settings(codops="ltlrt", data_dir=tmp_path / "data"),
                     environ={"CODOPS_LTLRT_API_TOKEN": token, **os.environ})
    auth = {"Authorization": f"Bearer {token}"}
    vectors, truth = blobs(groups=3, size=8, dim=4, spread=0.02)
    base = "/v1/ltlrt/collections/web"
    with TestClient(app) as http:
        assert http.put(base, json={"dim": 4, "fields": [{"name": "topic", "type": "int64"}]},
                        headers=auth).status_code == 201
        http.post(f"{base}/documents", headers=auth, json={"documents": [
            {"id": f"d{i:02d}", "vec": v.tolist(), "topic": 0} for i, v in enumerate(vectors)]})
        answer = http.post(f"{base}/cluster", json={"k": 3, "field": "topic"}, headers=auth)
        assert answer.status_code == 200, answer.text
        assert partition(c["ids"] for c in answer.json()) == partition(
            [[f"d{i:02d}" for i in range(24) if truth[i] == t] for t in range(3)])
        duplicates = http.post(f"{base}/near-duplicates", json={"threshold": 0.99}, headers=auth)
        assert duplicates.status_code == 200 and set(duplicates.json()) == {"pairs", "groups"}
        for body in ({"k": 0}, {"k": 2, "threshold": 0.5}, {"threshold": 2}, {"k": 2, "filter_expr": "topic > 9"}):
            refused = http.post(f"{base}/cluster", json=body, headers=auth)
            assert refused.status_code == 400 and refused.json()["error"] == "invalid_input", body
        assert http.post(f"{base}/near-duplicates", json={"threshold": 7}, headers=auth).status_code == 400
        assert http.post(f"{base}/cluster", json={"k": 2}).status_code == 401


def test_words_are_lowercased_letter_runs():
    assert clusters.words("Le Débat: 3D-printing, AI, x86 télé télé") == {"débat", "printing", "télé"}

