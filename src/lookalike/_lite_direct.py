"""The embedded engine's hot calls, in process: search, read by id and write without the gRPC round trip.

pymilvus opens Milvus Lite 3.x by starting the engine in this process behind a gRPC server on
loopback, and sends every call through it: the request is packed into protobuf, crosses the
socket, is decoded by the engine's servicer into the same ``Collection.search`` / ``get`` calls
this module makes, and the result travels back the same way. At 10k rows that round trip is
~1.2 ms of a 1.6 ms search and ~0.9 ms of a 1.0 ms read of five vectors (bench/README.md); a
write is packed, sent and unpacked row by row into Python floats.

``LiteDirect`` calls the engine object that the gRPC server serves, so both paths see the same
data, locks and indexes; search, read by primary key, insert and upsert go this way, the rest
(collections, indexes, flush, count, delete) through pymilvus. Failures are turned
into the ``MilvusException`` the servicer would have sent, so lookalike's error translation is
the same on both paths. It is used only with the Milvus Lite versions it was tested against.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from pymilvus.exceptions import MilvusException

from ._lite_speedups import TESTED_VERSIONS

T = TypeVar("T")


class LiteDirect:
    """Search, get and write on one database of an open Milvus Lite engine, as pymilvus does them."""

    def __init__(self, db: Any, database: str) -> None:
        self._db = db
        self._database = database

    def search(
        self,
        collection_name: str,
        data: Sequence[Any],
        filter: str,  # noqa: A002 - MilvusClient's keyword
        limit: int,
        output_fields: list[str],
        search_params: dict[str, Any],
        anns_field: str,
    ) -> list[list[dict[str, Any]]]:
        """Like ``MilvusClient.search``: per query, hits ``{'id', 'distance', 'entity'}`` best first."""
        collection = self._collection(collection_name)
        hits = self._call(
            lambda: collection.search(
                [np.asarray(q, dtype=np.float32).tolist() for q in data],
                top_k=limit,
                metric_type=search_params.get("metric_type"),
                expr=filter or None,
                output_fields=output_fields,
                anns_field=anns_field,
                search_params=search_params.get("params") or {},
            )
        )
        decode = _json_decoder(collection)
        return [[{**hit, "entity": decode(hit["entity"])} for hit in per_query] for per_query in hits]

    def get(self, collection_name: str, ids: list[str], output_fields: list[str]) -> list[dict[str, Any]]:
        """Rows by primary key, as ``MilvusClient.get`` returns them; missing ids left out."""
        collection = self._collection(collection_name)
        decode = _json_decoder(collection)
        return [decode(row) for row in self._call(lambda: collection.get(ids, output_fields=output_fields))]

    def upsert(self, collection_name: str, data: list[dict[str, Any]]) -> None:
        """Like ``MilvusClient.upsert``."""
        collection = self._collection(collection_name)
        self._call(lambda: collection.upsert(_engine_rows(data)))

    def insert(self, collection_name: str, data: list[dict[str, Any]]) -> None:
        """Like ``MilvusClient.insert``."""
        collection = self._collection(collection_name)
        self._call(lambda: collection.insert(_engine_rows(data)))

    def _collection(self, name: str) -> Any:
        return self._call(lambda: self._db.get_collection(name, database_name=self._database))

    @staticmethod
    def _call(call: Callable[[], T]) -> T:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - re-raised as the gRPC path would raise it
            from milvus_lite.adapter.grpc.errors import to_status_kwargs

            status = to_status_kwargs(exc)
            raise MilvusException(status["code"], status["reason"], status["error_code"]) from exc


def _engine_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The engine validates vectors as lists of numbers: hand numpy vectors over as lists."""
    return [{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in row.items()} for row in rows]


def _json_decoder(collection: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The engine keeps JSON fields as text; pymilvus hands them out parsed, and so does this."""
    from milvus_lite import DataType

    names = [f.name for f in collection.schema.fields if f.dtype == DataType.JSON]

    def decode(row: dict[str, Any]) -> dict[str, Any]:
        for name in names:
            if isinstance(row.get(name), str):
                row[name] = json.loads(row[name])
        return row

    return decode


def open_direct(path: str, database: str) -> LiteDirect | None:
    """The in-process reads of the Milvus Lite engine that pymilvus started for ``path``, or None
    when that engine is not one this module was tested against (pymilvus's path is used then)."""
    try:
        import milvus_lite
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return None
    if getattr(milvus_lite, "__version__", "") not in TESTED_VERSIONS:
        return None
    entry = getattr(server_manager_instance, "_servers", {}).get(path)
    if entry is None:
        return None
    _server, db, _port = entry
    return LiteDirect(db, database)
