"""The Milvus engine under the facade: open it (embedded Milvus Lite or a server) and translate
its errors into lookalike's.

This is the only module that knows which engine runs; everything above it asks ``Engine``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from ..config import Settings
from ..errors import EngineUnavailableError, InvalidInputError, LookalikeError
from .errors import translate_engine_error
from .lite.direct import LiteDirect, open_direct
from .lite.patches import apply as apply_lite_speedups

log = logging.getLogger(__name__)
T = TypeVar("T")


class _QuietWhileTranslating(logging.Filter):
    """Drops pymilvus's own error log (a traceback per failed call) for failures that lookalike
    turns into an exception of its own: the caller sees one clear error, not both."""

    depth = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.depth, "value", 0)


_quiet = _QuietWhileTranslating()
for _name in ("pymilvus.decorators", "pymilvus.client.iterator.query_iterator"):
    logging.getLogger(_name).addFilter(_quiet)

# Deleted rows stay visible to Session reads on a 2.3 server for 0.2-0.5 s (measured).
STRONG_AFTER_DELETE_SECONDS = 2.0

# Milvus Lite keeps its data in a directory that pymilvus opens from a URI ending in ".db".
LITE_FILE = "milvus.db"

_NUMERIC = {DataType.INT8, DataType.INT16, DataType.INT32, DataType.INT64, DataType.FLOAT, DataType.DOUBLE}


def database_name(codops: str) -> str:
    """The Milvus database that holds one organisation's collections."""
    return f"org_{codops}"


