"""One Client shared by threads: what was acknowledged is what is stored, read back, and kept.

Each thread works on its own ids and keeps a model of what the engine acknowledged to it (the
version of each id it wrote last, or None once it deleted it). Every read is checked against
that model as soon as it returns, and the whole store against all models at the end, and again
after the client is closed and reopened. The guarantees tested are those the Client's docstring
states: read-your-writes per thread, an acknowledged write survives, a delete stays deleted.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from lookalike import Client
from lookalike.engines.lite import engine as lite_engine
from lookalike.engines.lite.engine import ReadWriteLock, SearchSlots

DIM = 16
IDS_PER_THREAD = 12
MAX_THREADS = 16  # the most threads a test here starts
FIELDS = [{"name": "owner", "type": "varchar", "max_length": 16}, {"name": "version", "type": "int64"}]
INDEXES = {"vec": {"index_type": "HNSW", "metric_type": "IP", "M": 16, "efConstruction": 64}, "owner": None}
# Every candidate of a thread's own few dozen rows is visited: "contains what it wrote" is exact.
WIDE = {"ef": 512}


def _vector(rng: random.Random) -> list[float]:
    return [rng.uniform(-1, 1) for _ in range(DIM)]


@dataclass
class Worker:
    """One thread's ids, what the engine acknowledged for them, and what went wrong."""

    number: int
    seed: int
    model: dict[str, int | None] = field(default_factory=dict)  # id -> acknowledged version or deleted
    errors: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    operations: int = 0

    @property
    def owner(self) -> str:
        return f"t{self.number}"

    @property
    def ids(self) -> list[str]:
        return [f"{self.owner}_{k}" for k in range(IDS_PER_THREAD)]

    def live(self) -> set[str]:
        return {i for i, v in self.model.items() if v is not None}

    def run(self, col, seconds: float) -> None:
        rng = random.Random(self.seed)
        version = 0
        deadline = time.monotonic() + seconds
        mine = f'owner == "{self.owner}"'
        while time.monotonic() < deadline:
            self.operations += 1
            step = rng.choice(("index", "index", "upsert", "get", "similar", "exclude", "delete", "count"))
            try:
                if step in ("index", "upsert"):
                    chosen = rng.sample(self.ids, rng.randint(1, 4))
                    version += 1
                    docs = [{"id": i, "vec": _vector(rng), "owner": self.owner, "version": version} for i in chosen]
                    assert col.index(docs, flush=step == "index" and rng.random() < 0.5) == len(docs)
                    self.model.update(dict.fromkeys(chosen, version))
                elif step == "get":
                    chosen = rng.sample(self.ids, rng.randint(1, 6))
                    got = {d["id"]: d["version"] for d in col.get(chosen, ["version"])}
                    want = {i: self.model[i] for i in chosen if self.model.get(i) is not None}
                    if got != want:
                        self.wrong.append(f"get {chosen}: {got} != {want}")
                elif step == "similar":
                    live = sorted(self.live())
                    if live:
                        query = rng.sample(live, min(3, len(live)))
                        hits = [h["id"] for h in col.similar(ids=query, filter_expr=mine, limit=IDS_PER_THREAD,
                                                             search_params=WIDE)]
                        if len(hits) != len(set(hits)) or set(hits) != set(live):
                            self.wrong.append(f"similar: {sorted(hits)} != live {live}")
                elif step == "exclude":
                    # every other thread's ids and all but two of this one's live ones: a long
                    # list, and the query's neighbourhood excluded (Milvus Lite masks it)
                    live = sorted(self.live())
                    if len(live) > 2:
                        kept = rng.sample(live, 2)
                        excluded = [i for i in live if i not in kept] + [
                            f"t{n}_{k}" for n in range(MAX_THREADS) if n != self.number for k in range(IDS_PER_THREAD)]
                        hits = [h["id"] for h in col.similar(ids=[rng.choice(live)], exclude_ids=excluded, limit=2,
                                                             search_params=WIDE)]
                        if sorted(hits) != sorted(kept):
                            self.wrong.append(f"similar excluding all but {kept}: {hits}")
                elif step == "delete":
                    live = sorted(self.live())
                    if live:
                        chosen = rng.sample(live, min(len(live), rng.randint(1, 2)))
                        deleted = col.delete(ids=chosen)
                        self.model.update(dict.fromkeys(chosen))
                        if deleted != len(chosen):
                            self.wrong.append(f"delete {chosen} deleted {deleted}")
                else:
                    counted = col.count(mine)
                    if counted != len(self.live()):
                        self.wrong.append(f"count: {counted} != {len(self.live())}")
            except Exception as exc:  # noqa: BLE001 - every error on valid input is a finding
                self.errors.append(f"{step}: {type(exc).__name__}: {exc}")


