"""The errors lookalike raises: one base class, a few kinds a caller can act on.

No exception of pymilvus or grpc reaches a caller: the client translates them into these.
"""

from __future__ import annotations


class LookalikeError(Exception):
    """Base class of every error lookalike raises."""


class InvalidInputError(LookalikeError, ValueError):
    """A document, field, parameter or expression is not acceptable.

    Raised before anything reaches Milvus where the library can tell; ``failed_ids`` lists the
    documents of a batch that did not land, when the error stopped one part-way.
    """

    def __init__(self, message: str, failed_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.failed_ids = failed_ids or []


class NotFoundError(LookalikeError, KeyError):
    """A collection, or the documents a query names, are not stored."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConflictError(LookalikeError):
    """The request contradicts what is stored (another schema, an existing id, another model)."""


class EngineUnavailableError(LookalikeError):
    """Milvus cannot be reached or opened (server down, data directory held by another process)."""


class AuthenticationError(LookalikeError):
    """Milvus refused the organisation's credentials."""


class PermissionDeniedError(LookalikeError):
    """Milvus denied an operation to the organisation's user."""
