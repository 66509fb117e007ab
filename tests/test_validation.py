"""Bad input gets a clear error naming the culprit, and loses nothing already stored."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from conftest import SEED_FIELDS, SEED_INDEXES, make_docs
from pymilvus import DataType, FieldSchema

from lookalike import ConflictError, InvalidInputError, LookalikeError, NotFoundError, StorageError
from lookalike.documents import DocumentWriter


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


# Each message names the document, the field and the value at fault (the value's repr, cut short).
BAD_DOCUMENTS = [
    ("missing id", doc(id=...), "document #3 has no 'id' (its keys: 'vec', 'publication_date', "),
    ("non-string id", doc(id=424242), "document #3: 'id' must be a string, not int (424242)"),
    ("empty id", doc(id=""), "document #3: 'id' is empty"),
    ("too-long id", doc(id="x" * 513),
     f"document #3: 'id' is 513 characters long (at most 512): '{'x' * 37}...{'x' * 38}'"),
    ("missing vec", doc(vec=...), "document #3 (id 'doc500') has no 'vec'"),
    ("wrong dimension", doc(vec=[0.1] * 15),
     "document #3 (id 'doc500'): 'vec' has dimension 15, the collection expects 16: [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, "
     "0.1, 0.1, ...]"),
    ("NaN", doc(vec=[0.1] * 15 + [math.nan]),
     "document #3 (id 'doc500'): 'vec' contains NaN or infinity (at position 15: nan)"),
    ("inf", doc(vec=[-math.inf] + [0.1] * 15),
     "document #3 (id 'doc500'): 'vec' contains NaN or infinity (at position 0: -inf)"),
    ("beyond float32", doc(vec=[0.1] * 15 + [-1e39]),
     "document #3 (id 'doc500'): 'vec' has a component beyond the float32 range ±3.403e+38 (at position 15: -1e+39)"),
    ("zero vector", doc(vec=[0.0] * 16),
     "document #3 (id 'doc500'): 'vec' is all zeros and cannot be normalised: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, "
     "0.0, ...]"),
    ("not numbers", doc(vec=["a"] * 16),
     "document #3 (id 'doc500'): 'vec' must be a list of numbers, not ['a', 'a', 'a', 'a', 'a', 'a', 'a', 'a', ...]"),
    ("numbers as strings", doc(vec=["0.5"] * 16), "'vec' must be a list of numbers, not ['0.5', '0.5', "),
    ("ragged vec", doc(vec=[[0.1, 0.2], [0.3]]), "'vec' must be a list of numbers, not [[0.1, 0.2], [0.3]]"),
    ("unknown field", doc(colour="red"),
     "document #3 (id 'doc500'): unknown field 'colour' = 'red' (the collection has id, vec, publication_date, "
     "language, category)"),
    ("wrong type int", doc(publication_date="2024-03-01"),
     "document #3 (id 'doc500'): field 'publication_date' must be an integer (int64), not str ('2024-03-01')"),
    ("bool for int", doc(publication_date=True),
     "document #3 (id 'doc500'): field 'publication_date' must be an integer (int64), not bool (True)"),
    ("int64 overflow", doc(publication_date=2**63),
     "field 'publication_date' = 9223372036854775808 is out of the int64 range [-9223372036854775808, "
     "9223372036854775807]"),
    ("wrong type str", doc(language=7), "document #3 (id 'doc500'): field 'language' must be a string, not int (7)"),
    ("over-long string", doc(language="x" * 17),
     "document #3 (id 'doc500'): field 'language' is 17 characters long, over its max_length 16: 'xxxxxxxxxxxxxxxxx'"),
    ("missing metadata", doc(category=...), "document #3 (id 'doc500'): missing field(s) category"),
    ("not a dict", ["doc", [0.1] * 16], "document #3 must be a dict, not list (['doc', [0.1, 0.1, 0.1, 0.1, 0.1, "),
]


@pytest.mark.parametrize("case, bad, message", BAD_DOCUMENTS, ids=[c[0] for c in BAD_DOCUMENTS])
def test_bad_document_is_refused_and_nothing_of_the_batch_lands(col, case, bad, message):
    good = make_docs(3, start=200)
    with pytest.raises(InvalidInputError) as raised:
        col.index([*good, bad])
    assert message in str(raised.value)  # names the document, the field and the value at fault
    assert col.count() == 10  # the good documents of a refused list are not stored either
    assert col.get(["doc200"]) == []


def test_duplicate_ids_in_one_call(col):
    with pytest.raises(InvalidInputError, match=r"document #1 \(id 'dup'\): id appears twice"):
        col.index([doc(id="dup"), doc(id="dup")])
    assert col.count() == 10


@pytest.mark.parametrize("documents, message", [
    (5, "documents must be a list (or iterable) of dicts, not int (5)"),
    ({"id": "a"}, "documents must be a list (or iterable) of dicts, not dict ({'id': 'a'})"),
    ("abc", "documents must be a list (or iterable) of dicts, not str ('abc')"),
])
def test_documents_must_be_a_list(col, documents, message):
    with pytest.raises(InvalidInputError) as raised:
        col.index(documents)
    assert str(raised.value) == message


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


def test_an_engine_failure_keeps_its_kind_and_says_what_landed(col):
    """A disk-full StorageError stays one (disk_full, HTTP 507) when the writer adds what landed,
    and the engine's own error object, raised again by a failed collection, is left unchanged."""
    disk_full = StorageError("the disk is full", disk_full=True)
    chunks_written = []

    def write(rows):
        if chunks_written:
            raise disk_full
        chunks_written.append(len(rows))

    writer = DocumentWriter(col.spec, write, existing=None, embed=None, normalize=True)
    with pytest.raises(StorageError) as caught:
        writer([doc(id=f"w{i}") for i in range(6000)], progress=False)
    assert caught.value.disk_full and caught.value.http_status == 507, caught.value
    assert str(caught.value) == "the disk is full (documents #0-#4999 of this call were stored; #5000 onwards were not)"
    assert str(disk_full) == "the disk is full"


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
    ({}, [{"name": "a", "type": "int64", "max_length": 9}],
     "field 'a': max_length applies to varchar only (got max_length=9 on int64)"),
    ({}, [{"name": "a", "type": "vector"}], "field 'a': unknown type 'vector'"),
    ({}, [7], "fields[0] must be a pymilvus FieldSchema or a dict, not 7"),
    ({}, 5, "fields must be a list of field definitions, not 5"),
    ([("vec", "HNSW")], [], "indexes must be a dict from field name to index parameters, not [('vec', 'HNSW')]"),
    ({"vec": {"index_type": "HNSW", "params": 3}}, [], "indexes['vec']['params'] must be a dict, not 3"),
    ({"vec": {"index_type": "HNSW", "metric_type": "IP", "M": "32"}}, [],
     "indexes['vec']: M must be an integer in [2, 2048], not '32'"),
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
    with pytest.raises(InvalidInputError, match=r"vectors\[0\] has dimension 3, the collection expects 16: \[1.0, "):
        col.similar(vectors=[1.0, 2.0, 3.0])
    with pytest.raises(InvalidInputError, match=r"vectors\[0\] contains NaN or infinity \(at position 0: nan\)"):
        col.similar(vectors=[math.nan] * 16)
    with pytest.raises(InvalidInputError, match=r"vectors\[0\] has norm 4e\+30, over the limit 1e\+14"):
        col.similar(vectors=[1e30] * 16)
    with pytest.raises(InvalidInputError, match=r"vectors must be a vector or a list of vectors of numbers, not 'abc'"):
        col.similar(vectors="abc")
    with pytest.raises(InvalidInputError, match="output_fields: unknown field 'colour'"):
        col.similar(ids=["doc1"], output_fields=["colour"])
    with pytest.raises(InvalidInputError, match=r"output_fields must be a list of field names, not 'language'"):
        col.similar(ids=["doc1"], output_fields="language")
    with pytest.raises(InvalidInputError, match="ids is empty"):
        col.similar(ids=[])
    with pytest.raises(InvalidInputError, match=r"ids must be a list of strings, not str \('doc1'\)"):
        col.similar(ids="doc1")
    with pytest.raises(InvalidInputError, match=r"ids\[1\]: 'id' must be a string, not int \(7\)"):
        col.similar(ids=["doc1", 7])
    with pytest.raises(InvalidInputError, match=r"filter_expr must be a string, not int \(5\)"):
        col.similar(ids=["doc1"], filter_expr=5)
    with pytest.raises(InvalidInputError, match=r"filter_expr must be a string, not list"):
        col.similar_batch([[0.1] * 16], filter_expr=["language == 'fr'"])


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


