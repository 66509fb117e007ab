"""The Milvus server launcher, on a real Milvus 2.3.5 from the ``milvus`` wheel."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
from pymilvus import MilvusClient

from lookalike.engines.errors import translate_engine_error
from lookalike.errors import AuthenticationError, EngineUnavailableError
from lookalike.ops.milvus_server import PASSWORD_FILE, PIDFILE, MilvusServer, reap, reap_orphans

pytestmark = pytest.mark.server

# Starts a server in a child process, says where it is, then waits to be killed.
_STARTER = """
import json, sys, time
from lookalike.ops.milvus_server import MilvusServer
server = MilvusServer(die_with_parent={die_with_parent}).start()
print(json.dumps({{"pid": server.pid, "data_dir": str(server.data_dir)}}), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pid: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _root(server: MilvusServer) -> MilvusClient:
    return MilvusClient(server.uri, token=server.root_token.reveal(), dedicated=True)


def _refusal(uri: str, **credentials: str) -> Exception:
    with pytest.raises(Exception) as caught:
        MilvusClient(uri, dedicated=True, timeout=10, **credentials)
    return translate_engine_error(caught.value, uri=uri)


def test_serves_loopback_with_authentication_and_a_root_password_of_its_own(milvus_server: MilvusServer) -> None:
    assert urlsplit(milvus_server.uri).hostname == "127.0.0.1"
    root = _root(milvus_server)
    assert root.get_server_version().startswith("v2.3.5")
    root.close()
    assert isinstance(_refusal(milvus_server.uri), AuthenticationError)
    assert isinstance(_refusal(milvus_server.uri, token="root:Milvus"), AuthenticationError)
    password = milvus_server.root_token.reveal().split(":", 1)[1]
    assert password not in repr(milvus_server) + str(milvus_server.root_token)
    stored = milvus_server.data_dir / PASSWORD_FILE
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600


def test_embedded_etcd_keeps_off_the_default_ports(milvus_server: MilvusServer) -> None:
    listening = [c.laddr for c in psutil.Process(milvus_server.pid).net_connections("tcp") if c.status == "LISTEN"]
    ports = {address.port for address in listening}
    assert urlsplit(milvus_server.uri).port in ports
    assert not ports & {2379, 2380}
    # etcd's client and peer ports bind loopback; Milvus 2.3.5 binds the others on every interface.
    assert len([a for a in listening if a.ip == "127.0.0.1"]) == 2
    assert milvus_server.rss_bytes() > 0


def test_restart_keeps_data_uri_and_isolation(milvus_server: MilvusServer) -> None:
    root = _root(milvus_server)
    root.create_database("restart_probe")
    root.close()
    uri, old_pid = milvus_server.uri, milvus_server.pid
    milvus_server.restart()
    assert milvus_server.uri == uri
    assert milvus_server.pid != old_pid and not _alive(old_pid)
    root = _root(milvus_server)
    try:
        assert "restart_probe" in root.list_databases()
        # Milvus 2.3 grants the public role its privileges again at each start: taken back.
        assert root.describe_role("public")["privileges"] == []
    finally:
        root.drop_database("restart_probe")
        root.close()


def test_an_outage_is_reported_and_the_server_comes_back_at_the_same_uri(milvus_server: MilvusServer) -> None:
    uri, token = milvus_server.uri, milvus_server.root_token.reveal()
    milvus_server.stop(keep_data=True)
    try:
        assert not milvus_server.running
        error = _refusal(uri, token=token)
        assert isinstance(error, EngineUnavailableError) and uri in str(error)
    finally:
        milvus_server.start()
    assert milvus_server.uri == uri
    _root(milvus_server).close()


def test_reap_orphans_spares_a_server_whose_starter_lives(milvus_server: MilvusServer) -> None:
    assert milvus_server.data_dir not in reap_orphans()
    assert milvus_server.running and (milvus_server.data_dir / PIDFILE).exists()


def test_stop_leaves_no_process_and_no_directory(exclusive_server: None) -> None:
    with MilvusServer() as server:
        pid, data_dir = server.pid, server.data_dir
        assert server.start_seconds is not None and server.start_seconds > 0
        _root(server).close()
    assert pid is not None and not _alive(pid)
    assert not data_dir.exists()


@pytest.mark.parametrize("die_with_parent", [False, True])
def test_a_killed_starter_leaves_nothing_behind(exclusive_server: None, die_with_parent: bool) -> None:
    starter = subprocess.Popen(
        [sys.executable, "-c", _STARTER.format(die_with_parent=die_with_parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        started = json.loads(starter.stdout.readline())  # type: ignore[union-attr]
    finally:
        starter.kill()
        starter.wait()
    pid, data_dir = started["pid"], Path(started["data_dir"])
    if die_with_parent:
        _wait_gone(pid)
        assert not _alive(pid), "the kernel ends the server with the thread that started it"
    else:
        assert _alive(pid), "the server outlives a killed starter: a stray"
    assert data_dir in reap_orphans()
    assert not _alive(pid)
    assert not data_dir.exists()


def test_a_crash_while_starting_is_reported_at_once(exclusive_server: None, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "etcd.data").write_text("not a directory")  # embedded etcd cannot start
    server = MilvusServer(tmp_path, start_timeout=600)
    with pytest.raises(EngineUnavailableError, match="exited with code") as caught:
        server.start()
    assert "etcd" in str(caught.value)
    assert not server.running and not (tmp_path / PIDFILE).exists()
    assert not reap(tmp_path)
