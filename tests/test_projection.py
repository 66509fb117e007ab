"""The map of a collection (``map_sample``): PCA checked against NumPy's SVD of the sample, the
seeded sample, the ids placed on it, bad input, and the same call over HTTP and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_docs
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lookalike import Client, InvalidInputError
from lookalike.cli import app as cli_app
from lookalike.http.app import create_app

FIELDS = [{"name": "language", "type": "varchar", "max_length": 8},
          {"name": "category", "type": "varchar", "max_length": 16},
          {"name": "publication_date", "type": "int64"},
          {"name": "extra", "type": "json"}]


def planted(n: int, dim: int = 12, seed: int = 0) -> list[dict]:
    """Documents spread mostly along two directions, so that the two principal axes are clear."""
    rng = np.random.default_rng(seed)
    axes = np.linalg.qr(rng.normal(size=(dim, 2)))[0].T
    docs = make_docs(n, dim, seed)
    for doc in docs:
        vec = 3.0 * rng.normal() * axes[0] + 1.5 * rng.normal() * axes[1] + 0.1 * rng.normal(size=dim)
        doc["vec"] = (vec + 4.0 * axes[0]).tolist()  # off the origin: normalising keeps two main axes
        doc["extra"] = {"i": doc["id"]}
    return docs


def oracle(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA by the SVD of the centred sample (not the scatter matrix's eigenvectors the library
    uses), signs fixed as documented: the largest coefficient of each axis is positive."""
    mean = vectors.mean(axis=0)
    _, singular, axes = np.linalg.svd(vectors - mean, full_matrices=False)
    axes = axes[:2].copy()
    for axis in axes:
        if axis[np.argmax(np.abs(axis))] < 0:
            axis *= -1
    return mean, axes, singular[:2] ** 2 / (singular**2).sum()


def test_the_map_is_the_pca_of_the_stored_vectors(client: Client, name: str) -> None:
    collection = client.create_collection(name, FIELDS, dim=12)
    collection.index(planted(80))
    result = collection.map(sample=500, color_field="language")
    assert result["sample"] == result["count"] == 80
    stored = {doc["id"]: doc for doc in collection.get([p["id"] for p in result["points"]])}
    vectors = np.asarray([stored[p["id"]]["vec"] for p in result["points"]])
    mean, axes, ratio = oracle(vectors)
    got = np.asarray([[p["x"], p["y"]] for p in result["points"]])
    np.testing.assert_allclose(got, (vectors - mean) @ axes.T, atol=1e-5)
    np.testing.assert_allclose(result["basis"]["components"], axes, atol=1e-5)
    np.testing.assert_allclose(result["basis"]["explained_variance_ratio"], ratio, atol=1e-6)
    assert result["basis"]["explained_variance_ratio"][0] > 0.5  # the planted main direction
    assert all(p["color"] == stored[p["id"]]["language"] for p in result["points"])


@pytest.mark.slow_on_server
def test_the_sample_is_seeded_and_independent_of_the_order_of_writes(client: Client, name: str) -> None:
    docs = planted(300, seed=1)
    forward = client.create_collection(name, FIELDS, dim=12)
    backward = client.create_collection(name + "_b", FIELDS, dim=12)
    forward.index(docs)
    backward.index(docs[::-1])
    first = forward.map(sample=40, seed=7)
    assert first["sample"] == 40 and first["count"] == 300
    ids = [p["id"] for p in first["points"]]
    assert len(set(ids)) == 40
    assert ids == [p["id"] for p in backward.map(sample=40, seed=7)["points"]]
    assert first == forward.map(sample=40, seed=7)  # the same picture again
    assert set(ids) != {p["id"] for p in forward.map(sample=40, seed=8)["points"]}
    # Across seeds every document gets drawn about as often: 40 of 300 over 30 seeds.
    drawn = np.zeros(300)
    for seed in range(30):
        for p in forward.map(sample=40, seed=seed)["points"]:
            drawn[int(p["id"][3:])] += 1
    assert drawn.sum() == 1200 and drawn.max() <= 15
    assert backward.drop()


@pytest.mark.slow_on_server
def test_ids_are_placed_with_the_same_basis(client: Client, name: str) -> None:
    collection = client.create_collection(name, FIELDS, dim=12)
    collection.index(planted(120, seed=2))
    result = collection.map(sample=30, seed=0, ids=["doc5", "doc77", "missing"])
    basis = result["basis"]
    placed = {p["id"]: p for p in result["projected"]}
    assert set(placed) == {"doc5", "doc77"}  # ids not stored are left out
    for doc in collection.get(["doc5", "doc77"], ["vec"]):
        x, y = np.asarray(basis["components"]) @ (np.asarray(doc["vec"]) - np.asarray(basis["mean"]))
        assert placed[doc["id"]]["x"] == pytest.approx(x, abs=1e-6)
        assert placed[doc["id"]]["y"] == pytest.approx(y, abs=1e-6)
    in_sample = {p["id"]: p for p in result["points"]}
    for doc_id, p in placed.items():
        if doc_id in in_sample:
            assert (p["x"], p["y"]) == pytest.approx((in_sample[doc_id]["x"], in_sample[doc_id]["y"]))


