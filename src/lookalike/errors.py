"""The errors lookalike raises: one base class, a few kinds a caller can act on.

No exception of pymilvus, grpc or the embedded engine reaches a caller: the engine layer
translates them into these. Each class carries what the two shells report for it: the CLI's
exit code and the HTTP service's status and error kind, so both read one table (this file).
"""

from __future__ import annotations


class LookalikeError(Exception):
    """Base class of every error lookalike raises."""

    exit_code: int = 1  # the CLI's exit status (2 is click's, for a usage error)
    http_status: int = 500
    kind: str = "internal_error"  # the HTTP body's ``error`` field


class InvalidInputError(LookalikeError, ValueError):
    """A document, field, parameter or expression given by the caller is not acceptable.

    Raised before anything reaches Milvus where the library can tell; ``failed_ids`` lists the
    documents of a batch that did not land, when the error stopped one part-way. Never used for
    a failure of the engine or the disk (that is :class:`StorageError`).
    """

    exit_code, http_status, kind = 1, 400, "invalid_input"

    def __init__(self, message: str, failed_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.failed_ids = failed_ids or []


class NotFoundError(LookalikeError, KeyError):
    """A collection, or the documents a query names, are not stored."""

    exit_code, http_status, kind = 3, 404, "not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConflictError(LookalikeError):
    """The request contradicts what is stored (another schema, an existing id, another model)."""

    exit_code, http_status, kind = 4, 409, "conflict"


class EngineUnavailableError(LookalikeError):
    """Milvus cannot be reached or opened (server down, data directory held by another process)."""

    exit_code, http_status, kind = 5, 503, "engine_unavailable"


class StorageError(LookalikeError):
    """The engine or its disk failed: a full disk, a damaged data directory, an engine bug.

    Not the caller's fault, and not retried blindly: the message names the data directory and
    what to do. ``disk_full`` is True when the disk (or a quota) ran out of space.
    """

    exit_code, http_status, kind = 5, 503, "storage_error"

    def __init__(self, message: str, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full
        if disk_full:
            self.http_status, self.kind = 507, "insufficient_storage"


class AuthenticationError(LookalikeError):
    """Milvus refused the organisation's credentials.

    Over HTTP this is the service's own credentials failing, not the caller's: 503.
    """

    exit_code, http_status, kind = 6, 503, "engine_authentication_failed"


class PermissionDeniedError(LookalikeError):
    """Milvus denied an operation to the organisation's user."""

    exit_code, http_status, kind = 6, 403, "permission_denied"


class IndexTimeoutError(LookalikeError, TimeoutError):
    """The vector index was not built within the time the caller allowed.

    Nothing failed: searches stay correct meanwhile (exact over the rows not yet indexed), and the
    build goes on; ``indexed_rows`` and ``pending_rows`` say how far it got.
    """

    exit_code, http_status, kind = 7, 504, "index_timeout"

    def __init__(self, message: str, indexed_rows: int = 0, pending_rows: int = 0) -> None:
        super().__init__(message)
        self.indexed_rows = indexed_rows
        self.pending_rows = pending_rows
