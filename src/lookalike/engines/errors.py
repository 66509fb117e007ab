"""Translate what the engines raise into lookalike's errors, with messages a user can act on.

``translate_lite_error`` covers the embedded engine (Milvus Lite's exceptions, and the disk's);
``translate_engine_error`` a server reached through pymilvus and grpc. There the server's own
words mislead: a wrong password reads "illegal connection params or server
unavailable", and a permission denial arrives as a raw ``grpc.RpcError`` rather than a
``MilvusException``. Callers wrap engine calls like this::

    try:
        ...
    except Exception as exc:  # pymilvus and grpc errors
        raise translate_engine_error(exc, uri=uri, codops=codops, action="search 'articles'") from exc
"""

from __future__ import annotations

import errno
import re
from urllib.parse import urlsplit, urlunsplit

import grpc
from pymilvus.exceptions import MilvusException

from ..errors import (
    AuthenticationError,
    ConflictError,
    EngineUnavailableError,
    InvalidInputError,
    LookalikeError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
)

# pymilvus's code for a failed connection; the grpc error that caused it says why.
_CONNECT_FAILED = 2
# Milvus 2.3+ error codes (milvus-io/milvus pkg/util/merr).
_COLLECTION_NOT_FOUND = 100
_COLLECTION_NOT_LOADED = 101
_DATABASE_NOT_FOUND = 800
_INVALID_PARAMETER = 1100
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_PRIVILEGE = re.compile(r"Privilege(\w+): permission deny")
_NAMED = re.compile(r"\[(?:collection|database)=([^\]]+)\]")


def translate_engine_error(
    exc: BaseException, *, uri: str, codops: str | None = None, action: str = ""
) -> LookalikeError:
    """The lookalike error that says what went wrong in ``exc`` (raise it ``from exc``).

    Args:
        exc: what pymilvus or grpc raised.
        uri: where the client connected; any user:password in it is left out of messages.
        codops: the organisation whose credentials were used (None for the root user).
        action: what was being done, e.g. ``"search 'articles'"``, for the message.
    """
    if isinstance(exc, LookalikeError):
        return exc
    where = redact_uri(uri)
    who = f"organisation {codops}" if codops else "the Milvus root user"
    doing = f" ({action})" if action else ""
    status, detail = _grpc_status(exc)
    if status == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(f"authentication failed for {who} at {where}{doing}")
    if status == grpc.StatusCode.PERMISSION_DENIED:
        privilege = _PRIVILEGE.search(detail)
        needed = f" needs privilege {privilege.group(1)}" if privilege else " was refused"
        return PermissionDeniedError(f"permission denied to {who} at {where}: {action or 'the request'}{needed}")
    if status in _UNREACHABLE:
        return EngineUnavailableError(f"the Milvus server at {where} is unreachable{doing}")
    if isinstance(exc, MilvusException):
        return _from_milvus(exc, where, who, doing)
    return StorageError(f"Milvus at {where} failed{doing}: {exc}. Check the server's logs and retry.")


def redact_uri(uri: str) -> str:
    """``uri`` without the user:password part, fit for messages and logs."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def grpc_code(exc: BaseException) -> grpc.StatusCode | None:
    """The grpc status code behind ``exc`` (pymilvus may have wrapped it), or None."""
    return _grpc_status(exc)[0]


def _grpc_status(exc: BaseException) -> tuple[grpc.StatusCode | None, str]:
    """The grpc status behind ``exc``, which pymilvus may have wrapped (``raise ... from``)."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and all(cause is not e for e in chain):  # pymilvus raises e from e
        if isinstance(cause, grpc.RpcError) and callable(getattr(cause, "code", None)):
            return cause.code(), str(cause.details() or "")
        chain.append(cause)
        cause = cause.__cause__
    return None, ""