@dataclass
class Engine:
    """An open connection to one organisation's database, and what differs between engines."""

    milvus: MilvusClient
    settings: Settings
    kind: str  # "lite" or "server"
    location: str  # a path or a URI, for messages
    lite_path: str | None = None  # the embedded engine's file URI
    local: LiteDirect | None = None  # the embedded engine's in-process search, get and write
    # collection -> until when its reads must be Strong (see read_options)
    _strong_until: dict[str, float] = field(default_factory=dict)

    def read_options(self, collection: str) -> dict[str, str]:
        """Options for every search and query of ``collection``.

        A server's "Session" level lets a client read its own inserts and upserts at once without
        paying for "Strong" on every read (a Strong read waits for a time tick: ~0.2 s on a 2.3
        server). A delete does not advance the session's timestamp on Milvus 2.3, so reads stay
        Strong for a moment after one. Milvus Lite 3.x has no consistency levels and reads every
        write.
        """
        if self.kind == "lite":
            return {}
        strong = self._strong_until.get(collection, 0.0) > time.monotonic()
        return {"consistency_level": "Strong" if strong else "Session"}

    def read_strongly(self, collection: str, seconds: float = STRONG_AFTER_DELETE_SECONDS) -> None:
        """Make the next ``seconds`` of reads of ``collection`` Strong (after a delete)."""
        if self.kind != "lite":
            self._strong_until[collection] = time.monotonic() + seconds

    def default_scalar_index(self, dtype: DataType) -> str:
        """The scalar index ``None`` stands for: Lite knows only INVERTED; a 2.3 server rejects it."""
        if self.kind == "lite":
            return "INVERTED"
        return "STL_SORT" if dtype in _NUMERIC else "Trie"

    @contextlib.contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Run an engine call, raising lookalike errors (never a pymilvus or grpc one)."""
        _quiet.depth.value = getattr(_quiet.depth, "value", 0) + 1
        try:
            yield
        except LookalikeError:
            raise
        except Exception as exc:  # noqa: BLE001 - every engine failure is translated here
            raise translate(exc, action, self.settings, self.location) from None
        finally:
            _quiet.depth.value -= 1

    def read(self, action: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run an idempotent read; while the engine is unavailable, retry with backoff for at
        most ``settings.retry_seconds``, so a server restart does not need a client restart."""
        deadline = time.monotonic() + self.settings.retry_seconds
        delay = 0.2
        while True:
            try:
                with self.errors(action):
                    return call(*args, **kwargs)
            except EngineUnavailableError:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("Milvus at %s is unavailable (%s); retrying in %.1f s", self.location, action, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                if "consistency_level" in kwargs:
                    # A restarted 2.3 server's first Session read can miss unflushed rows.
                    kwargs["consistency_level"] = "Strong"

    def search(self, collection: str, action: str, **query: Any) -> list[list[Any]]:
        """``MilvusClient.search`` with the keywords ``data, filter, limit, output_fields,
        search_params, anns_field``; in process on the embedded engine."""
        if self.local is not None:
            return self.read(action, self.local.search, collection, **query)
        return self.read(action, self.milvus.search, collection, **query, **self.read_options(collection))

    def get(self, collection: str, action: str, ids: list[str], output_fields: list[str], ids_filter: str) -> list[Any]:
        """Rows by primary key (missing ones left out). A server is sent ``ids_filter``, the same
        selection as an expression whose literals the caller has escaped."""
        if self.local is not None:
            return self.read(action, self.local.get, collection, ids, output_fields)
        return self.read(action, self.milvus.query, collection, filter=ids_filter, output_fields=output_fields,
                         **self.read_options(collection))

    def write(self, collection: str, action: str, rows: list[dict[str, Any]], upsert: bool) -> None:
        """``MilvusClient.upsert`` or ``insert``; in process on the embedded engine."""
        target = self.local if self.local is not None else self.milvus
        with self.errors(action):
            (target.upsert if upsert else target.insert)(collection, data=rows)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.milvus.close()
        if self.lite_path is not None:
            _release_lite(self.lite_path)
            self.lite_path = None


def open_engine(settings: Settings) -> Engine:
    """Connect to the organisation's database, creating it on the embedded engine."""
    if settings.embedded:
        return _open_lite(settings)
    return _open_server(settings)


# Milvus Lite runs one in-process server per data directory, shared by every client of it in the
# process; the last client to close stops it, so its files are complete and free for others.
_lite_clients: dict[str, int] = {}
_lite_clients_lock = threading.Lock()


def _release_lite(path: str) -> None:
    with _lite_clients_lock:
        _lite_clients[path] -= 1
        if _lite_clients[path]:
            return
        del _lite_clients[path]
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(path)


def _open_lite(settings: Settings) -> Engine:
    data_dir = settings.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineUnavailableError(f"cannot create the data directory {data_dir}: {exc.strerror}") from None
    path = os.path.abspath(data_dir / LITE_FILE)
    db = database_name(settings.codops)
    # Milvus Lite 3.2.2 spends ~85% of a search in Python loops over every row: patch them.
    apply_lite_speedups()
    try:
        with _lite_clients_lock:  # no close may stop the server while this client opens it
            root = MilvusClient(path)
            try:
                if db not in root.list_databases():
                    root.create_database(db)
            finally:
                root.close()
            milvus = MilvusClient(path, db_name=db)
            _lite_clients[path] = _lite_clients.get(path, 0) + 1
    except Exception as exc:  # noqa: BLE001
        if "Open local milvus failed" in str(exc):
            raise EngineUnavailableError(
                f"cannot open the embedded Milvus data directory {data_dir}: another process "
                "probably holds it (one process at a time may open it). Run one serving process "
                "(e.g. `lookalike serve`) and send it requests, use another LOOKALIKE_DATA_DIR, "
                "or point LOOKALIKE_MILVUS_URI at a Milvus server."
            ) from None
        raise translate(exc, "open the embedded engine", settings, str(data_dir)) from None
    return Engine(milvus, settings, "lite", str(data_dir), lite_path=path, local=open_direct(path, db))


def _open_server(settings: Settings) -> Engine:
    db = database_name(settings.codops)
    try:
        milvus = MilvusClient(
            uri=settings.uri,
            user=settings.codops,
            password=settings.password.reveal(),
            db_name=db,
            timeout=30,
        )
    except Exception as exc:  # noqa: BLE001
        raise translate(exc, "connect", settings, settings.uri) from None
    return Engine(milvus, settings, "server", settings.uri)


def translate(exc: BaseException, action: str, settings: Settings, location: str) -> LookalikeError:
    """Map a pymilvus/grpc failure to a lookalike error, with no secret in its text."""
    error = translate_engine_error(exc, uri=location, codops=settings.codops, action=action)
    if type(error) is LookalikeError and isinstance(exc, MilvusException):
        # Milvus Lite reports a refused request (a bad filter, a bad value) with generic codes.
        error = InvalidInputError(f"Milvus refused to {action}: {exc.message}")
    secret = settings.password.reveal()
    if secret and secret in str(error):
        error = type(error)(str(error).replace(secret, "********"))
    return error
