"""The engines under the facade: the one place that picks one (``open_engine``).

``base.Engine`` is the interface ``Client`` and ``Collection`` call; ``lite/`` is the embedded
Milvus Lite, opened in this process; ``server.py`` a Milvus server through pymilvus. Nothing
above this package talks to Milvus itself.
"""

from __future__ import annotations

from ..config import Settings
from .base import Engine

__all__ = ["Engine", "database_name", "open_engine"]


def database_name(codops: str) -> str:
    """The Milvus database that holds one organisation's collections."""
    return f"org_{codops}"


def open_engine(settings: Settings) -> Engine:
    """The organisation's database: in the embedded engine under ``settings.data_dir`` (created
    if need be) when no server URI is set, else on the server at ``settings.uri``."""
    if settings.embedded:
        from .lite.engine import open_lite

        return open_lite(settings, database_name(settings.codops))
    from .server import ServerEngine

    return ServerEngine(settings, database_name(settings.codops))
