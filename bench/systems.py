"""The systems under test, one small adapter each, all with the same five operations.

Each adapter imports its own package lazily, so a worker process needs only the packages of
the one system it runs (the peers live in their own virtual environments).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from data import FILTER_EXPR, K

HNSW = {"M": 32, "efConstruction": 128}
# BENCH_EF_SWEEP="16,...,1024" widens it where recall 0.95 needs a larger ef (1M rows).
EF_SWEEP = [int(ef) for ef in os.environ.get("BENCH_EF_SWEEP", "16,32,64,128,256").split(",")]
BATCH = 2_000  # rows per write call


class System:
    """A vector store under test: ingest, wait for its index, search, read vectors back."""

    name = ""
    param_name: str | None = None  # the search-time knob of the sweep (ef, nprobe)
    default_param: int | None = None
    sweep: list[int] = []
    venv = ".venv"  # the virtual environment whose python runs this system
    setup_s = 0.0  # time spent inside ingest() starting a server: not ingest time
    env: dict[str, str] = {}  # environment of the worker process (read by engines at import)
    reuses: str | None = None  # a system whose stored data this one opens instead of ingesting
    query_share = 1.0  # share of the standard query counts (for systems at ~0.1 s a query)

    def __init__(self, workdir: Path, dim: int, n: int) -> None:
        self.workdir = workdir
        self.dim = dim
        self.n = n
        self.info: dict[str, Any] = {}  # versions and settings, reported with the results

    def ingest(self, ids: list[str], vectors: np.ndarray, languages: np.ndarray) -> None:
        raise NotImplementedError

    def reopen(self) -> None:
        """Open the data that the system named by ``reuses`` stored in ``workdir``."""
        raise NotImplementedError

    def wait_indexed(self) -> None:
        """Block until every row is searchable through the built ANN index."""

    def search(self, queries: np.ndarray, fr_only: bool, param: int | None) -> list[list[str]]:
        """Top-K ids for each query, in one call (nq >= 1)."""
        raise NotImplementedError

    def vectors(self, ids: list[str]) -> np.ndarray:
        raise NotImplementedError

    def similar_to_ids(self, ids: list[str], param: int | None) -> list[str]:
        """What lookalike's retrieve_similar(ids=...) does: the normalised mean of their vectors."""
        mean = self.vectors(ids).mean(axis=0)
        return self.search((mean / np.linalg.norm(mean))[None, :], False, param)[0]

    def close(self) -> None:
        """Release the store (and stop any server)."""


# ── physical references ─────────────────────────────────────────────────────


class NumpyExact(System):
    name = "numpy exact"

    def ingest(self, ids, vectors, languages):
        self.ids = np.asarray(ids)
        self.base = np.ascontiguousarray(vectors)
        self.fr_rows = np.flatnonzero(languages == "fr")
        self.row = {pk: i for i, pk in enumerate(ids)}
        self.info["numpy"] = np.__version__

    def search(self, queries, fr_only, param):
        base = self.base[self.fr_rows] if fr_only else self.base
        scores = queries @ base.T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        rows = np.take_along_axis(top, order, axis=1)
        if fr_only:
            rows = self.fr_rows[rows]
        return [self.ids[r].tolist() for r in rows]

    def vectors(self, ids):
        return self.base[[self.row[i] for i in ids]]


class FaissHnsw(System):
    name = "FAISS HNSW"
    param_name, default_param, sweep = "ef", 64, EF_SWEEP
    # The same faiss-cpu 1.15.1 that milvus-lite brings into .venv (.venv-bench would add nothing).
    venv = ".venv"

    def ingest(self, ids, vectors, languages):
        import faiss

        self.faiss = faiss
        self.ids = np.asarray(ids)
        self.index = faiss.IndexHNSWFlat(self.dim, HNSW["M"], faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = HNSW["efConstruction"]
        self.index.add(np.ascontiguousarray(vectors))
        # FAISS has no metadata: the filter is a bitmap over rows, like Milvus builds per segment.
        self.fr_bits = np.packbits(languages == "fr", bitorder="little")
        self.base = vectors
        self.row = {pk: i for i, pk in enumerate(ids)}
        faiss.write_index(self.index, str(self.workdir / "hnsw.faiss"))
        self.info["faiss"] = faiss.__version__

    def search(self, queries, fr_only, param):
        faiss = self.faiss
        sel = faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(self.fr_bits)) if fr_only else None
        sp = faiss.SearchParametersHNSW(sel=sel, efSearch=param) if sel else faiss.SearchParametersHNSW(efSearch=param)
        _, rows = self.index.search(np.ascontiguousarray(queries), K, params=sp)
        return [self.ids[r[r >= 0]].tolist() for r in rows]

    def vectors(self, ids):
        return self.base[[self.row[i] for i in ids]]


