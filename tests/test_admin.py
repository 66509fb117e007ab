"""Organisations on a real Milvus server: provisioned, listed, revoked, and isolated by the server."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import grpc
import pytest
from pymilvus import MilvusClient
from server_fixture import ServerOrganisation

from lookalike.config import Secret
from lookalike.engines import open_engine
from lookalike.engines.errors import translate_engine_error
from lookalike.errors import (
    AuthenticationError,
    EngineUnavailableError,
    InvalidInputError,
    PermissionDeniedError,
    StorageError,
)
from lookalike.ops import admin
from lookalike.ops.milvus_server import MilvusServer

server = pytest.mark.server
DIM = 8


def _connect(org: ServerOrganisation, database: str | None = None, secret: str | None = None) -> MilvusClient:
    """A raw pymilvus client with the organisation's credentials, on any database."""
    return MilvusClient(
        org.uri,
        user=org.code,
        password=secret or org.secret.reveal(),
        db_name=database or admin.Organisation(org.code).database,
        dedicated=True,
        timeout=10,
    )


def _docs(prefix: str, n: int = 3) -> list[dict]:
    """Documents whose vectors point each along its own axis."""
    return [{"id": f"{prefix}{i}", "vector": [float(j == i) for j in range(DIM)]} for i in range(n)]


@pytest.fixture(scope="module")
def orgs(server_organisation: Callable[[str], ServerOrganisation]) -> Iterator[tuple[ServerOrganisation, ...]]:
    """Organisations A and B; B has a collection "private" with three documents."""
    a, b = server_organisation("isoa"), server_organisation("isob")
    as_b = _connect(b)
    as_b.create_collection("private", dimension=DIM, id_type="string", max_length=64)
    as_b.insert("private", _docs("b"))
    as_b.flush("private")
    yield a, b
    as_b.drop_collection("private")
    as_b.close()


# What organisation A tries in B's database; the server must refuse every one.
TRESPASSES: dict[str, Callable[[MilvusClient], object]] = {
    "list collections": lambda c: c.list_collections(),
    "has collection": lambda c: c.has_collection("private"),
    "describe collection": lambda c: c.describe_collection("private"),
    "list indexes": lambda c: c.list_indexes("private"),
    "collection stats": lambda c: c.get_collection_stats("private"),
    "query": lambda c: c.query("private", filter='id != ""', limit=3),
    "search": lambda c: c.search("private", data=[[0.1] * DIM], limit=3),
    "insert": lambda c: c.insert("private", _docs("a")),
    "upsert": lambda c: c.upsert("private", _docs("b")),
    "delete": lambda c: c.delete("private", ids=["b0"]),
    "release": lambda c: c.release_collection("private"),
    "drop collection": lambda c: c.drop_collection("private"),
    "create collection": lambda c: c.create_collection("intruder", dimension=DIM),
    "list databases": lambda c: c.list_databases(),
}


@server
@pytest.mark.parametrize("trespass", TRESPASSES)
def test_the_server_denies_another_organisations_database(orgs: tuple[ServerOrganisation, ...], trespass: str) -> None:
    a, b = orgs
    as_a_in_b = _connect(a, database=admin.Organisation(b.code).database)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            TRESPASSES[trespass](as_a_in_b)
    finally:
        as_a_in_b.close()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    error = translate_engine_error(caught.value, uri=a.uri, codops=a.code, action=trespass)
    assert isinstance(error, PermissionDeniedError)
    assert "organisation isoa" in str(error) and trespass in str(error) and "needs privilege" in str(error)


@server
def test_the_trespasses_left_the_other_organisation_untouched(orgs: tuple[ServerOrganisation, ...]) -> None:
    _, b = orgs
    as_b = _connect(b)
    try:
        assert as_b.list_collections() == ["private"]
        rows = as_b.query("private", filter='id != ""', output_fields=["id"], limit=10, consistency_level="Strong")
        assert sorted(row["id"] for row in rows) == ["b0", "b1", "b2"]
    finally:
        as_b.close()


@server
def test_an_organisation_may_do_all_lookalike_needs_in_its_own_database(orgs: tuple[ServerOrganisation, ...]) -> None:
    a, _ = orgs
    as_a = _connect(a)
    try:
        as_a.create_collection("own", dimension=DIM, id_type="string", max_length=64, consistency_level="Session")
        assert as_a.list_collections() == ["own"]
        as_a.insert("own", _docs("a"))
        as_a.upsert("own", _docs("a", 1))
        as_a.flush("own")
        assert [hit["id"] for hit in as_a.search("own", data=[_docs("q")[2]["vector"]], limit=1)[0]] == ["a2"]
        as_a.delete("own", ids=["a0"])
        # "Session" reads do not wait for this client's deletes (pymilvus records inserts only).
        assert len(as_a.query("own", filter='id != ""', limit=10, consistency_level="Strong")) == 2
        assert as_a.get_load_state("own")["state"].name == "Loaded"
        assert as_a.list_indexes("own") and as_a.get_collection_stats("own")
        as_a.release_collection("own")
    finally:
        as_a.drop_collection("own")
        as_a.close()


@server
def test_a_user_cannot_list_the_default_database_either(orgs: tuple[ServerOrganisation, ...]) -> None:
    a, _ = orgs
    as_a = _connect(a, database="default")
    try:
        with pytest.raises(grpc.RpcError) as caught:
            as_a.list_collections()
    finally:
        as_a.close()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


