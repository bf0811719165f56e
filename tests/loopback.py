"""What the loopback test servers share: a threaded HTTP server on 127.0.0.1 (a free port) that stops by itself.

Subclasses set ``handler`` (a ``BaseHTTPRequestHandler`` class) and ``handler_attribute`` (the name under which
the handler finds the server object), and keep their own state.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LoopbackServer:
    """``start()``/``stop()`` or a context manager; after ``lifetime`` seconds it stops on its own."""

    handler: type[BaseHTTPRequestHandler]
    handler_attribute = "server_double"

    def __init__(self, lifetime: float = 120.0):
        self.lifetime = lifetime
        self._httpd: ThreadingHTTPServer | None = None
        self._timer: threading.Timer | None = None

    @property
    def address(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        handler = type("Handler", (self.handler,), {self.handler_attribute: self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: a free port
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if self._timer is not None:
            self._timer.cancel()
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
