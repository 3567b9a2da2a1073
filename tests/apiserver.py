"""A JSON API server on 127.0.0.1 (port 0) for tests: routes map a path to a handler."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

# A handler receives (query, headers, request count for this path) and returns (status, headers, body bytes).
Handler = Callable[[dict[str, list[str]], dict[str, str], int], tuple[int, dict[str, str], bytes]]
Response = tuple[int, dict[str, str], bytes]


def json_response(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Build a JSON response triple."""
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(document).encode("utf-8")


def file_handler(path: Path) -> Handler:
    """Serve the bytes of ``path`` as JSON on every request."""
    body = path.read_bytes()

    def handler(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
        return 200, {"Content-Type": "application/json"}, body

    return handler


def unused_port() -> int:
    """Return a loopback port that nothing listens on: bound, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ApiServer:
    """Serve ``routes`` on 127.0.0.1 in a background thread; ``url(path)`` gives the full URL.

    Each request is recorded in ``requests`` with its path, query, headers,
    body and arrival time. A handler that sets ``Content-Length`` itself can
    announce more bytes than it sends, to simulate a cut connection.
    """

    routes: dict[str, Handler]
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self
        counts: dict[str, int] = {}
        lock = threading.Lock()

        class _Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request_body = self.rfile.read(length) if length else b""
                with lock:
                    counts[parts.path] = counts.get(parts.path, 0) + 1
                    count = counts[parts.path]
                headers = {k: v for k, v in self.headers.items()}
                server.requests.append(
                    {
                        "path": parts.path,
                        "query": parts.query,
                        "headers": headers,
                        "body": request_body,
                        "method": self.command,
                        "time": time.monotonic(),
                    }
                )
                handler = server.routes.get(parts.path)
                if handler is None:
                    status, response_headers, body = 404, {"Content-Type": "text/plain"}, b"not found"
                else:
                    status, response_headers, body = handler(parse_qs(parts.query), headers, count)
                try:
                    self.send_response(status)
                    for key, value in response_headers.items():
                        self.send_header(key, value)
                    if "Content-Length" not in response_headers:
                        self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up first, as in the timeout tests.
                    return

            do_GET = _serve
            do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        # A short poll interval keeps close() from waiting up to the default 0.5 s.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        """The port the server bound."""
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        """Return the full URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "ApiServer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
