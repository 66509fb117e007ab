"""The HTTP service under concurrent load: throughput, latency, and every answer checked.

A fixed number of requests (index, upsert, delete, get, similar, and some invalid ones) is sent
by N workers at once to the service on loopback (``create_app`` under uvicorn, the embedded
engine, as ``lookalike serve`` runs it). Each worker owns its ids and remembers what the service
acknowledged, so every answer is checked as it comes:

- a valid request answered 4xx or 5xx, an invalid one answered anything but 4xx: counted;
- ``get`` and ``similar`` must show the worker's ids at their last acknowledged version and never
  an id whose delete was acknowledged;
- at the end, every acknowledged write is stored at its version, every acknowledged delete is
  gone, and no id sent only in requests answered 4xx was stored.

Run it as a benchmark (a table, and ``bench/results/http-<date>.json``)::

    python bench/http_load.py --requests 1500 --in-flight 1,4,16

``tests/test_http_load.py`` runs :func:`run_load` and asserts the counts are zero.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

TOKEN = "load-token-ltlrt"
ENVIRON = {"CODOPS_LTLRT_API_TOKEN": TOKEN}
DIM = 8
IDS_PER_WORKER = 12
SCHEMA = {
    "dim": DIM,
    "fields": [{"name": "worker", "type": "varchar", "max_length": 16},
               {"name": "version", "type": "int64"}],
    "indexes": {"vec": {"index_type": "HNSW", "metric_type": "IP", "M": 16}, "worker": None},
}
# The share of each kind of request in the mix.
MIX = {"index": 30, "get": 20, "similar": 20, "delete": 15, "invalid": 15}
PROBLEMS_KEPT = 20  # examples of each problem kept for the report


def vector(doc_id: str, version: int) -> list[float]:
    """A vector that depends on the id and its version, so a stale version is visible."""
    rng = random.Random(zlib.crc32(f"{doc_id}@{version}".encode()))
    return [rng.uniform(-1.0, 1.0) for _ in range(DIM)]


@dataclass
class Outcome:
    """What one load run saw."""

    requests: int = 0
    seconds: float = 0.0
    in_flight: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    operations: Counter = field(default_factory=Counter)
    server_errors: int = 0          # 5xx, or a connection that failed
    valid_refused: int = 0         # a valid request answered 4xx
    invalid_accepted: int = 0      # an invalid request answered 2xx (or anything but 4xx)
    wrong_answers: int = 0         # get/similar showing a stale version or a deleted id
    lost_writes: int = 0           # acknowledged and not there at the end
    resurrected: int = 0           # deleted (acknowledged) and there at the end
    stored_by_refused: int = 0     # ids only sent in requests answered 4xx, there at the end
    problems: list[str] = field(default_factory=list)

    def problem(self, kind: str, text: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.problems) < PROBLEMS_KEPT:
            self.problems.append(f"{kind}: {text}")

    @property
    def failures(self) -> int:
        return (self.server_errors + self.valid_refused + self.invalid_accepted + self.wrong_answers
                + self.lost_writes + self.resurrected + self.stored_by_refused)

    def figures(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)

        def pct(p: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2) if ordered else 0.0

        return {
            "in_flight": self.in_flight, "requests": self.requests,
            "seconds": round(self.seconds, 2),
            "requests_per_s": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "mean_ms": round(statistics.fmean(ordered), 2) if ordered else 0.0,
            "statuses": dict(sorted(self.statuses.items())),
            "operations": dict(sorted(self.operations.items())),
            "server_errors": self.server_errors, "valid_refused": self.valid_refused,
            "invalid_accepted": self.invalid_accepted, "wrong_answers": self.wrong_answers,
            "lost_writes": self.lost_writes, "resurrected": self.resurrected,
            "stored_by_refused": self.stored_by_refused, "problems": self.problems,
        }


class Worker:
    """One client thread: its own ids, and what the service acknowledged about them."""

    def __init__(self, number: int, http: httpx.Client, path: str, outcome: Outcome,
                 lock: threading.Lock, seed: int) -> None:
        self.name = f"w{number}"
        self.ids = [f"{self.name}-{i}" for i in range(IDS_PER_WORKER)]
        self.http, self.path, self.outcome, self.lock = http, path, outcome, lock
        self.rng = random.Random(seed * 1000 + number)
        self.version = 0
        self.live: dict[str, int] = {}      # id -> last acknowledged version
        self.deleted: set[str] = set()      # acknowledged deletes, not written since
        self.refused_ids: list[str] = []    # ids only ever sent in requests answered 4xx

    # -- one request ---------------------------------------------------------------------------

    def call(self, operation: str, method: str, suffix: str, **kwargs: Any) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = self.http.request(method, self.path + suffix, **kwargs)
        except httpx.HTTPError as exc:
            with self.lock:
                self.outcome.problem("server_errors", f"{operation}: {type(exc).__name__}: {exc}")
            return None
        elapsed = (time.perf_counter() - started) * 1000
        with self.lock:
            self.outcome.latencies_ms.append(elapsed)
            self.outcome.statuses[response.status_code] += 1
            self.outcome.operations[operation] += 1
            if response.status_code >= 500:
                self.outcome.problem("server_errors", f"{operation}: {response.status_code} {response.text[:200]}")
        return response

    def expect_ok(self, operation: str, response: httpx.Response | None) -> bool:
        if response is None or response.status_code >= 500:
            return False
        if response.status_code >= 400:
            with self.lock:
                self.outcome.problem("valid_refused", f"{operation}: {response.status_code} {response.text[:200]}")
            return False
        return True

    def wrong(self, text: str) -> None:
        with self.lock:
            self.outcome.problem("wrong_answers", f"{self.name}: {text}")

    # -- the mix -------------------------------------------------------------------------------

    def step(self) -> None:
        kind = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        if kind != "index" and not self.live:
            kind = "index"
        getattr(self, kind)()

    def index(self) -> None:
        chosen = self.rng.sample(self.ids, self.rng.randint(1, 4))
        self.version += 1
        documents = [{"id": i, "vec": vector(i, self.version), "worker": self.name,
                      "version": self.version} for i in chosen]
        response = self.call("index", "POST", "/documents", json={"documents": documents})
        if self.expect_ok("index", response):
            if response.json() != {"indexed": len(chosen)}:
                self.wrong(f"index answered {response.text}")
            for i in chosen:
                self.live[i] = self.version
                self.deleted.discard(i)

    def delete(self) -> None:
        chosen = self.rng.sample(self.ids, self.rng.randint(1, 3))
        response = self.call("delete", "POST", "/documents/delete", json={"ids": chosen})
        if self.expect_ok("delete", response):
            for i in chosen:
                if self.live.pop(i, None) is not None:
                    self.deleted.add(i)

    def get(self) -> None:
        chosen = self.rng.sample(self.ids, self.rng.randint(1, 5))
        response = self.call("get", "GET", "/documents",
                             params={"ids": chosen, "output_fields": ["version"]})
        if self.expect_ok("get", response):
            got = [(d["id"], d.get("version")) for d in response.json()]
            expected = [(i, self.live[i]) for i in chosen if i in self.live]
            if got != expected:
                self.wrong(f"get {chosen}: {got}, expected {expected}")

    def similar(self) -> None:
        target = self.rng.choice(sorted(self.live))
        response = self.call("similar", "POST", "/similar", json={
            "vectors": vector(target, self.live[target]), "limit": 5,
            "filter_expr": f'worker == "{self.name}"', "output_fields": ["version"]})
        if self.expect_ok("similar", response):
            for hit in response.json():
                if hit["id"] in self.deleted or self.live.get(hit["id"]) != hit.get("version"):
                    self.wrong(f"similar to {target}: hit {hit}, acknowledged "
                               f"{self.live.get(hit['id'], 'deleted')}")

    def invalid(self) -> None:
        """A request that must be refused with 4xx and store nothing."""
        fresh = f"x{self.name}-{self.version}-{self.rng.randrange(10**9)}"
        good = {"id": fresh, "vec": vector(fresh, 0), "worker": self.name, "version": 0}
        cases: list[tuple[str, dict[str, Any]]] = [
            # one bad document in a batch: the good one beside it must not be stored
            ("wrong_dim", {"json": {"documents": [good, {**good, "id": fresh + "b", "vec": [1.0, 2.0]}]}}),
            ("missing_field", {"json": {"documents": [good, {"id": fresh + "b", "vec": vector(fresh, 1),
                                                             "worker": self.name}]}}),
            ("bad_id", {"json": {"documents": [good, {**good, "id": 424242}]}}),
            ("not_json", {"content": b'{"documents": [', "headers": {"content-type": "application/json"}}),
        ]
        if self.live:  # upsert false with a stored id: a conflict, and the fresh one not stored
            stored = self.rng.choice(sorted(self.live))
            cases.append(("conflict", {"json": {"upsert": False, "documents": [
                good, {"id": stored, "vec": vector(stored, 0), "worker": self.name, "version": 0}]}}))
        name, kwargs = self.rng.choice(cases)
        self.refused_ids += [fresh, fresh + "b"]
        response = self.call(f"invalid_{name}", "POST", "/documents", **kwargs)
        if response is not None and not 400 <= response.status_code < 500:
            with self.lock:
                self.outcome.problem("invalid_accepted", f"{name}: {response.status_code} {response.text[:200]}")

    # -- the end -------------------------------------------------------------------------------

    def verify(self) -> None:
        """Every acknowledged write there at its version; deletes and refused ids absent."""
        response = self.http.get(self.path + "/documents",
                                 params={"ids": self.ids, "output_fields": ["version"]})
        stored = {d["id"]: d["version"] for d in response.json()}
        with self.lock:
            for i, version in self.live.items():
                if stored.get(i) != version:
                    self.outcome.problem("lost_writes", f"{i}: stored {stored.get(i)}, acknowledged {version}")
            for i in self.deleted:
                if i in stored:
                    self.outcome.problem("resurrected", f"{i} (version {stored[i]})")
        for start in range(0, len(self.refused_ids), 100):
            chunk = self.refused_ids[start:start + 100]
            found = self.http.get(self.path + "/documents", params={"ids": chunk}).json()
            with self.lock:
                for document in found:
                    self.outcome.problem("stored_by_refused", document["id"])


def run_load(base_url: str, collection: str, *, requests: int, in_flight: int,
             seed: int = 1) -> Outcome:
    """Create ``collection`` and send it ``requests`` requests, ``in_flight`` at a time.

    Args:
        base_url: the service, e.g. ``http://127.0.0.1:8000``.
        collection: a collection name of organisation ltlrt (created, and dropped first if it exists).
        requests: how many requests in all (the final checks not counted).
        in_flight: how many workers send at once, each waiting for its answer.
        seed: the mix's seed.

    Returns:
        The outcome: latencies, statuses and the counts of every kind of failure.
    """
    headers = {"Authorization": f"Bearer {TOKEN}"}
    path = f"/v1/ltlrt/collections/{collection}"
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as admin:
        admin.delete(path).raise_for_status()
        admin.put(path, json=SCHEMA).raise_for_status()
    outcome, lock = Outcome(in_flight=in_flight), threading.Lock()
    remaining = [requests]

    def take() -> bool:
        with lock:
            remaining[0] -= 1
            return remaining[0] >= 0

    clients = [httpx.Client(base_url=base_url, headers=headers, timeout=120) for _ in range(in_flight)]
    workers = [Worker(n, clients[n], path, outcome, lock, seed) for n in range(in_flight)]

    def work(worker: Worker) -> None:
        while take():
            worker.step()

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcome.seconds = time.perf_counter() - started
    outcome.requests = sum(outcome.operations.values())
    for worker in workers:
        worker.verify()
    for client in clients:
        client.close()
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1500, help="requests per run")
    parser.add_argument("--in-flight", default="1,4,16", help="comma-separated concurrency levels")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    from lookalike.config import Settings
    from lookalike.http.app import create_app
    from lookalike.http.background import serving

    rows = []
    with tempfile.TemporaryDirectory(prefix="lookalike-http-load-") as data_dir:
        app = create_app(settings=Settings(codops="ltlrt", data_dir=Path(data_dir)), environ=ENVIRON)
        with serving(app) as url:
            for level in [int(x) for x in args.in_flight.split(",")]:
                outcome = run_load(url, f"load_{level}", requests=args.requests, in_flight=level,
                                   seed=args.seed)
                rows.append(outcome.figures())
                print(f"in flight {level:>3}: {rows[-1]['requests_per_s']:>7} req/s  "
                      f"p50 {rows[-1]['p50_ms']:>7} ms  p99 {rows[-1]['p99_ms']:>8} ms  "
                      f"failures {outcome.failures}", flush=True)
    print()
    print("| in flight | requests | req/s | p50 ms | p99 ms | 5xx | wrong | lost | resurrected | stored by 4xx |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['in_flight']} | {r['requests']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p99_ms']} "
              f"| {r['server_errors']} | {r['wrong_answers']} | {r['lost_writes']} | {r['resurrected']} "
              f"| {r['stored_by_refused']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    target = args.out / f"http-{stamp}.json"
    target.write_text(json.dumps({"date": stamp, "mix": MIX, "dim": DIM, "runs": rows}, indent=2) + "\n")
    print(f"\nwrote {target}")


if __name__ == "__main__":
    main()