# ── Milvus: Lite 3.x through pymilvus, lookalike, Lite 2.5, a local server ─────


def _milvus_schema(client: Any, dim: int) -> Any:
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("language", DataType.VARCHAR, max_length=16)
    return schema


def _lite_collections() -> list[Any]:
    """The in-process Milvus Lite 3.x collections opened through pymilvus (its server runs here)."""
    from milvus_lite.server_manager import server_manager_instance

    return [
        col
        for _server, db, _port in list(server_manager_instance._servers.values())
        for col in list(db._collections.values())
    ]


def wait_lite_indexed() -> None:
    """Milvus Lite 3.x builds segment indexes in a background worker after a flush and offers no
    call to wait for them (describe_index says "finished" early): drain that worker."""
    for _ in range(2):  # an index build may schedule a compaction, which schedules a build
        for col in _lite_collections():
            col._wait_for_bg()


class PymilvusLite(System):
    """Raw pymilvus on Milvus Lite 3.x: lookalike's engine without lookalike."""

    name = "pymilvus + Lite 3.2.2 (patched)"
    param_name, default_param, sweep = "ef", 64, EF_SWEEP
    patched = True
    collection = "bench"
    scalar_index = "INVERTED"  # the only scalar index Milvus Lite 3.x has

    def open(self) -> Any:
        import milvus_lite
        import pymilvus
        from pymilvus import MilvusClient

        if self.patched:
            from lookalike.engines.lite import patches as lite_patches

            self.info["speedups"] = lite_patches.apply()
        self.info.update(pymilvus=pymilvus.__version__, milvus_lite=milvus_lite.__version__)
        return MilvusClient(str(self.workdir / "milvus.db"))

    def ingest(self, ids, vectors, languages):
        self.client = c = self.open()
        index = c.prepare_index_params()
        index.add_index("vec", index_type="HNSW", metric_type="IP", params=HNSW)
        index.add_index("language", index_type=self.scalar_index)
        c.create_collection(self.collection, schema=_milvus_schema(c, self.dim), index_params=index)
        for start in range(0, len(ids), BATCH):
            stop = start + BATCH
            c.insert(self.collection, [
                {"id": i, "vec": v, "language": str(lang)}
                for i, v, lang in zip(ids[start:stop], vectors[start:stop], languages[start:stop], strict=True)
            ])
        c.flush(self.collection)

    def reopen(self):
        self.client = self.open()
        self.client.load_collection(self.collection)

    def wait_indexed(self):
        wait_lite_indexed()

    def search(self, queries, fr_only, param):
        hits = self.client.search(
            self.collection, data=list(queries), limit=K, filter=FILTER_EXPR if fr_only else "",
            output_fields=["id"], search_params={"params": {"ef": param}},
        )
        return [[h["id"] for h in per_query] for per_query in hits]

    def vectors(self, ids):
        rows = {r["id"]: r["vec"] for r in self.client.get(self.collection, ids=ids, output_fields=["vec"])}
        return np.asarray([rows[i] for i in ids], dtype=np.float32)

    def close(self):
        self.client.close()


class PymilvusLiteUnpatched(PymilvusLite):
    name = "pymilvus + Lite 3.2.2 (unpatched)"
    patched = False
    # Same data and HNSW graphs as the patched run, so the search paths alone are compared.
    reuses = "pymilvus-lite"
    sweep = [16, 64, 256]  # each point costs ~70 ms a query at 100k
    query_share = 0.5


class PymilvusLiteEngineBudgets(PymilvusLite):
    """Lite 3.2.2 with the engine's own write budgets (a 128 MB memtable, a 256 MB WAL) instead of
    lookalike's (384 MiB, 1 GiB): segments of ~44k rows at 768-d, so three HNSW graphs per search
    at 100k rows instead of one."""

    name = "pymilvus + Lite 3.2.2 (patched, engine's write budgets)"
    env = {"MILVUS_LITE_MEMTABLE_MEMORY_LIMIT_BYTES": str(128 << 20),
           "MILVUS_LITE_WAL_SIZE_LIMIT_BYTES": str(256 << 20)}


