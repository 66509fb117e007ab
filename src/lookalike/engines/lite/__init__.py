"""The embedded engine: Milvus Lite, opened in process (``engine.py``), its column writes
(``direct.py``) and the patches to its own code (``patches/``)."""