def _run_threads(workers: list[Worker], target: Callable[[Worker], None]) -> None:
    threads = [threading.Thread(target=target, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _check_store(col, workers: list[Worker], when: str) -> None:
    """Every acknowledged document present exactly once, at its last version; no deleted one."""
    want = {i: v for w in workers for i, v in w.model.items() if v is not None}
    deleted = {i for w in workers for i, v in w.model.items() if v is None}
    everything = list(col.iterate(batch_size=37, output_fields=["id", "version"]))
    ids = [d["id"] for d in everything]
    assert len(ids) == len(set(ids)), f"{when}: duplicates {sorted(i for i in set(ids) if ids.count(i) > 1)}"
    stored = {d["id"]: d["version"] for d in everything}
    assert stored == want, f"{when}: lost {sorted(want.keys() - stored.keys())}, back {sorted(stored.keys() & deleted)}"
    assert col.count() == len(want), when
    got = {d["id"]: d["version"] for d in col.get(sorted(want.keys() | deleted), ["version"])}
    assert got == want, when


def _mixed_workload(make_client: Callable[[], Client], name: str, threads: int, seconds: float) -> None:
    assert threads <= MAX_THREADS  # the "exclude" step lists every other thread's ids
    client = make_client()
    try:
        col = client.create_collection(name, FIELDS, INDEXES, dim=DIM)
        workers = [Worker(n, seed=1000 * n + 7) for n in range(threads)]
        _run_threads(workers, lambda w: w.run(col, seconds))
        problems = [p for w in workers for p in w.errors + w.wrong]
        operations = sum(w.operations for w in workers)
        assert not problems, f"{len(problems)} problems in {operations} operations: {problems[:10]}"
        client.engine.wait_for_index(name)  # the background index build done: check the indexed store too
        _check_store(col, workers, "at the end")
    finally:
        client.close()
    reopened = make_client()
    try:
        _check_store(reopened.collection(name), workers, "after reopening")
        reopened.drop_collection(name)
    finally:
        reopened.close()


@pytest.fixture
def make_client(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], Client]:
    """Clients of one organisation on a store of its own: on the embedded engine a private data
    directory (so that closing the client really closes the engine), on the server its database."""
    if backend == "server":
        settings = request.getfixturevalue("server_organisation")("concur").settings
        return lambda: Client(settings)
    return lambda: Client(codops="concur", data_dir=tmp_path)


def test_two_threads_indexing_and_flushing_store_exactly_what_was_acknowledged(make_client, backend, name):
    """Issue 12's smallest reproduction: 2 threads × 100 calls of index(20 docs, flush=True)."""
    if backend == "server":
        pytest.skip("the embedded engine's bug; 200 flushes of a 2.3 server take ~10 minutes")
    client = make_client()
    try:
        col = client.create_collection(name, FIELDS, INDEXES, dim=DIM)
        acknowledged: list[int] = []
        errors: list[str] = []

        def work(n: int) -> None:
            rng = random.Random(n)
            for call in range(100):
                docs = [{"id": f"t{n}_{call}_{k}", "vec": _vector(rng), "owner": f"t{n}", "version": call}
                        for k in range(20)]
                try:
                    acknowledged.append(col.index(docs, flush=True))
                except Exception as exc:  # noqa: BLE001 - the finding
                    errors.append(f"{type(exc).__name__}: {exc}")

        _run_threads([0, 1], work)  # type: ignore[arg-type]
        assert errors == []
        assert col.count() == sum(acknowledged) == 4000
        col.drop()
    finally:
        client.close()


def test_eight_threads_for_ten_seconds(make_client, name):
    _mixed_workload(make_client, name, threads=8, seconds=10)


@pytest.mark.slow
def test_sixteen_threads_for_a_minute(make_client, name):
    _mixed_workload(make_client, name, threads=16, seconds=60)


# -- the lock itself -----------------------------------------------------------------------


def _started(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_the_lock_lets_readers_share_and_a_writer_wait_for_them():
    lock = ReadWriteLock()
    inside = threading.Barrier(3, timeout=5)
    order: list[str] = []
    with lock.read():
        # two more readers get in while this one holds it
        readers = [_started(lambda: (lock.acquire_read(), inside.wait(), lock.release_read())) for _ in range(2)]
        inside.wait()
        for r in readers:
            r.join(5)

        def write() -> None:
            with lock.write():
                order.append("writer")

        writer = _started(write)
        time.sleep(0.2)
        assert order == []  # the writer waits for the reader inside
        order.append("reader leaves")
    writer.join(5)
    assert order == ["reader leaves", "writer"]


def test_the_lock_puts_a_waiting_writer_before_new_readers():
    lock = ReadWriteLock()
    order: list[str] = []
    lock.acquire_read()

    def write() -> None:
        with lock.write():
            order.append("writer")

    def read() -> None:
        with lock.read():
            order.append("late reader")

    writer = _started(write)
    time.sleep(0.2)  # the writer is waiting now
    late = _started(read)
    time.sleep(0.2)
    assert order == []  # the late reader queues behind the waiting writer
    lock.release_read()
    writer.join(5)
    late.join(5)
    assert order == ["writer", "late reader"]


def test_the_writing_thread_may_take_the_lock_again():
    lock = ReadWriteLock()
    with lock.write(), lock.write(), lock.read():
        pass
    with lock.read():  # released fully
        pass


def test_readers_never_see_a_flush_half_done(tmp_path):
    """Counts and reads by id while another thread writes and flushes in small batches: every read
    sees whole batches (a multiple of the batch size), never a memtable swapped out and not yet a
    segment."""
    batch = 25
    with Client(codops="concur", data_dir=tmp_path) as client:
        col = client.create_collection("swap", FIELDS, INDEXES, dim=DIM)
        done = threading.Event()
        seen: list[int] = []

        def write() -> None:
            rng = np.random.default_rng(1)
            for n in range(60):
                col.index([{"id": f"w{n}_{k}", "vec": rng.standard_normal(DIM).tolist(), "owner": "w", "version": n}
                           for k in range(batch)], flush=True)
            done.set()

        every = [f"w{n}_{k}" for n in range(60) for k in range(batch)]
        writer = _started(write)
        while not done.is_set():
            seen.append(col.count('owner == "w"'))
            seen.append(len(col.get(every, ["id"])))
        writer.join()
        assert all(n % batch == 0 for n in seen), sorted(set(seen))
        assert col.count() == 60 * batch


# -- the search slots -----------------------------------------------------------------------


def test_search_slots_admit_their_size_and_let_a_holder_in_again():
    slots = SearchSlots(1)
    entered = threading.Event()
    with slots(), slots():  # a request inside a request: no wait for itself
        other = _started(lambda: (slots().__enter__(), entered.set()))
        time.sleep(0.2)
        assert not entered.is_set()  # the one slot is held
    other.join(5)
    assert entered.is_set()  # released fully on leaving the outer request


def test_search_slots_let_waiters_in_first_come_first_served():
    slots = SearchSlots(1)
    order: list[int] = []

    def request(n: int) -> None:
        with slots():
            order.append(n)

    with slots():
        waiters = []
        for n in range(5):
            waiters.append(_started(lambda n=n: request(n)))
            time.sleep(0.05)  # each is waiting before the next comes
    for waiter in waiters:
        waiter.join(5)
    assert order == [0, 1, 2, 3, 4]
    with slots():  # every slot given back
        pass


def test_eight_threads_searching_run_two_requests_at_a_time(tmp_path, monkeypatch):
    """With two slots, at most two similarity requests are inside the engine at once, every one
    answered as it is alone; a batch made inside a request does not wait for a slot."""
    monkeypatch.setattr(lite_engine, "SEARCH_SLOTS", SearchSlots(2))
    with Client(codops="concur", data_dir=tmp_path) as client:
        col = client.create_collection("slots", FIELDS, INDEXES, dim=DIM)
        rng = np.random.default_rng(2)
        col.index([{"id": f"s{k}", "vec": rng.standard_normal(DIM).tolist(), "owner": "s", "version": k}
                   for k in range(200)])
        alone = {k: [h["id"] for h in col.similar(ids=[f"s{k}"], limit=5)] for k in range(16)}
        inside, most = [0], [0]
        counter = threading.Lock()
        search_hits = col.engine.search_hits

        def counted(*args, **kwargs):
            with counter:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            try:
                time.sleep(0.005)  # long enough for the other threads to pile up at the door
                return search_hits(*args, **kwargs)
            finally:
                with counter:
                    inside[0] -= 1

        monkeypatch.setattr(col.engine, "search_hits", counted)
        answers: dict[int, list[list[str]]] = {k: [] for k in range(16)}

        def work(n: int) -> None:
            for k in range(n, 16, 8):
                answers[k].append([h["id"] for h in col.similar(ids=[f"s{k}"], limit=5)])
                with lite_engine.SEARCH_SLOTS():  # a holder's own request goes in
                    answers[k].append([h["id"] for h in col.similar_batch([{"ids": [f"s{k}"], "limit": 5}])[0]])

        _run_threads(list(range(8)), work)
        assert most[0] == 2
        assert answers == {k: [alone[k]] * 2 for k in range(16)}
