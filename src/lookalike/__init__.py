"""lookalike: store embeddings with their metadata and find similar items, on Milvus."""

from .api import (
    cluster,
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
    map_sample,
    near_duplicates,
    retrieve_similar,
    retrieve_similar_batch,
    wait_for_index,
)
from .client import Client
from .collection import Collection
from .config import Secret, Settings
from .errors import (
    AuthenticationError,
    ConflictError,
    EngineUnavailableError,
    IndexTimeoutError,
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
    "IndexTimeoutError",
    "InvalidInputError",
    "LookalikeError",
    "NotFoundError",
    "PermissionDeniedError",
    "Secret",
    "Settings",
    "SimilarRequest",
    "StorageError",
    "cluster",
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
    "map_sample",
    "near_duplicates",
    "history_weights",
    "retrieve_similar",
    "retrieve_similar_batch",
    "wait_for_index",
]