def test_every_error_is_a_lookalike_error(client, col):
    for call in (lambda: col.similar(ids=["nope"]), lambda: col.index([{"id": ""}]),
                 lambda: client.collection("never_created_here")):
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
    assert search_params_for(spec, {"ef": 5}, 10, wide=False)["params"] == {"ef": 10}  # never below the limit
    assert search_params_for(spec, {"params": {"ef": 40}, "metric_type": "ip"}, 10, wide=False) == {
        "metric_type": "IP", "params": {"ef": 40}}


HNSW = "the collection's HNSW index takes ef"
BAD_SEARCH_PARAMS = [
    ({"ef": "x"}, f"search_params['ef'] must be an integer in [1, 32768] ({HNSW}), not 'x'"),
    ({"ef": -5}, f"search_params['ef'] must be an integer in [1, 32768] ({HNSW}), not -5"),
    ({"ef": 0}, f"search_params['ef'] must be an integer in [1, 32768] ({HNSW}), not 0"),
    ({"ef": 32769}, f"search_params['ef'] must be an integer in [1, 32768] ({HNSW}), not 32769"),
    ({"ef": 64.0}, f"search_params['ef'] must be an integer in [1, 32768] ({HNSW}), not 64.0"),
    ({"ef": True}, f"search_params['ef'] must be an integer in [1, 32768] ({HNSW}), not True"),
    ({"nprobe": 8}, f"search_params: unknown key 'nprobe' = 8 ({HNSW}; 'metric_type' and a nested 'params' dict "
                    "are accepted too)"),
    ({"params": {"ef": 64, "offset": 3}}, "search_params['params']: unknown key 'offset' = 3"),
    ({"params": 5}, "search_params['params'] must be a dict such as {'ef': 128}, not 5"),
    ({"params": {"ef": "x"}}, "search_params['params']['ef'] must be an integer in [1, 32768]"),
    ({"ef": 40, "params": {"ef": 41}}, "search_params['params']['ef'] = 41 contradicts ef = 40 given beside it"),
    ({"metric_type": "L2"}, "search_params['metric_type'] = 'L2' is not the collection's metric 'IP'"),
    ([("ef", 64)], "search_params must be a dict such as {'ef': 128}, not [('ef', 64)]"),
    ("ef=64", "search_params must be a dict such as {'ef': 128}, not 'ef=64'"),
]