@pytest.mark.slow_on_server
def test_documents_all_alike_map_to_one_point(client: Client, name: str) -> None:
    collection = client.create_collection(name, FIELDS, dim=12)
    collection.index([dict(doc, vec=[1.0] + [0.0] * 11) for doc in planted(6)])
    result = collection.map()
    assert {(p["x"], p["y"]) for p in result["points"]} == {(0.0, 0.0)}
    assert result["basis"]["explained_variance_ratio"] == [0.0, 0.0]
    assert result["basis"]["components"] == [[0.0] * 12] * 2


@pytest.mark.slow_on_server
def test_an_empty_collection_maps_to_nothing(client: Client, name: str) -> None:
    collection = client.create_collection(name, FIELDS, dim=12)
    assert collection.map() == {"points": [], "projected": [], "basis": None, "sample": 0, "count": 0,
                                "color_field": None}


@pytest.mark.slow_on_server
@pytest.mark.parametrize(("options", "named"), [
    ({"sample": 1}, "sample"), ({"sample": 20_001}, "sample"), ({"sample": "10"}, "sample"),
    ({"sample": True}, "sample"), ({"seed": -1}, "seed"), ({"color_field": "nope"}, "color_field"),
    ({"color_field": "extra"}, "color_field"), ({"color_field": "vec"}, "color_field"),
    ({"ids": "doc1"}, "ids"), ({"ids": [""]}, "ids[0]"), ({"texts": [3]}, "texts[0]"),
    ({"ids": [f"d{i}" for i in range(1001)]}, "ids and texts"),
])
def test_bad_input_is_named(client: Client, name: str, options: dict, named: str) -> None:
    collection = client.create_collection(name, FIELDS, dim=12)
    with pytest.raises(InvalidInputError, match=named.replace("[", r"\[")):
        collection.map(**options)


@pytest.mark.slow_on_server
def test_texts_need_an_embedder(client: Client, name: str) -> None:
    collection = client.create_collection(name, FIELDS, dim=12)
    collection.index(planted(5))
    with pytest.raises(InvalidInputError, match="no embedder"):
        collection.map(texts=["night train"])


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory):
    """A client of its own data directory, with one small collection, for the HTTP and CLI checks."""
    data_dir = tmp_path_factory.mktemp("map-data")
    client = Client(codops="ltlrt", data_dir=data_dir)
    client.create_collection("mapped", FIELDS, dim=12).index(planted(50, seed=3))
    yield client, data_dir
    client.close()


def test_http_map_routes(own) -> None:
    client, _ = own
    token = {"Authorization": "Bearer map-token"}
    app = create_app(client=client, environ={"CODOPS_LTLRT_API_TOKEN": "map-token"})
    with TestClient(app) as http:
        expected = client.collection("mapped").map(sample=20, seed=2, color_field="category", ids=["doc3"])
        body = {"sample": 20, "seed": 2, "color_field": "category", "ids": ["doc3"]}
        posted = http.post("/v1/ltlrt/collections/mapped/map", json=body, headers=token)
        assert posted.status_code == 200 and posted.json() == json.loads(json.dumps(expected))
        got = http.get("/v1/ltlrt/collections/mapped/map", headers=token,
                       params={"sample": 20, "seed": 2, "color_field": "category", "ids": ["doc3"]})
        assert got.json() == posted.json()
        refused = http.post("/v1/ltlrt/collections/mapped/map", json={"sample": 1}, headers=token)
        assert refused.status_code == 400 and "sample" in refused.json()["detail"]
        assert http.get("/v1/ltlrt/collections/nothere/map", headers=token).status_code == 404
        assert http.get("/v1/ltlrt/collections/mapped/map").status_code == 401
        # The explorer page is served to anyone (its calls need the token), with its policy.
        page = http.get("/")
        assert page.status_code == 200 and "lookalike explorer" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset in ("app.js", "app.css"):
            assert http.get(f"/static/{asset}").status_code == 200
        assert "/" not in http.get("/openapi.json").json()["paths"]


def test_cli_map_writes_the_map(own, tmp_path) -> None:
    client, data_dir = own
    runner = CliRunner()
    out = tmp_path / "map.json"
    env = {"CODOPS": "ltlrt", "LOOKALIKE_DATA_DIR": str(data_dir)}
    done = runner.invoke(cli_app, ["map", "mapped", "--sample", "10", "--seed", "4", "--color-field",
                                   "language", "--id", "doc1", "--out", str(out), "--json"], env=env)
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == {"file": str(out), "sample": 10, "count": 50}
    written = json.loads(out.read_text(encoding="utf-8"))
    expected = client.collection("mapped").map(sample=10, seed=4, color_field="language", ids=["doc1"])
    assert written == json.loads(json.dumps(expected))
    bad = runner.invoke(cli_app, ["map", "mapped", "--sample", "1"], env=env)
    assert bad.exit_code == 1 and "sample" in bad.output
