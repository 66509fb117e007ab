"""The segment pool's take-back against the pool as it was and against one source after another.

    python bench/results/segment-pool-20261205/ab.py 7    # 7 flushed chunks; data in /tmp/segs

The earlier pool (every source but the first handed to the pool, the caller waiting for all) is
re-implemented here for this comparison only. README.md in this folder says what was run.
"""

from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import wait
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/

import data  # noqa: E402

from lookalike import Client  # noqa: E402
from lookalike.engines.lite.patches import parallel as lite_parallel  # noqa: E402
from lookalike.engines.lite.patches import search as lite_search  # noqa: E402


def main() -> None:
    ds = data.load(100_000)
    client = Client(codops="segs", password="x", data_dir="/tmp/segs")
    name = "c"
    if name not in client.list_collections():
        col = client.create_collection(name, dim=768, indexes={"vec": {
            "index_type": "HNSW", "metric_type": "IP", "M": 32, "efConstruction": 128}})
        for part in np.array_split(np.arange(len(ds.vectors)), int(sys.argv[1])):
            col.index(({"id": ds.ids[i], "vec": ds.vectors[i]} for i in part), flush=True, progress=False)
        client.wait_for_index(name)
    col = client.collection(name)
    print("segments", col.engine._reading(name, "x", lambda c: [s.num_rows for s in c._read_snapshot()[0]]))  # noqa: SLF001

    taking_back = lite_search.search_sources
    one_after_another = taking_back.__wrapped__

    def waiting(search, sources):
        if len(sources) < 2:
            return one_after_another(search, sources)
        futures = [lite_parallel._executor().submit(search, *source) for source in sources[1:]]  # noqa: SLF001
        try:
            first = search(*sources[0])
        finally:
            wait(futures)
        return [first, *(future.result() for future in futures)]

    steps = {"one after another": one_after_another, "pool, caller waits (before)": waiting,
             "pool, caller takes back (now)": taking_back}
    for ef in (64, 256):
        lat: dict[str, list[float]] = {k: [] for k in steps}
        answers: dict[str, list[list[str]]] = {k: [] for k in steps}
        order = np.random.default_rng(0)
        for q in ds.queries[:300]:
            for label in order.permutation(list(steps)).tolist():
                lite_search.search_sources = steps[label]
                began = time.perf_counter()
                hits = col.similar(vectors=q, limit=10, search_params={"ef": ef})
                lat[label].append((time.perf_counter() - began) * 1e3)
                answers[label].append([h["id"] for h in hits])
        lite_search.search_sources = taking_back
        same = all(a == answers["one after another"] for a in answers.values())
        print(f"ef {ef}: " + ", ".join(f"{k} p50 {statistics.median(v):.2f} ms" for k, v in lat.items())
              + f"; same answers {same}")


if __name__ == "__main__":
    main()
