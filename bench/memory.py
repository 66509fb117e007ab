"""Where lookalike's memory goes while it ingests: resident memory and Arrow's allocations at each
step of an ingest into the embedded engine, and the peak, on the benchmark's synthetic data.

    python bench/memory.py --size 100000        # prints the steps; writes results/memory-<size>.json

Steps are marked by wrapping the engine's flush, its segment load and its index build; a thread
samples resident memory every 0.1 s. Arrow's figures are its default pool's (the engine's tables,
the memtable, the flush); FAISS graphs and Python objects are outside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import data  # noqa: E402
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402


class Recorder:
    """Resident memory sampled in the background, and named steps with Arrow's counters."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.started = time.perf_counter()
        self.samples: list[tuple[float, float]] = []
        self.steps: list[dict] = []
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append((time.perf_counter() - self.started, self.rss_mb()))

    def rss_mb(self) -> float:
        return self.process.memory_info().rss / 2**20

    def step(self, name: str) -> None:
        pool = pa.default_memory_pool()
        row = {"t_s": round(time.perf_counter() - self.started, 2), "step": name, "rss_mb": round(self.rss_mb()),
               "arrow_mb": round(pa.total_allocated_bytes() / 2**20), "arrow_max_mb": round(pool.max_memory() / 2**20)}
        self.steps.append(row)
        print(f"{row['t_s']:7.1f} s  {name:32s} RSS {row['rss_mb']:6,} MB   Arrow {row['arrow_mb']:5,} MB "
              f"(max {row['arrow_max_mb']:,})", flush=True)

    def stop(self) -> dict:
        self._stop.set()
        peak_t, peak = max(self.samples, key=lambda s: s[1])
        return {"peak_rss_mb": round(peak), "peak_at_s": round(peak_t, 1), "steps": self.steps}


def mark_engine_steps(recorder: Recorder) -> None:
    """Record a step before and after the engine's flush, segment load and index build."""
    from milvus_lite.engine.collection import Collection
    from milvus_lite.storage.segment import Segment

    from lookalike.engines.lite import patches as lite_patches

    lite_patches.apply()  # patch first, so the marks wrap the methods that run
    for owner, name in ((Collection, "_trigger_flush"), (Segment, "load"), (Segment, "build_or_load_index")):
        original = getattr(owner, name)

        def marked(*args, _original=original, _name=name, **kwargs):
            recorder.step(f"{_name} begins")
            result = _original(*args, **kwargs)
            recorder.step(f"{_name} ends")
            return result

        # Segment.load is a classmethod called on the class: the bound original needs no cls.
        setattr(owner, name, marked)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    recorder = Recorder()
    ds = data.load(args.size)
    recorder.step("dataset loaded")
    from systems import Lookalike

    mark_engine_steps(recorder)
    with tempfile.TemporaryDirectory(prefix="lookalike-memory-") as tmp:
        system = Lookalike(Path(tmp), ds.vectors.shape[1], len(ds.vectors))
        recorder.step("lookalike imported")
        system.ingest(ds.ids, ds.vectors, ds.languages)
        recorder.step("ingested and flushed")
        system.wait_indexed()
        recorder.step("index built")
        found = system.search(ds.queries[:100], False, 64)
        recorder.step("searched")
        system.close()
    result = recorder.stop()
    result.update(size=args.size, vector_mb=round(ds.vectors.nbytes / 2**20),
                  recall=round(data.recall([[int(i[4:]) for i in ids] for ids in found], ds.truth[:100]), 3),
                  date=time.strftime("%Y-%m-%d %H:%M:%S"))
    print(f"peak RSS {result['peak_rss_mb']:,} MB at {result['peak_at_s']} s; vectors {result['vector_mb']:,} MB; "
          f"recall@10 {result['recall']}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"memory-{args.size}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
