"""Server mode end to end: admin commands, a server that stops mid-work, moving up from embedded."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from conftest import SEED_FIELDS, SEED_INDEXES, make_docs
from typer.testing import CliRunner

from lookalike import AuthenticationError, Client, EngineUnavailableError, LookalikeError, Settings
from lookalike.cli import app

pytestmark = pytest.mark.server


@pytest.fixture
def admin_env(milvus_server, tmp_path):
    return {"LOOKALIKE_MILVUS_URI": milvus_server.uri, "LOOKALIKE_DATA_DIR": str(tmp_path),
            "LOOKALIKE_MILVUS_ROOT_TOKEN": milvus_server.root_token.reveal(),
            "CODOPS_NEWORG_MILVUS_PASSWORD": "neworg-secret-1"}


def test_admin_commands_provision_list_and_revoke(admin_env, milvus_server, tmp_path):
    runner = CliRunner()
    done = runner.invoke(app, ["admin", "provision", "neworg", "--json"], env=admin_env)
    assert done.exit_code == 0, done.output
    assert '"database": "org_neworg"' in done.output
    assert "neworg-secret-1" not in done.output and admin_env["LOOKALIKE_MILVUS_ROOT_TOKEN"] not in done.output
    assert "neworg" in runner.invoke(app, ["admin", "list", "--json"], env=admin_env).output
    settings = Settings(codops="neworg", password="neworg-secret-1", uri=milvus_server.uri, data_dir=tmp_path)
    with Client(settings) as client:
        client.create_collection("works", dim=4).index([{"id": "a", "vec": [1, 0, 0, 0]}])
        assert client.collection("works").count() == 1
    with pytest.raises(AuthenticationError, match="authentication failed for organisation neworg"):
        Client(replace(settings, password="wrong-secret"))
    done = runner.invoke(app, ["admin", "revoke", "neworg", "--drop-data", "--yes"], env=admin_env)
    assert done.exit_code == 0 and "revoked" in done.output
    with pytest.raises(LookalikeError):  # the user is gone (its pooled connection may not be)
        with Client(replace(settings, retry_seconds=1)) as revoked:
            revoked.create_collection("works", dim=4)
    done = runner.invoke(app, ["admin", "list"], env={**admin_env, "LOOKALIKE_MILVUS_ROOT_TOKEN": ""})
    assert done.exit_code == 1 and "LOOKALIKE_MILVUS_ROOT_TOKEN" in done.output


def test_a_server_outage_is_reported_then_waited_out(server_organisation, milvus_server, tmp_path):
    settings = replace(server_organisation("ltlrt").settings, data_dir=tmp_path)
    with Client(replace(settings, retry_seconds=120)) as client, Client(replace(settings, retry_seconds=2)) as hasty:
        col = client.create_collection("outage", SEED_FIELDS, SEED_INDEXES, dim=16)
        col.index(make_docs(20))
        milvus_server.stop(keep_data=True)
        results: list = []
        # The patient read runs in a thread; the server restarts from this one (it dies with the
        # thread that started it).
        reader = threading.Thread(target=lambda: results.append(col.similar(ids=["doc3"], limit=1)))
        reader.start()
        try:
            started = time.monotonic()
            with pytest.raises(EngineUnavailableError, match=milvus_server.uri.split("//")[1]):
                hasty.collection("outage")  # bounded retries, then a clear error naming the server
            assert time.monotonic() - started < 30
            assert reader.is_alive()  # still retrying while the server is down
        finally:
            milvus_server.start()
            reader.join(timeout=150)
        assert results and results[0][0]["id"] == "doc3"  # retried until the server was back
        assert col.count() == 20  # the same client goes on working, no restart of the caller


def test_export_from_embedded_imports_into_a_server_exactly(server_organisation, tmp_path):
    runner = CliRunner()
    lite_env = {"CODOPS": "ltlrt", "LOOKALIKE_DATA_DIR": str(tmp_path / "lite")}
    with Client(codops="ltlrt", data_dir=tmp_path / "lite") as lite:
        lite.create_collection("moving", SEED_FIELDS, SEED_INDEXES, dim=16).index(make_docs(40))
        original = lite.collection("moving")
        source_docs = original.get([f"doc{i}" for i in range(40)])
        source_spec = original.spec.to_json()
        done = runner.invoke(app, ["export", "moving", str(tmp_path / "moving.parquet")], env=lite_env)
        assert done.exit_code == 0, done.output
    org = server_organisation("ltlrt")
    server_env = {"CODOPS": "ltlrt", "CODOPS_LTLRT_MILVUS_PASSWORD": org.secret.reveal(),
                  "LOOKALIKE_MILVUS_URI": org.uri, "LOOKALIKE_DATA_DIR": str(tmp_path / "srv")}
    done = runner.invoke(app, ["import", "moving_up", str(tmp_path / "moving.parquet")], env=server_env)
    assert done.exit_code == 0, done.output
    with Client(replace(org.settings, data_dir=tmp_path / "srv")) as server:
        moved = server.collection("moving_up")
        assert moved.spec.to_json() == source_spec  # schema and indexes
        assert moved.get([f"doc{i}" for i in range(40)]) == source_docs  # ids, vectors, metadata