@server
def test_provisioning_takes_the_public_roles_run_of_every_database(milvus_server: MilvusServer) -> None:
    admin.provision("pubcheck", "pubcheck-secret", milvus_server.uri, milvus_server.root_token)
    root = MilvusClient(milvus_server.uri, token=milvus_server.root_token.reveal(), dedicated=True)
    try:
        assert root.describe_role("public")["privileges"] == []
    finally:
        root.close()
        admin.revoke("pubcheck", milvus_server.uri, milvus_server.root_token, drop_data=True)


@server
def test_provision_is_idempotent(milvus_server: MilvusServer) -> None:
    uri, token = milvus_server.uri, milvus_server.root_token
    first = admin.provision("idem", Secret("idem-secret"), uri, token)
    second = admin.provision("idem", Secret("idem-secret"), uri, token)
    root = MilvusClient(uri, token=token.reveal(), dedicated=True)
    try:
        assert first == second
        assert (first.database, first.user, first.role) == ("org_idem", "idem", "org_idem_rw")
        assert root.list_databases().count("org_idem") == 1
        assert root.describe_user("idem")["roles"] == ("org_idem_rw",)
        grants = root.describe_role("org_idem_rw", db_name="org_idem")["privileges"]
        assert {(g["object_type"], g["privilege"]) for g in grants} == {
            (kind, privilege) for kind, names in admin.ORGANISATION_PRIVILEGES.items() for privilege in names
        }
        assert {g["db_name"] for g in grants} == {"org_idem"}
    finally:
        root.close()
        admin.revoke("idem", uri, token, drop_data=True)


@server
def test_a_new_secret_replaces_the_old_one(milvus_server: MilvusServer) -> None:
    uri, token = milvus_server.uri, milvus_server.root_token
    org = ServerOrganisation("rotate", Secret("rotate-old"), uri)
    admin.provision(org.code, org.secret, uri, token)
    admin.provision(org.code, "rotate-new", uri, token)
    try:
        _connect(org, secret="rotate-new").close()
        with pytest.raises(Exception) as caught:
            _connect(org)
        assert isinstance(translate_engine_error(caught.value, uri=uri, codops=org.code), AuthenticationError)
    finally:
        admin.revoke(org.code, uri, token, drop_data=True)


@server
def test_revoke_removes_access_and_keeps_data_unless_asked(milvus_server: MilvusServer) -> None:
    uri, token = milvus_server.uri, milvus_server.root_token
    org = ServerOrganisation("gone", Secret("gone-secret"), uri)
    admin.provision(org.code, org.secret, uri, token)
    as_org = _connect(org)
    as_org.create_collection("kept", dimension=DIM)
    as_org.close()
    assert "gone" in admin.list_organisations(uri, token)

    assert admin.revoke(org.code, uri, token)
    assert "gone" not in admin.list_organisations(uri, token)
    with pytest.raises(Exception) as caught:
        _connect(org)
    assert isinstance(translate_engine_error(caught.value, uri=uri, codops=org.code), AuthenticationError)
    assert not admin.revoke(org.code, uri, token)

    admin.provision(org.code, org.secret, uri, token)  # the data came back with the organisation
    as_org = _connect(org)
    assert as_org.list_collections() == ["kept"]
    as_org.close()
    assert admin.revoke(org.code, uri, token, drop_data=True)
    root = MilvusClient(uri, token=token.reveal(), dedicated=True)
    assert "org_gone" not in root.list_databases()
    root.close()


@server
def test_errors_say_who_failed_where_without_the_secret(orgs: tuple[ServerOrganisation, ...]) -> None:
    a, _ = orgs
    with pytest.raises(Exception) as wrong_secret:
        _connect(a, secret="not-the-secret")
    error = translate_engine_error(wrong_secret.value, uri=a.uri, codops=a.code)
    assert isinstance(error, AuthenticationError)
    assert str(error).startswith("authentication failed for organisation isoa")

    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(Exception) as unreachable:
        MilvusClient(nowhere, user=a.code, password=a.secret.reveal(), dedicated=True, timeout=5)
    error = translate_engine_error(unreachable.value, uri=f"http://isoa:{a.secret.reveal()}@{nowhere[7:]}")
    assert isinstance(error, EngineUnavailableError) and nowhere[7:] in str(error)
    assert a.secret.reveal() not in str(error)


@server
def test_an_engine_error_quoting_the_secret_keeps_its_kind_without_it(orgs: tuple[ServerOrganisation, ...]) -> None:
    a, _ = orgs
    engine = open_engine(a.settings)
    try:
        error = engine._translate(RuntimeError(f"echoed {a.secret.reveal()} back"), "search 'x'")
    finally:
        engine.close()
    assert isinstance(error, StorageError) and error.http_status == 503, repr(error)
    assert a.secret.reveal() not in str(error) and "echoed ******** back" in str(error)


@server
def test_a_wrong_root_token_is_an_authentication_error(milvus_server: MilvusServer) -> None:
    with pytest.raises(AuthenticationError, match="root user"):
        admin.list_organisations(milvus_server.uri, Secret("root:not-the-password"))


@pytest.mark.parametrize(
    ("code", "secret", "culprit"),
    [("root", "long-enough", "reserved"), ("shorty", "12345", "6 to 256"), ("no way", "long-enough", "invalid")],
)
def test_provision_refuses_bad_codes_and_secrets_before_connecting(code: str, secret: str, culprit: str) -> None:
    with pytest.raises(InvalidInputError, match=culprit):
        admin.provision(code, secret, "http://127.0.0.1:1", "root:unused")
