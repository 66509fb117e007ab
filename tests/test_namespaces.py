"""Organisations are isolated; codes are validated; secrets never show."""

from __future__ import annotations

import logging

import pytest
from conftest import SEED_FIELDS, SEED_INDEXES, make_docs

from lookalike import Client, InvalidInputError, NotFoundError, Secret, Settings
from lookalike.config import password_variable


@pytest.fixture
def two_orgs(org_client):
    return org_client("ltlrt"), org_client("chrts")


def test_same_collection_name_in_two_organisations_is_two_collections(two_orgs, name):
    a, b = two_orgs
    a.create_collection(name, SEED_FIELDS, SEED_INDEXES, dim=16).index(make_docs(10))
    assert name not in b.list_collections()
    with pytest.raises(NotFoundError):
        b.collection(name)
    mine = b.create_collection(name, SEED_FIELDS, SEED_INDEXES, dim=16)
    mine.index(make_docs(3, seed=4, start=100))
    assert mine.count() == 3 and a.collection(name).count() == 10
    assert mine.get(["doc1"]) == []  # b cannot read a's document by id
    # nor filter its way into it: a filter only ever sees the organisation's own collection
    assert {r["id"] for r in mine.similar(ids=["doc100"], filter_expr='id in ["doc1", "doc2"]', limit=10)} == set()
    assert mine.delete(ids=["doc1"]) == 0 and a.collection(name).count() == 10
    b.drop_collection(name)
    assert a.collection(name).count() == 10


@pytest.mark.parametrize("code", ["", "a", "../etc", "ltlrt; drop", "x" * 40, "org-1", "lt lrt", "1abc", "é"])
def test_bad_organisation_codes_are_refused(code, tmp_path):
    with pytest.raises(InvalidInputError, match="organisation code"):
        Client(codops=code, data_dir=tmp_path)


def test_codes_are_case_insensitive_and_name_the_secret_variable():
    assert Settings(codops="LTLRT").codops == "ltlrt"
    assert password_variable("ltlrt") == "CODOPS_LTLRT_MILVUS_PASSWORD"


def test_settings_from_environment(tmp_path):
    env = {"CODOPS": "chrts", "CODOPS_CHRTS_MILVUS_PASSWORD": "pw", "LOOKALIKE_DATA_DIR": str(tmp_path),
           "LOOKALIKE_MILVUS_URI": "http://127.0.0.1:19530"}
    settings = Settings.from_env(env)
    assert (settings.codops, settings.password.reveal(), settings.uri, settings.data_dir) == (
        "chrts", "pw", "http://127.0.0.1:19530", tmp_path)
    assert not settings.embedded and Settings.from_env({"LOOKALIKE_DATA_DIR": str(tmp_path)}).embedded
    with pytest.raises(InvalidInputError, match="unknown setting"):
        Settings.from_env(env, colour="red")


def test_secrets_never_show(lite_dir, caplog):
    secret = "hunter2-very-secret"
    caplog.set_level(logging.DEBUG)
    with Client(codops="ltlrt", password=secret, data_dir=lite_dir) as client:
        shown = [repr(client), str(client.settings), repr(client.settings), repr(Secret(secret))]
        with pytest.raises(NotFoundError) as raised:
            client.collection("not_there")
        shown.append(str(raised.value))
    assert all(secret not in text for text in shown)
    assert secret not in caplog.text
    # a server that cannot be reached: the message names where it looked, never the secret
    with pytest.raises(Exception) as raised:
        Client(codops="ltlrt", password=secret, uri="http://127.0.0.1:9", data_dir=lite_dir)
    assert secret not in str(raised.value) and "127.0.0.1:9" in str(raised.value)
