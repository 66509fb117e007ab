"""The embedded engine: Milvus Lite, opened in process."""
