"""Version-guarded fixes and speedups to Milvus Lite's own code."""

from .search import apply, is_applied

__all__ = ["apply", "is_applied"]