class LiteEngineApi(System):
    """Milvus Lite 3.2.2's own in-process API (``milvus_lite.MilvusLite``), with lookalike's engine
    patches and budgets: the engine with neither pymilvus nor lookalike, the floor of their overhead."""

    name = "Lite 3.2.2 in-process API (patched)"
    param_name, default_param, sweep = "ef", 64, EF_SWEEP

    def ingest(self, ids, vectors, languages):
        import milvus_lite
        from milvus_lite import CollectionSchema, DataType, FieldSchema, MilvusLite

        from lookalike.engines.lite import patches as lite_patches

        self.info.update(milvus_lite=milvus_lite.__version__, speedups=lite_patches.apply())
        self.db = MilvusLite(str(self.workdir / "engine"))
        schema = CollectionSchema(fields=[
            FieldSchema(name="id", dtype=DataType.VARCHAR, is_primary=True, max_length=64),
            FieldSchema(name="vec", dtype=DataType.FLOAT_VECTOR, dim=self.dim),
            FieldSchema(name="language", dtype=DataType.VARCHAR, max_length=16),
        ])
        self.col = col = self.db.create_collection("bench", schema)
        col.create_index("vec", {"index_type": "HNSW", "metric_type": "IP", "params": HNSW})
        col.create_index("language", {"index_type": "INVERTED"})
        col.load()
        for start in range(0, len(ids), BATCH):
            stop = start + BATCH
            col.insert([
                {"id": i, "vec": v.tolist(), "language": str(lang)}
                for i, v, lang in zip(ids[start:stop], vectors[start:stop], languages[start:stop], strict=True)
            ])
        col.flush()

    def wait_indexed(self):
        self.col._wait_for_bg()

    def search(self, queries, fr_only, param):
        hits = self.col.search([q.tolist() for q in queries], top_k=K, metric_type="IP",
                               expr=FILTER_EXPR if fr_only else None, output_fields=["id"],
                               anns_field="vec", search_params={"ef": param})
        return [[h["id"] for h in per_query] for per_query in hits]

    def vectors(self, ids):
        rows = {r["id"]: r["vec"] for r in self.col.get(list(ids), output_fields=["vec"])}
        return np.asarray([rows[i] for i in ids], dtype=np.float32)

    def close(self):
        self.db.close()


class Lookalike(System):
    """lookalike's public API on its default (embedded) engine."""

    name = "lookalike"
    param_name, default_param, sweep = "ef", 64, EF_SWEEP

    def ingest(self, ids, vectors, languages):
        import milvus_lite
        from pymilvus import DataType, FieldSchema

        import lookalike

        self.client = lookalike.Client(codops="bench", password="bench", uri="", data_dir=str(self.workdir))
        self.col = self.client.create_collection(
            "bench",
            fields=[FieldSchema(name="language", dtype=DataType.VARCHAR, max_length=16)],
            indexes={"vec": {"metric_type": "IP", "index_type": "HNSW", **HNSW}, "language": None},
            dim=self.dim,
        )
        docs = ({"id": i, "vec": v, "language": str(lang)} for i, v, lang in zip(ids, vectors, languages, strict=True))
        self.col.index(docs, progress=False)
        self.info.update(lookalike=getattr(lookalike, "__version__", "?"), milvus_lite=milvus_lite.__version__)

    def wait_indexed(self):
        self.col.wait_for_index()

    def search(self, queries, fr_only, param):
        expr = FILTER_EXPR if fr_only else None
        if len(queries) == 1:
            hits = [self.col.similar(vectors=queries[0], filter_expr=expr, limit=K, search_params={"ef": param})]
        else:
            hits = self.col.similar_batch(queries, filter_expr=expr, limit=K, search_params={"ef": param})
        return [[h["id"] for h in per_query] for per_query in hits]

    def similar_to_ids(self, ids, param):
        return [h["id"] for h in self.col.similar(ids=ids, limit=K, search_params={"ef": param})]

    def close(self):
        self.client.close()


