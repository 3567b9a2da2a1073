"""A JSON API server on 127.0.0.1 (port 0) for tests: routes map a path to a handler."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

# A handler receives (query, headers, request count for this path) and returns (status, headers, body bytes).
Handler = Callable[[dict[str, list[str]], dict[str, str], int], tuple[int, dict[str, str], bytes]]


def json_response(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Build a JSON response triple."""
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(document).encode("utf-8")


@dataclass
class ApiServer:
    """Serve ``routes`` on 127.0.0.1 in a background thread; ``url(path)`` gives the full URL."""

    routes: dict[str, Handler]
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self
        counts: dict[str, int] = {}

        class _Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                counts[parts.path] = counts.get(parts.path, 0) + 1
                headers = {k: v for k, v in self.headers.items()}
                server.requests.append({"path": parts.path, "query": parts.query, "headers": headers, "time": time.time()})
                handler = server.routes.get(parts.path)
                if handler is None:
                    status, response_headers, body = 404, {"Content-Type": "text/plain"}, b"not found"
                else:
                    status, response_headers, body = handler(parse_qs(parts.query), headers, counts[parts.path])
                self.send_response(status)
                for key, value in response_headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _serve
            do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
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
