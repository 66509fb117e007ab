"""The five calls and their companions, on a real embedded Milvus."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SEED_FIELDS, SEED_INDEXES, make_docs

import lookalike
from lookalike import Client, ConflictError, NotFoundError
from lookalike.documents import CHUNK_ROWS


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_seed_tutorial_runs_with_only_the_import_changed(client, name, monkeypatch):
    """The tutorial's calls, as written there, through the module functions."""
    from pymilvus import DataType, FieldSchema

    from lookalike import connect, create_collection, get_documents, index, retrieve_similar

    monkeypatch.setenv("CODOPS", "ltlrt")
    monkeypatch.setenv("CODOPS_LTLRT_MILVUS_PASSWORD", client.settings.password.reveal())
    monkeypatch.setenv("LOOKALIKE_DATA_DIR", str(client.settings.data_dir))
    monkeypatch.setenv("LOOKALIKE_MILVUS_URI", client.settings.uri)
    lookalike.disconnect()
    connect()
    assert connect() is lookalike.default_client()  # later calls reuse it
    fields = [
        FieldSchema(name="publication_date", dtype=DataType.INT64),
        FieldSchema(name="language", dtype=DataType.VARCHAR, max_length=16),
        FieldSchema(name="category", dtype=DataType.VARCHAR, max_length=255),
    ]
    indexes = {
        "vec": {"metric_type": "IP", "index_type": "HNSW", "M": 32, "efConstruction": 128},
        "publication_date": None,
        "language": None,
        "category": None,
    }
    create_collection(name, fields, indexes)  # dim defaults to 768
    create_collection(name, fields, indexes)  # safe to run again
    rng = np.random.default_rng(1)
    documents = [
        {"id": f"my_document_{i}", "vec": rng.random(768).tolist(), "publication_date": 1709294400 + i,
         "language": "fr" if i % 2 else "en", "category": "sports"}
        for i in range(50)
    ]
    assert index(name, documents, normalize=True, upsert=True, flush=True) == 50
    document = get_documents(name, ["my_document_42"], output_fields=["id", "language", "vec"])
    assert document[0]["id"] == "my_document_42" and document[0]["language"] == "en"
    assert np.allclose(document[0]["vec"], unit(documents[42]["vec"]), atol=1e-6)
    recs = retrieve_similar(name, ids=["my_document_42"], limit=5)
    assert recs[0]["id"] == "my_document_42" and recs[0]["distance"] == pytest.approx(1.0, abs=1e-4)
    assert [r["distance"] for r in recs] == sorted((r["distance"] for r in recs), reverse=True)
    recs = retrieve_similar(name, ids=["my_document_41", "my_document_43"],
                            filter_expr='language == "fr" and publication_date >= 1704067200', limit=10)
    assert recs and all(int(r["id"].rsplit("_", 1)[1]) % 2 for r in recs)
    recs = retrieve_similar(name, vectors=rng.random(768).tolist(), limit=10)
    assert len(recs) == 10 and set(recs[0]) == {"id", "distance"}
    lookalike.disconnect()


def test_index_get_count_describe(client, name):
    col = client.create_collection(name, SEED_FIELDS, SEED_INDEXES, dim=16)
    docs = make_docs(30)
    assert col.index(docs) == 30
    assert col.count() == 30
    assert col.count('language == "fr"') == 10
    got = col.get(["doc3", "missing", "doc1"], output_fields=["language", "category"])
    assert got == [
        {"id": "doc3", "language": "fr", "category": "news"},
        {"id": "doc1", "language": "en", "category": "news"},
    ]
    full = col.get(["doc2"])[0]
    assert set(full) == {"id", "vec", "publication_date", "language", "category"}
    assert np.allclose(full["vec"], unit(docs[2]["vec"]), atol=1e-6)
    info = col.describe()
    assert info["dim"] == 16 and info["count"] == 30 and info["metric"] == "IP"
    assert info["indexes"]["vec"]["index_type"] == "HNSW" and info["indexes"]["language"] is None
    assert name in client.list_collections()
    assert lookalike.schema.spec_from_json(col.spec.to_json()) == col.spec


@pytest.mark.parametrize("index_type", ["HNSW", "IVF_FLAT"])
def test_an_index_without_build_parameters_takes_the_engines_defaults(client, name, index_type):
    # A 2.3 server refuses an HNSW index without M and efConstruction; Lite builds with its defaults.
    col = client.create_collection(name, [], {"vec": {"index_type": index_type, "metric_type": "IP"}}, dim=8)
    docs = [{"id": f"d{i}", "vec": np.eye(8)[i % 8] + 0.01 * i} for i in range(16)]
    assert col.index(docs) == 16
    assert col.similar(vectors=np.eye(8)[3].tolist(), limit=1)[0]["id"] in {"d3", "d11"}


def test_upsert_replaces_and_insert_refuses_existing_ids(client, name):
    col = client.create_collection(name, SEED_FIELDS, SEED_INDEXES, dim=16)
    col.index(make_docs(10))
    changed = make_docs(3, seed=9)
    for d in changed:
        d["language"] = "it"
    col.index(changed)
    assert col.count() == 10
    assert {d["language"] for d in col.get(["doc0", "doc1", "doc2"])} == {"it"}
    with pytest.raises(ConflictError, match="doc1"):
        col.index(make_docs(2, start=1), upsert=False)
    assert col.get(["doc1"])[0]["language"] == "it"  # nothing replaced
    assert col.index(make_docs(2, start=100), upsert=False) == 2
    assert col.count() == 12


