"""Run the web app with uvicorn on 127.0.0.1 (port 0) in a background thread, and a small HTTP client."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from anomaly_spark.web import create_app


@dataclass
class WebServer:
    """Serve ``create_app(output, token, max_runs)`` until :meth:`close`; ``url(path)`` gives the full URL."""

    output: Path
    token: str | None = None
    max_runs: int = 2
    app: Any = field(init=False)

    def __post_init__(self) -> None:
        self.app = create_app(self.output, token=self.token, max_runs=self.max_runs)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the web app did not start within 30 s")
            time.sleep(0.05)
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])

    @property
    def launcher(self) -> Any:
        """The app's run launcher."""
        return self.app.state.launcher

    def url(self, path: str) -> str:
        """Return the full URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def request(
        self,
        path: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request and return (status, headers, body) without raising on 4xx and 5xx."""
        request = urllib.request.Request(self.url(path), data=body, method=method, headers=headers or {})
        opener = urllib.request.build_opener(_NoRedirect())
        try:
            with opener.open(request, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def post_json(self, path: str, document: Any, token: str | None = None) -> tuple[int, dict[str, Any]]:
        """POST ``document`` as JSON and return the status and the parsed JSON response."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        status, _, body = self.request(path, "POST", json.dumps(document).encode(), headers)
        return status, json.loads(body)

    def get_json(self, path: str) -> tuple[int, Any]:
        """GET ``path`` and return the status and the parsed JSON response."""
        status, _, body = self.request(path)
        return status, json.loads(body)

    def wait_for_run(self, run_id: str, timeout: float) -> dict[str, Any]:
        """Poll ``GET /api/runs/{run_id}`` until the run leaves the running state, and return its status."""
        deadline = time.monotonic() + timeout
        while True:
            status, document = self.get_json(f"/api/runs/{run_id}")
            assert status == 200, document
            if document["status"] not in ("running", "incomplete"):
                return dict(document)
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still {document['status']} after {timeout} s")
            time.sleep(1.0)

    def close(self) -> None:
        """Stop the runs this server started, then the server."""
        self.launcher.terminate_running()
        self._server.should_exit = True
        self._thread.join(timeout=30)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
