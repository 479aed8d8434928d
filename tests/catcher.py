"""A loopback HTTP server that catches what Apprise's json:// sends (the test's own notification
service): every POSTed JSON body, in order; optionally slow, or closed (refusing connections)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Catcher:
    def __init__(self, delay: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.delay = delay
        caught = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(caught.delay)
                caught.bodies.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"json://127.0.0.1:{self.port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def titles(self) -> list[str]:
        return [b.get("title", "") for b in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def refusing_url() -> str:
    """A json:// URL nothing listens on."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"json://127.0.0.1:{port}/"