def test_mean_of_ids_matches_a_numpy_oracle_on_flat(client, name):
    col = client.create_collection(name, SEED_FIELDS, {"vec": {"index_type": "FLAT", "metric_type": "IP"}}, dim=16)
    docs = make_docs(200, seed=3)
    col.index(docs)
    matrix = np.stack([unit(d["vec"]) for d in docs])
    query = matrix[[5, 17, 42]].mean(axis=0)
    query /= np.linalg.norm(query)
    scores = matrix @ query
    expected = np.argsort(-scores)[:10]
    got = col.similar(ids=["doc5", "doc17", "doc42"], limit=10)
    assert [r["id"] for r in got] == [f"doc{i}" for i in expected]
    assert np.allclose([r["distance"] for r in got], scores[expected], atol=1e-5)
    # vectors= with several vectors means the same as ids=
    by_vectors = col.similar(vectors=[docs[5]["vec"], docs[17]["vec"], docs[42]["vec"]], limit=10)
    assert [r["id"] for r in by_vectors] != [] and by_vectors[0]["id"] in {r["id"] for r in got}


def test_exclude_ids_output_fields_and_filters(client, name):
    col = client.create_collection(name, SEED_FIELDS, SEED_INDEXES, dim=16)
    col.index(make_docs(60))
    with_ids = col.similar(ids=["doc0", "doc3"], limit=5)
    assert {"doc0", "doc3"} & {r["id"] for r in with_ids}
    without = col.similar(ids=["doc0", "doc3"], limit=5, exclude_ids=True, output_fields=["language", "vec"])
    assert not {"doc0", "doc3"} & {r["id"] for r in without}
    assert all(set(r) == {"id", "distance", "language", "vec"} and len(r["vec"]) == 16 for r in without)
    filtered = col.similar(ids=["doc0"], filter_expr='language == "de" and category == "news"', limit=20,
                           output_fields=["language", "category"])
    assert filtered and all(r["language"] == "de" and r["category"] == "news" for r in filtered)
    tuned = col.similar(ids=["doc0"], limit=3, search_params={"ef": 128})
    assert tuned[0]["id"] == "doc0"


def test_l2_distance_is_lower_for_closer(client, name):
    col = client.create_collection(name, [], {"vec": {"index_type": "FLAT", "metric_type": "L2"}}, dim=4)
    col.index([{"id": "a", "vec": [1, 0, 0, 0]}, {"id": "b", "vec": [3, 0, 0, 0]}], normalize=False)
    got = col.similar(vectors=[1.1, 0, 0, 0], limit=2)
    assert [r["id"] for r in got] == ["a", "b"] and got[0]["distance"] < got[1]["distance"]


def test_delete_by_ids_filter_and_both(client, name):
    col = client.create_collection(name, SEED_FIELDS, SEED_INDEXES, dim=16)
    col.index(make_docs(30))
    assert col.delete(ids=["doc0", "doc1", "never"]) == 2
    assert col.delete(filter_expr='language == "de"') == 10  # doc2, doc5, ..., doc29
    assert col.delete(ids=["doc3", "doc4"], filter_expr='language == "fr"') == 1
    assert col.count() == 30 - 2 - 10 - 1
    assert col.get(["doc0", "doc3", "doc4"]) == [col.get(["doc4"])[0]]


def test_drop_and_unknown_collection(client, name):
    client.create_collection(name, dim=8)
    assert client.drop_collection(name) is True
    assert client.drop_collection(name) is False
    with pytest.raises(NotFoundError, match=name):
        client.collection(name)
    with pytest.raises(NotFoundError):
        client.retrieve_similar(name, ids=["x"])


def test_index_takes_any_iterable_in_chunks(client, name):
    col = client.create_collection(name, [], {"vec": {"index_type": "FLAT", "metric_type": "IP"}}, dim=8)
    rng = np.random.default_rng(0)
    total = CHUNK_ROWS * 2 + 7
    stream = ({"id": f"s{i}", "vec": rng.normal(size=8)} for i in range(total))  # a generator
    assert col.index(stream, progress=False) == total
    assert col.count() == total
    assert len(list(col.iterate(batch_size=4000))) == total


def test_reads_after_flush_see_the_data_immediately(client, name):
    col = client.create_collection(name, SEED_FIELDS, SEED_INDEXES, dim=16)
    for round_ in range(3):
        col.index(make_docs(5, seed=round_ + 10, start=round_ * 5), flush=True)
        assert col.count() == (round_ + 1) * 5
        assert col.similar(ids=[f"doc{round_ * 5}"], limit=1)[0]["id"] == f"doc{round_ * 5}"


def test_create_collection_is_idempotent_and_reports_differences(client, name):
    first = client.create_collection(name, SEED_FIELDS, SEED_INDEXES, dim=16)
    assert client.create_collection(name, SEED_FIELDS, SEED_INDEXES, dim=16) is first
    with pytest.raises(ConflictError, match="dim 16 != 32"):
        client.create_collection(name, SEED_FIELDS, SEED_INDEXES, dim=32)
    with pytest.raises(ConflictError, match="'category' is stored but not requested"):
        client.create_collection(name, SEED_FIELDS[:2], {"vec": SEED_INDEXES["vec"]}, dim=16)
    with pytest.raises(ConflictError, match="vec index"):
        flat = {**SEED_INDEXES, "vec": {"index_type": "FLAT", "metric_type": "IP"}}
        client.create_collection(name, SEED_FIELDS, flat, dim=16)


def test_scalar_indexes_can_be_added_later(client, name):
    client.create_collection(name, SEED_FIELDS, {"vec": SEED_INDEXES["vec"]}, dim=16)
    col = client.create_collection(name, SEED_FIELDS, {"vec": SEED_INDEXES["vec"], "language": None}, dim=16)
    assert col.spec.scalar_indexes == {"language": None}
    # another client (a new process would do the same) reads the recorded spec back
    with Client(client.settings) as other:
        assert other.collection(name).spec.scalar_indexes == {"language": None}
