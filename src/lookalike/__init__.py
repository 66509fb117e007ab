"""lookalike: store embeddings with their metadata and find similar items, on Milvus."""

from .api import (
    connect,
    count,
    create_collection,
    default_client,
    delete_documents,
    describe,
    disconnect,
    drop_collection,
    get_documents,
    index,
    list_collections,
    retrieve_similar,
    retrieve_similar_batch,
)
from .client import Client
from .collection import Collection
from .config import Secret, Settings
from .errors import (
    AuthenticationError,
    ConflictError,
    EngineUnavailableError,
    InvalidInputError,
    LookalikeError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
)
from .recommend import history_weights
from .retrieval import SimilarRequest

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Client",
    "Collection",
    "ConflictError",
    "EngineUnavailableError",
    "InvalidInputError",
    "LookalikeError",
    "NotFoundError",
    "PermissionDeniedError",
    "Secret",
    "Settings",
    "SimilarRequest",
    "StorageError",
    "connect",
    "count",
    "create_collection",
    "default_client",
    "delete_documents",
    "describe",
    "disconnect",
    "drop_collection",
    "get_documents",
    "index",
    "list_collections",
    "history_weights",
    "retrieve_similar",
    "retrieve_similar_batch",
]
