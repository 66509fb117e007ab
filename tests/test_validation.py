"""Bad input gets a clear error naming the culprit, and loses nothing already stored."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import SEED_FIELDS, SEED_INDEXES, make_docs
from pymilvus import DataType, FieldSchema

from lookalike import ConflictError, InvalidInputError, LookalikeError, NotFoundError


def _ten_documents(client, name):
    col = client.create_collection(name, SEED_FIELDS, SEED_INDEXES, dim=16)
    col.index(make_docs(10), flush=False)  # Session reads see unflushed writes; a flush costs 3 s on a server
    return col


@pytest.fixture(scope="module")
def col(client):
    """Ten documents that every test here leaves as they are (refused input stores nothing)."""
    col = _ten_documents(client, f"validation_{client.engine.kind}")
    yield col
    assert col.count() == 10  # nothing a test here sent was stored
    col.drop()


@pytest.fixture
def fresh(client, name):
    """Ten documents of the test's own, for tests that store something."""
    return _ten_documents(client, name)


def doc(**changes):
    base = make_docs(1, start=500)[0]
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


BAD_DOCUMENTS = [
    ("missing id", doc(id=...), "has no 'id'"),
    ("non-string id", doc(id=42), "'id' must be a string"),
    ("empty id", doc(id=""), "'id' is empty"),
    ("too-long id", doc(id="x" * 513), "513 characters long"),
    ("missing vec", doc(vec=...), "has no 'vec'"),
    ("wrong dimension", doc(vec=[0.1] * 15), "dimension 15, the collection expects 16"),
    ("NaN", doc(vec=[math.nan] + [0.1] * 15), "NaN or infinity"),
    ("inf", doc(vec=[math.inf] + [0.1] * 15), "NaN or infinity"),
    ("zero vector", doc(vec=[0.0] * 16), "all zeros"),
    ("not numbers", doc(vec=["a"] * 16), "'vec' must be a list of numbers"),
    ("unknown field", doc(colour="red"), "unknown field 'colour'"),
    ("wrong type int", doc(publication_date="2024-03-01"), "field 'publication_date' must be an integer"),
    ("bool for int", doc(publication_date=True), "field 'publication_date' must be an integer"),
    ("wrong type str", doc(language=7), "field 'language' must be a string"),
    ("over-long string", doc(language="x" * 17), "over its max_length 16"),
    ("missing metadata", doc(category=...), "missing field(s) category"),
    ("not a dict", ["doc", [0.1] * 16], "must be a dict"),
]


@pytest.mark.parametrize("case, bad, message", BAD_DOCUMENTS, ids=[c[0] for c in BAD_DOCUMENTS])
def test_bad_document_is_refused_and_nothing_of_the_batch_lands(col, case, bad, message):
    good = make_docs(3, start=200)
    with pytest.raises(InvalidInputError) as raised:
        col.index([*good, bad])
    assert message in str(raised.value)
    assert "document #3" in str(raised.value)  # names the document at fault
    assert col.count() == 10  # the good documents of a refused list are not stored either
    assert col.get(["doc200"]) == []


def test_duplicate_ids_in_one_call(col):
    with pytest.raises(InvalidInputError, match=r"document #1 \(id 'dup'\): id appears twice"):
        col.index([doc(id="dup"), doc(id="dup")])
    assert col.count() == 10


def test_normalize_false_accepts_a_zero_vector(fresh):
    assert fresh.index([doc(id="zero", vec=[0.0] * 16)], normalize=False) == 1


def test_streaming_failure_says_what_landed(fresh):
    rng = np.random.default_rng(0)

    def stream():
        for i in range(6000):
            yield {**doc(id=f"st{i}"), "vec": rng.normal(size=16)}
        yield doc(id="bad", vec=[math.nan] * 16)

    landed = r"document #6000 .*#0-#4999 of this call were stored; #5000 onwards were not"
    with pytest.raises(InvalidInputError, match=landed):
        fresh.index(stream(), progress=False)
    assert fresh.count() == 10 + 5000  # the first full chunk landed; the rest did not


BAD_SCHEMAS = [
    ({"vec": {"index_type": "BOGUS", "metric_type": "IP"}}, [], "unknown index_type 'BOGUS'"),
    ({"vec": {"index_type": "DISKANN", "metric_type": "IP"}}, [], "unknown index_type 'DISKANN'"),
    ({"vec": {"index_type": "HNSW", "metric_type": "FOO"}}, [], "unknown metric_type 'FOO'"),
    ({"vec": {"index_type": "HNSW", "metric_type": "IP", "nlist": 8}}, [], "HNSW takes no parameter 'nlist'"),
    ({"vec": {"index_type": "HNSW", "metric_type": "IP", "M": 0}}, [], "M must be an integer in [2, 2048]"),
    ({"colour": None}, [], "'colour' is not a field"),
    ({"language": {"index_type": "NOPE"}}, SEED_FIELDS, "unknown scalar index_type 'NOPE'"),
    ({}, [FieldSchema(name="id", dtype=DataType.INT64)], "'id' is reserved"),
    ({}, [FieldSchema(name="bad name", dtype=DataType.INT64)], "is invalid"),
    ({}, [FieldSchema(name="s", dtype=DataType.VARCHAR)], "varchar needs max_length"),
    ({}, [FieldSchema(name="v2", dtype=DataType.FLOAT_VECTOR, dim=4)], "FLOAT_VECTOR is not supported"),
    ({}, [{"name": "a", "type": "int64"}, {"name": "a", "type": "int64"}], "declared twice"),
]


