"""wait_for_index and the index state: on the embedded engine and on a 2.3.5 server, with writers
in other threads while one waits."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

import lookalike
from lookalike import Client, IndexTimeoutError, InvalidInputError

DIM = 32


def _docs(prefix: str, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"{prefix}{i}", "vec": v} for i, v in enumerate(rng.standard_normal((n, DIM)))]


def _wait_while_others_write(client: Client, name: str, batches: int = 6) -> None:
    """Two threads index flushed batches while this one waits; what was flushed before the wait
    began is indexed when it returns, and every document is found afterwards."""
    col = client.create_collection(name, dim=DIM)
    col.index(_docs("base", 3000, 0))
    before = col.describe()["index"]
    assert before["indexed_rows"] + before["pending_rows"] == 3000
    errors: list[BaseException] = []
    started = threading.Barrier(3)

    def write(prefix: str, seed: int) -> None:
        try:
            started.wait()
            for b in range(batches):
                col.index(_docs(f"{prefix}{b}_", 200, seed + b))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(p, s)) for p, s in (("w1_", 10), ("w2_", 20))]
    for thread in writers:
        thread.start()
    started.wait()
    state = col.wait_for_index(timeout=300)
    assert state["indexed_rows"] >= 3000, state
    assert state["built"] == (state["pending_rows"] == 0)
    for thread in writers:
        thread.join()
    assert not errors, errors
    final = col.wait_for_index(timeout=300)
    total = 3000 + 2 * batches * 200
    assert final == {"indexed_rows": total, "pending_rows": 0, "built": True}
    assert col.describe()["index"] == final
    assert col.count() == total
    probe = _docs("w2_1_", 200, 21)[7]  # a document written while the wait went on
    assert col.similar(vectors=[probe["vec"]], limit=1)[0]["id"] == "w2_1_7"


def test_lite_wait_for_index_while_threads_write(tmp_path):
    with Client(codops="ltlrt", data_dir=tmp_path) as client:
        _wait_while_others_write(client, "waited")


def test_lite_timeout_is_an_index_timeout_error_naming_the_rows(tmp_path):
    with Client(codops="ltlrt", data_dir=tmp_path) as client:
        col = client.create_collection("slow", dim=64)
        rng = np.random.default_rng(3)
        # A graph that takes seconds to build: a wait of 0 s gives up at once.
        col.index([{"id": f"s{i}", "vec": v} for i, v in enumerate(rng.standard_normal((20_000, 64)))])
        with pytest.raises(IndexTimeoutError, match="20000 pending") as caught:
            col.wait_for_index(timeout=0)
        assert (caught.value.indexed_rows, caught.value.pending_rows) == (0, 20_000)
        assert isinstance(caught.value, TimeoutError) and caught.value.http_status == 504
        assert caught.value.exit_code == 7
        for bad in (-1, float("nan"), float("inf"), "10", True):
            with pytest.raises(InvalidInputError, match="timeout"):
                col.wait_for_index(timeout=bad)
        assert client.wait_for_index("slow") == {"indexed_rows": 20_000, "pending_rows": 0, "built": True}


def test_module_function_is_exported(tmp_path, monkeypatch):
    monkeypatch.setenv("CODOPS", "ltlrt")
    monkeypatch.setenv("LOOKALIKE_DATA_DIR", str(tmp_path))
    lookalike.disconnect()
    try:
        lookalike.create_collection("m", dim=DIM)
        lookalike.index("m", _docs("m", 50, 4))
        assert lookalike.wait_for_index("m", timeout=120) == {"indexed_rows": 50, "pending_rows": 0, "built": True}
        assert lookalike.describe("m")["index"]["built"]
    finally:
        lookalike.disconnect()


@pytest.mark.slow
def test_server_wait_for_index_while_threads_write(server_organisation, tmp_path):
    settings = replace(server_organisation("ltlrt").settings, data_dir=tmp_path)
    with Client(settings) as client:
        try:
            _wait_while_others_write(client, "waited_on_server", batches=3)
        finally:
            client.drop_collection("waited_on_server")