class Lite25(System):
    """Milvus Lite 2.5.1 (C++ engine) with pymilvus 2.5: FLAT and IVF_FLAT only."""

    name = "Lite 2.5.1 IVF_FLAT"
    param_name, default_param = "nprobe", 32
    venv = ".venv-lite25"
    index_type = "IVF_FLAT"

    def __init__(self, workdir, dim, n):
        super().__init__(workdir, dim, n)
        self.nlist = max(16, int(4 * np.sqrt(n)))  # ~4 sqrt(n) lists: the usual starting point
        self.sweep = [p for p in (1, 4, 8, 16, 32, 64, 128) if p <= self.nlist]

    def ingest(self, ids, vectors, languages):
        import pymilvus
        from pymilvus import MilvusClient

        self.info.update(pymilvus=pymilvus.__version__, nlist=self.nlist)
        try:
            from importlib.metadata import version

            self.info["milvus_lite"] = version("milvus-lite")
        except Exception:  # noqa: BLE001 - version is informative only
            pass
        self.client = c = MilvusClient(str(self.workdir / "milvus25.db"))
        c.create_collection("bench", schema=_milvus_schema(c, self.dim))
        # Rows go in first and the index is built once over them: Lite 2.5 stalls on large
        # inserts into an indexed collection (engine-facts), and Milvus builds per sealed segment.
        for start in range(0, len(ids), BATCH):
            stop = start + BATCH
            c.insert("bench", [
                {"id": i, "vec": v.tolist(), "language": str(lang)}
                for i, v, lang in zip(ids[start:stop], vectors[start:stop], languages[start:stop], strict=True)
            ])
        c.flush("bench")
        index = c.prepare_index_params()
        params = {"nlist": self.nlist} if self.index_type == "IVF_FLAT" else {}
        index.add_index("vec", index_type=self.index_type, metric_type="IP", params=params)
        c.create_index("bench", index)

    def wait_indexed(self):
        c = self.client
        deadline = time.time() + 600
        while time.time() < deadline:
            info = c.describe_index("bench", "vec")
            if info.get("state") in ("Finished", None) and info.get("pending_index_rows", 0) == 0:
                break
            time.sleep(0.5)
        c.load_collection("bench")

    def search(self, queries, fr_only, param):
        params = {"metric_type": "IP", "params": {"nprobe": param} if param else {}}
        hits = self.client.search(
            "bench", data=[q.tolist() for q in queries], limit=K, filter=FILTER_EXPR if fr_only else "",
            output_fields=["id"], search_params=params,
        )
        return [[h["id"] for h in per_query] for per_query in hits]

    def vectors(self, ids):
        rows = {r["id"]: r["vec"] for r in self.client.get("bench", ids=ids, output_fields=["vec"])}
        return np.asarray([rows[i] for i in ids], dtype=np.float32)

    def close(self):
        self.client.close()


class Lite25Flat(Lite25):
    name = "Lite 2.5.1 FLAT"
    param_name, default_param = None, None
    index_type = "FLAT"

    def __init__(self, workdir, dim, n):
        super().__init__(workdir, dim, n)
        self.sweep = []


class MilvusServer235(PymilvusLite):
    """A local Milvus 2.3.5 standalone (the PyPI wheel), started by lookalike's launcher."""

    name = "Milvus 2.3.5 server"
    patched = False
    scalar_index = "Trie"  # 2.3.5 rejects INVERTED

    def open(self):
        import pymilvus
        from pymilvus import MilvusClient

        from lookalike.ops.milvus_server import MilvusServer

        self.server = MilvusServer(data_dir=self.workdir / "server", die_with_parent=True).start()
        self.setup_s = self.server.start_seconds or 0.0
        self.info.update(pymilvus=pymilvus.__version__, server="2.3.5", start_s=round(self.setup_s, 1))
        return MilvusClient(self.server.uri, token=self.server.root_token.reveal())

    def ingest(self, ids, vectors, languages):
        super().ingest(ids, vectors, languages)
        self.client.load_collection(self.collection)

    def wait_indexed(self):
        c = self.client
        deadline = time.time() + 900
        while time.time() < deadline:
            info = c.describe_index(self.collection, "vec")
            if info.get("indexed_rows", 0) >= self.n and info.get("pending_index_rows", 0) == 0:
                break
            time.sleep(0.5)
        c.refresh_load(self.collection)
        c.load_collection(self.collection)

    def search(self, queries, fr_only, param):
        hits = self.client.search(
            self.collection, data=list(queries), limit=K, filter=FILTER_EXPR if fr_only else "",
            output_fields=["id"], search_params={"params": {"ef": param}}, consistency_level="Bounded",
        )
        return [[h["id"] for h in per_query] for per_query in hits]

    def close(self):
        super().close()
        self.server.stop()


# ── peers ───────────────────────────────────────────────────────────────────


class Chroma(System):
    name = "Chroma"
    param_name, default_param, sweep = "ef", 64, [64]  # Chroma ignores a changed search ef
    venv = ".venv-bench"

    def ingest(self, ids, vectors, languages):
        import chromadb

        self.info["chromadb"] = chromadb.__version__
        self.client = chromadb.PersistentClient(path=str(self.workdir / "chroma"))
        self.col = self.client.create_collection(
            "bench",
            metadata={"hnsw:space": "ip", "hnsw:M": HNSW["M"], "hnsw:construction_ef": HNSW["efConstruction"],
                      "hnsw:search_ef": self.default_param},
        )
        step = min(BATCH, self.client.get_max_batch_size())
        for start in range(0, len(ids), step):
            stop = start + step
            self.col.add(ids=ids[start:stop], embeddings=vectors[start:stop],
                         metadatas=[{"language": str(lang)} for lang in languages[start:stop]])

    def search(self, queries, fr_only, param):
        res = self.col.query(query_embeddings=queries, n_results=K, where={"language": "fr"} if fr_only else None,
                             include=[])
        return res["ids"]

    def vectors(self, ids):
        got = self.col.get(ids=ids, include=["embeddings"])
        rows = dict(zip(got["ids"], got["embeddings"], strict=True))
        return np.asarray([rows[i] for i in ids], dtype=np.float32)


