"""Serve the application from a thread of this process: for notebooks, tests and benchmarks.

``lookalike serve`` is the way to run the service; this is the same uvicorn server, started on a
free port of the loopback interface and stopped when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from ..errors import EngineUnavailableError


@contextlib.contextmanager
def serving(app: FastAPI, host: str = "127.0.0.1", port: int = 0,
            start_timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a daemon thread until the block ends.

    Args:
        app: the application (``create_app(...)``).
        host: the interface; loopback by default.
        port: the port; 0 picks a free one.
        start_timeout: seconds to wait for the server to listen.

    Returns:
        A context manager giving the base URL, e.g. ``http://127.0.0.1:53127``.
    """
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="lookalike-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise EngineUnavailableError(f"the HTTP service did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