@pytest.mark.parametrize("search_params, message", BAD_SEARCH_PARAMS, ids=[str(c[0]) for c in BAD_SEARCH_PARAMS])
def test_bad_search_params_are_refused_naming_key_and_value(col, search_params, message):
    with pytest.raises(InvalidInputError) as raised:
        col.similar(ids=["doc1"], search_params=search_params)
    assert message in str(raised.value)
    with pytest.raises(InvalidInputError) as raised:
        col.similar_batch([[0.1] * 16], search_params=search_params)
    assert message in str(raised.value)


def test_good_search_params_in_either_spelling(col):
    plain = col.similar(ids=["doc1"], limit=5)
    for params in ({"ef": 16}, {"params": {"ef": 16}}, {"params": {"ef": 16}, "metric_type": "IP"}, {"ef": 1}, {}):
        assert [r["id"] for r in col.similar(ids=["doc1"], limit=5, search_params=params)] == [r["id"] for r in plain]


def test_search_params_per_index_type():
    """Each index type takes its own keys (Milvus's documented ranges): IVF nprobe up to nlist, FLAT none."""
    from lookalike.retrieval import check_search_params
    from lookalike.schema import build_spec

    ivf = build_spec(dim=8, indexes={"vec": {"index_type": "IVF_SQ8", "metric_type": "L2", "nlist": 16}})
    assert check_search_params(ivf, {"nprobe": 16}) == {"nprobe": 16}
    with pytest.raises(InvalidInputError, match=r"search_params\['nprobe'\] must be an integer in \[1, 16\] "
                                                r"\(the collection's IVF_SQ8 index takes nprobe\), not 17"):
        check_search_params(ivf, {"nprobe": 17})
    default_nlist = build_spec(dim=8, indexes={"vec": {"index_type": "IVF_FLAT", "metric_type": "IP"}})
    assert check_search_params(default_nlist, {"params": {"nprobe": 128}}) == {"nprobe": 128}
    with pytest.raises(InvalidInputError, match=r"unknown key 'ef' = 64 \(the collection's IVF_FLAT index takes "):
        check_search_params(default_nlist, {"ef": 64})
    flat = build_spec(dim=8, indexes={"vec": {"index_type": "FLAT", "metric_type": "COSINE"}})
    assert check_search_params(flat, {"metric_type": "cosine", "params": {}}) == {}
    with pytest.raises(InvalidInputError, match=r"unknown key 'ef' = 64 \(the collection's FLAT index takes no "
                                                r"search parameter"):
        check_search_params(flat, {"ef": 64})