class QdrantLocal(System):
    name = "Qdrant local"
    venv = ".venv-bench"
    query_share = 0.25  # brute force in Python: ~30 ms a query, ~200 ms with the filter

    def ingest(self, ids, vectors, languages):
        import qdrant_client
        from qdrant_client import models

        self.models = models
        self.info["qdrant_client"] = getattr(qdrant_client, "__version__", "?")
        self.client = qdrant_client.QdrantClient(path=str(self.workdir / "qdrant"))
        self.client.create_collection(
            "bench", vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.DOT)
        )
        self.point = {pk: i for i, pk in enumerate(ids)}
        self.ids = ids
        self.client.upload_points("bench", [
            models.PointStruct(id=i, vector=vectors[i].tolist(), payload={"language": str(languages[i])})
            for i in range(len(ids))
        ], batch_size=512)

    def search(self, queries, fr_only, param):
        m = self.models
        flt = m.Filter(must=[m.FieldCondition(key="language", match=m.MatchValue(value="fr"))]) if fr_only else None
        out = []
        for q in queries:
            res = self.client.query_points("bench", query=q.tolist(), limit=K, query_filter=flt).points
            out.append([self.ids[p.id] for p in res])
        return out

    def vectors(self, ids):
        got = self.client.retrieve("bench", ids=[self.point[i] for i in ids], with_vectors=True)
        rows = {self.ids[p.id]: p.vector for p in got}
        return np.asarray([rows[i] for i in ids], dtype=np.float32)

    def close(self):
        self.client.close()


class LanceHnsw(System):
    name = "LanceDB IVF_HNSW_SQ"
    param_name, default_param, sweep = "ef", 64, EF_SWEEP
    venv = ".venv-bench"

    def ingest(self, ids, vectors, languages):
        import lancedb
        import pyarrow as pa

        self.info["lancedb"] = lancedb.__version__
        db = lancedb.connect(str(self.workdir / "lance"))
        vec_type = pa.list_(pa.float32(), self.dim)
        table = pa.table({
            "id": pa.array(ids),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.dim).cast(vec_type),
            "language": pa.array([str(x) for x in languages]),
        })
        self.table = db.create_table("bench", table)
        partitions = max(1, self.n // 50_000)
        self.table.create_index(metric="dot", index_type="IVF_HNSW_SQ", num_partitions=partitions,
                                m=HNSW["M"], ef_construction=HNSW["efConstruction"])
        self.table.create_scalar_index("language", index_type="BITMAP")
        self.info["num_partitions"] = partitions

    def search(self, queries, fr_only, param):
        out = []
        for q in queries:
            query = self.table.search(q).limit(K).ef(param).select(["id"])
            if fr_only:
                query = query.where("language = 'fr'", prefilter=True)
            out.append(query.to_arrow()["id"].to_pylist())
        return out

    def vectors(self, ids):
        quoted = ", ".join(f"'{i}'" for i in ids)
        got = self.table.search().where(f"id IN ({quoted})").select(["id", "vector"]).limit(len(ids)).to_arrow()
        rows = dict(zip(got["id"].to_pylist(), got["vector"].to_pylist(), strict=True))
        return np.asarray([rows[i] for i in ids], dtype=np.float32)


SYSTEMS: dict[str, type[System]] = {
    "lookalike": Lookalike,
    "pymilvus-lite": PymilvusLite,
    "pymilvus-lite-unpatched": PymilvusLiteUnpatched,
    "pymilvus-lite-engine-budgets": PymilvusLiteEngineBudgets,
    "lite-api": LiteEngineApi,
    "lite25-ivf": Lite25,
    "lite25-flat": Lite25Flat,
    "milvus-server": MilvusServer235,
    "faiss-hnsw": FaissHnsw,
    "numpy": NumpyExact,
    "chroma": Chroma,
    "qdrant": QdrantLocal,
    "lancedb": LanceHnsw,
}


def disk_bytes(path: Path) -> int:
    """Bytes under *path* (the server's unpacked binaries excluded: they are not data)."""
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d not in ("bin", "lib")]
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total