@pytest.mark.parametrize("indexes, fields, message", BAD_SCHEMAS)
def test_bad_schema_is_refused_before_anything_is_created(client, name, indexes, fields, message):
    with pytest.raises(InvalidInputError) as raised:
        client.create_collection(name, fields, indexes, dim=8)
    assert message in str(raised.value)
    assert not client.has_collection(name)


@pytest.mark.parametrize("dim", [0, -1, 40000, 1.5, "768"])
def test_bad_dim(client, name, dim):
    with pytest.raises(InvalidInputError, match="dim must be an integer"):
        client.create_collection(name, dim=dim)


@pytest.mark.parametrize("bad_name", ["", "1abc", "a-b", "a b", "x" * 256, "drop;--", None])
def test_bad_collection_name(client, bad_name):
    with pytest.raises(InvalidInputError, match="collection name"):
        client.create_collection(bad_name, dim=8)


def test_retrieve_similar_bad_queries(col):
    with pytest.raises(InvalidInputError, match="exactly one of ids, vectors or texts"):
        col.similar()
    with pytest.raises(InvalidInputError, match="got ids and vectors"):
        col.similar(ids=["doc1"], vectors=[0.1] * 16)
    with pytest.raises(NotFoundError, match="'nope1', 'nope2'"):
        col.similar(ids=["doc1", "nope1", "nope2"])
    for limit in (0, -3, 10**6, "10"):
        with pytest.raises(InvalidInputError, match="limit must be"):
            col.similar(ids=["doc1"], limit=limit)
    with pytest.raises(InvalidInputError, match="dimension 3"):
        col.similar(vectors=[1.0, 2.0, 3.0])
    with pytest.raises(InvalidInputError, match="NaN"):
        col.similar(vectors=[math.nan] * 16)
    with pytest.raises(InvalidInputError, match="output_fields: unknown field 'colour'"):
        col.similar(ids=["doc1"], output_fields=["colour"])
    with pytest.raises(InvalidInputError, match="ids is empty"):
        col.similar(ids=[])


@pytest.mark.parametrize("expr", ["language ==", "colour == 'red'", "language = 'fr'"])
def test_bad_filter_wraps_the_engine_message(col, expr):
    with pytest.raises(InvalidInputError) as raised:
        col.similar(ids=["doc1"], filter_expr=expr)
    assert f"filter_expr {expr!r} was rejected" in str(raised.value)
    with pytest.raises(InvalidInputError, match="was rejected"):
        col.delete(filter_expr=expr)
    assert col.count() == 10


def test_delete_needs_ids_or_filter(col):
    with pytest.raises(InvalidInputError, match="refusing to delete everything"):
        col.delete()


def test_upsert_false_conflict_names_the_ids(col):
    with pytest.raises(ConflictError, match="doc1, doc2"):
        col.index(make_docs(3, start=1, seed=5), upsert=False)
    assert col.count() == 10


TRICKY_IDS = ['a"b', "a'b", "back\\slash", "new\nline", 'x" or id != "', "ünï©ødé ✓", "id in [1]", "]) or (1==1"]


def test_tricky_ids_work_everywhere_without_injection(fresh):
    rng = np.random.default_rng(7)
    docs = [{**doc(id=i), "vec": rng.normal(size=16).tolist()} for i in TRICKY_IDS]
    fresh.index(docs)
    assert [d["id"] for d in fresh.get(TRICKY_IDS, ["id"])] == TRICKY_IDS
    for tricky in TRICKY_IDS:
        top = fresh.similar(ids=[tricky], limit=1)
        assert top[0]["id"] == tricky
        assert tricky not in {r["id"] for r in fresh.similar(ids=[tricky], limit=30, exclude_ids=True)}
    assert fresh.delete(ids=['x" or id != "']) == 1  # deletes exactly that one
    assert fresh.count() == 10 + len(TRICKY_IDS) - 1


def test_every_error_is_a_lookalike_error(col):
    for call in (lambda: col.similar(ids=["nope"]), lambda: col.index([{"id": ""}]),
                 lambda: col.client.collection("never_created_here")):
        with pytest.raises(LookalikeError):
            call()


def test_default_search_breadth():
    """HNSW's ef when the caller sets none: wider for filtered and averaged queries, never below
    the limit; the caller's own ef (either spelling) wins."""
    from lookalike.retrieval import search_params_for
    from lookalike.schema import build_spec

    spec = build_spec(dim=8)
    assert search_params_for(spec, None, 10, wide=False) == {"metric_type": "IP", "params": {"ef": 64}}
    assert search_params_for(spec, None, 10, wide=True)["params"] == {"ef": 128}
    assert search_params_for(spec, None, 500, wide=True)["params"] == {"ef": 500}
    assert search_params_for(spec, {"ef": 32}, 10, wide=True)["params"] == {"ef": 32}
    assert search_params_for(spec, {"params": {"ef": 40}}, 10, wide=False)["params"] == {"ef": 40}


def test_chunks_count_vector_bytes():
    """A chunk stays under CHUNK_BYTES however wide the vectors: 4096 float32 are 16 KiB a row."""
    import numpy as np

    from lookalike.documents import CHUNK_BYTES, CHUNK_ROWS, Row, chunks

    rows = [Row(f"d{i}", {"id": f"d{i}", "vec": np.zeros(4096, dtype=np.float32)}) for i in range(3000)]
    sizes = [len(chunk) for chunk in chunks(rows)]
    assert sum(sizes) == 3000
    assert max(sizes) < CHUNK_ROWS
    assert all(sum(row.size for row in rows[:n]) <= CHUNK_BYTES for n in sizes)