def test_chunks_count_vector_bytes():
    """A chunk stays under CHUNK_BYTES however wide the vectors: 4096 float32 are 16 KiB a row."""
    import numpy as np

    from lookalike.documents import CHUNK_BYTES, CHUNK_ROWS, Row, chunks

    rows = [Row(f"d{i}", {"id": f"d{i}", "vec": np.zeros(4096, dtype=np.float32)}) for i in range(3000)]
    sizes = [len(chunk) for chunk in chunks(rows)]
    assert sum(sizes) == 3000
    assert max(sizes) < CHUNK_ROWS
    assert all(sum(row.size for row in rows[:n]) <= CHUNK_BYTES for n in sizes)


@pytest.mark.parametrize("before", [5, 5000])  # either side of the numpy check (_MANY_IDS)
@pytest.mark.parametrize("ids, at, culprit", [
    (["", "b"], 0, "'id' is empty"),
    (["b", ""], 1, "'id' is empty"),  # the last
    (["x" * 513], 0, "'id' is 513 characters long"),
    (["é" * 513, "ü"], 0, "'id' is 513 characters long"),  # not ASCII: four bytes a character
    (["\U0001f600" * 513], 0, "'id' is 513 characters long"),
    (["\ud800" * 513], 0, "'id' is 513 characters long"),  # a lone surrogate, as JSON's "\ud800" gives
    ([7, ""], 0, "'id' must be a string, not int"),
    ([b"bytes"], 0, "'id' must be a string, not bytes"),
    (["a\0b", ""], 1, "'id' is empty"),  # a NUL inside an id: the loop reads it
])
def test_check_ids_names_the_first_bad_id(before, ids, at, culprit):
    from lookalike.documents import check_ids

    with pytest.raises(InvalidInputError, match=re.escape(f"exclude_ids[{before + at}]: {culprit}")):
        check_ids(["ok"] * before + ids, "exclude_ids")


def test_check_ids_takes_long_lists_and_ids_up_to_the_limit():
    from lookalike.documents import check_ids

    # 255 and 256 characters: either side of the fast check's one-byte lengths
    ids = [f"i{k}" for k in range(10_000)] + ["x" * 255, "y" * 256, "z" * 512]
    assert check_ids(iter(ids), "exclude_ids") == ids
    assert check_ids(ids[:10_000]) == ids[:10_000]
    # not ASCII, a NUL inside, one character: ids as good as any
    odd = ["é" * 512, "\U0001f600", "a\0b", "x", "\ud800"]
    assert check_ids(ids + odd) == ids + odd
    assert check_ids(odd) == odd