def _from_milvus(exc: MilvusException, where: str, who: str, doing: str) -> LookalikeError:
    message = exc.message or str(exc)
    named = _NAMED.search(message)
    name = named.group(1) if named else "?"
    if exc.code == _CONNECT_FAILED:
        return EngineUnavailableError(f"the Milvus server at {where} is unreachable{doing}")
    if exc.code == _DATABASE_NOT_FOUND:
        return NotFoundError(
            f"{who} has no database {name!r} at {where}: provision it first (lookalike admin provision){doing}"
        )
    if exc.code == _COLLECTION_NOT_FOUND:
        return NotFoundError(f"collection {name!r} not found at {where}{doing}")
    if exc.code == _COLLECTION_NOT_LOADED:
        # Seen for a few seconds after a server restart, while collections load again.
        return EngineUnavailableError(f"the collection is not loaded at {where}{doing}")
    if exc.code == _INVALID_PARAMETER or "cannot parse expression" in message:
        return InvalidInputError(f"Milvus at {where} refused the request{doing}: {message}")
    # Not the caller's fault as far as anyone can tell: the server's own failure.
    return StorageError(f"Milvus at {where} failed{doing}: {message}. Check the server's logs and retry.")


# -- the embedded engine -------------------------------------------------------------------

# Disk full, or a quota spent.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def translate_lite_error(exc: BaseException, *, data_dir: str, action: str) -> LookalikeError:
    """The lookalike error that says what went wrong in ``exc``, raised by Milvus Lite in process.

    The caller's fault (a document the schema refuses, a bad filter, an unknown field) is an
    ``InvalidInputError``; a missing collection ``NotFoundError``; a directory held by another
    process ``EngineUnavailableError``; everything else (the disk, damaged files, an engine bug)
    a ``StorageError`` naming the data directory and what to do. A lookalike error raised inside
    the engine (the durability patches raise ``StorageError``) passes through unchanged.

    Args:
        exc: what the engine raised.
        data_dir: the data directory, for messages.
        action: what was being done, e.g. ``"search 'articles'"``.
    """
    from milvus_lite import exceptions as lite
    from milvus_lite.search.filter.exceptions import FilterError

    if isinstance(exc, LookalikeError):
        return exc
    if isinstance(exc, (lite.SchemaValidationError, FilterError)):
        return InvalidInputError(f"Milvus refused to {action}: {exc}")
    if isinstance(exc, lite.CollectionNotFoundError):
        return NotFoundError(f"{exc} in {data_dir} ({action})")
    if isinstance(exc, (lite.CollectionAlreadyExistsError, lite.IndexAlreadyExistsError)):
        return ConflictError(f"Milvus refused to {action}: {exc}")
    if isinstance(exc, lite.DataDirLockedError):
        return EngineUnavailableError(
            f"cannot open the embedded Milvus data directory {data_dir}: another process "
            "probably holds it (one process at a time may open it). Run one serving process "
            "(e.g. `lookalike serve`) and send it requests, use another LOOKALIKE_DATA_DIR, "
            "or point LOOKALIKE_MILVUS_URI at a Milvus server."
        )
    if isinstance(exc, lite.IndexBackendUnavailableError):
        return EngineUnavailableError(
            f"the embedded engine cannot {action}: {exc} (reinstall lookalike's dependencies)"
        )
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return StorageError(
            f"the disk holding the data directory {data_dir} is full ({action}: {exc.strerror}). "
            "The failed call is not acknowledged: free space, then retry it.",
            disk_full=True,
        )
    if isinstance(exc, OSError):
        return StorageError(
            f"the data directory {data_dir} could not be read or written ({action}: {exc}). Check its "
            "permissions and the disk; if files are missing or damaged, restore it from a backup or an export."
        )
    return StorageError(
        f"the embedded engine failed to {action} ({type(exc).__name__}: {exc}). The data directory "
        f"{data_dir} may be damaged: restore it from a backup or an export (lookalike export) and "
        "report the failure if it persists."
    )
