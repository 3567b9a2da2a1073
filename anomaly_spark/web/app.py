"""The web app: runs index, reports, history, a form and a JSON API that start runs.

Built on Starlette (routing, requests, responses) and served by uvicorn.
Pages are rendered with the report's Jinja2 environment, so every value
from the data is escaped the same way as in the static files.
"""

from __future__ import annotations

import hmac
import json
import logging
import mimetypes
import re
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import parse_qs

import yaml
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..report import report_environment
from ..report.index import HISTORY_FILE, RUN_ID_PATTERN, render_history, render_index
from .jobs import RunLauncher, RunRequest, RunRequestError, TooManyRuns

__all__ = ["create_app", "TOKEN_ENV", "LOOPBACK_HOSTS"]

logger = logging.getLogger(__name__)

# Environment variable that contains the access token. When it is set, starting a run requires the token.
TOKEN_ENV = "ANOMALY_SPARK_WEB_TOKEN"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

_STATIC = Path(__file__).resolve().parent / "static"
# File names a run folder may serve: one path segment, no leading dot.
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SERVED_SUFFIXES = {
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".jsonl": "text/plain; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".png": "image/png",
}
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_MAX_BODY_BYTES = 64 * 1024


class _SecurityHeaders:
    """Add a Content-Security-Policy and related headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                extra = {
                    b"content-security-policy": _PAGE_POLICY.encode(),
                    b"x-content-type-options": b"nosniff",
                    b"referrer-policy": b"no-referrer",
                    b"x-frame-options": b"DENY",
                    b"cache-control": b"no-store",
                }
                headers.extend((name, value) for name, value in extra.items() if name not in names)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Log a rejected request (warning for POST, info for reads) and return the JSON error response."""
    level = logging.WARNING if request.method == "POST" else logging.INFO
    client = request.client.host if request.client else "unknown"
    logger.log(level, "%s %s from %s rejected with %d: %s", request.method, request.url.path, client, status, message)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _BodyTooLarge(ValueError):
    """A request body exceeds the size limit."""


async def _read_body(request: Request) -> bytes:
    """Read the request body, raising :class:`_BodyTooLarge` past the limit without buffering the rest."""
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_BODY_BYTES:
            raise _BodyTooLarge(f"the request body exceeds {_MAX_BODY_BYTES} bytes; a run request is a few hundred bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _valid_run_id(request: Request) -> str | None:
    run_id = str(request.path_params.get("run_id", ""))
    return run_id if RUN_ID_PATTERN.match(run_id) else None


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def create_app(output: Path, token: str | None = None, max_runs: int = 2, allowed_hosts: list[str] | None = None) -> Starlette:
    """Build the web app serving ``output``.

    Parameters
    ----------
    output
        The output folder: runs, index and history are read from it and new
        runs write into it.
    token
        Access token required (as ``Authorization: Bearer TOKEN`` or the
        form's token field) to start runs; None leaves starting open.
    max_runs
        Maximum number of runs executing at once.
    allowed_hosts
        Values accepted in the Host header (``*`` for any); the default
        accepts the loopback names only, which blocks DNS rebinding.
    """
    output = output.resolve()
    runs_dir = output / "runs"
    launcher = RunLauncher(output, max_active=max_runs)
    environment = report_environment()

    def authorized(request: Request, form_token: str | None = None) -> bool:
        if not token:
            return True
        header = request.headers.get("authorization", "")
        supplied = header[7:].strip() if header.lower().startswith("bearer ") else (form_token or "")
        return hmac.compare_digest(supplied.encode(), token.encode())

    def same_origin(request: Request) -> bool:
        # Browsers send Origin with every form POST; clients without it are not browsers.
        origin = request.headers.get("origin")
        if origin is None:
            return True
        return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(render_index(output, runs=launcher.list_runs(), web=True))

    async def history(request: Request) -> Response:
        static = output / HISTORY_FILE
        if static.is_file():
            return FileResponse(static, media_type="text/html; charset=utf-8")
        return HTMLResponse(render_history(output))

    def form_page(values: dict[str, Any], error: str | None = None, status: int = 200) -> HTMLResponse:
        if error:
            logger.warning("run form rejected with %d: %s", status, error)
        html = environment.get_template("web_new_run.html").render(
            values=values, error=error, token_required=bool(token), output=str(output)
        )
        return HTMLResponse(html, status_code=status)

    async def new_run_form(request: Request) -> HTMLResponse:
        return form_page({"format": "auto", "mode": "simple", "plots": "true"})

    async def submit_form(request: Request) -> Response:
        if not same_origin(request):
            return _error(request, 403, "cross-origin form submission rejected; open the form on this server")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return _error(request, 415, "the form must be sent as application/x-www-form-urlencoded")
        try:
            body = (await _read_body(request)).decode("utf-8", errors="replace")
        except _BodyTooLarge as exc:
            return _error(request, 413, str(exc))
        fields: dict[str, Any] = {key: values[-1] for key, values in parse_qs(body, keep_blank_values=True).items()}
        shown = {key: value for key, value in fields.items() if key != "token"}
        if not authorized(request, fields.get("token")):
            return form_page(shown, f"missing or invalid access token; the server reads it from {TOKEN_ENV}", 401)
        try:
            fields["settings"] = _parse_settings_text(fields.get("settings", ""))
            status = launcher.start(RunRequest.from_mapping(fields))
        except RunRequestError as exc:
            return form_page(shown, str(exc), 400)
        except TooManyRuns as exc:
            return form_page(shown, str(exc), 429)
        return RedirectResponse(f"/runs/{status['run_id']}", status_code=303)

    async def run_page(request: Request) -> Response:
        run_id = _valid_run_id(request)
        status = launcher.status(run_id) if run_id else None
        if status is None:
            return HTMLResponse(environment.get_template("web_not_found.html").render(run_id=request.path_params.get("run_id")), status_code=404)
        return HTMLResponse(environment.get_template("web_run.html").render(run=status))

    async def run_file(request: Request) -> Response:
        run_id = _valid_run_id(request)
        name = str(request.path_params.get("name", ""))
        folder = request.path_params.get("folder")
        if run_id is None or not _FILE_NAME.match(name) or folder not in (None, "plots"):
            return _error(request, 404, "not found: run ids and file names use letters, digits, '.', '_' and '-'")
        base = runs_dir / run_id if folder is None else runs_dir / run_id / "plots"
        path = base / name
        media_type = _SERVED_SUFFIXES.get(path.suffix)
        if media_type is None or (path.suffix == ".html" and name != "report.html"):
            return _error(request, 404, f"{name} is not a file the web app serves")
        if not path.is_file() or not _inside(path, runs_dir):
            return _error(request, 404, f"{run_id}/{name} not found in {runs_dir}")
        return FileResponse(path, media_type=media_type)

    async def api_list(request: Request) -> JSONResponse:
        return JSONResponse({"runs": launcher.list_runs()})

    async def api_start(request: Request) -> JSONResponse:
        if not authorized(request):
            return _error(request, 401, f"missing or invalid access token; send 'Authorization: Bearer TOKEN' with the token set in {TOKEN_ENV}", {"WWW-Authenticate": "Bearer"})
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error(request, 415, "send the run request as application/json")
        try:
            data = json.loads(await _read_body(request) or b"{}")
        except _BodyTooLarge as exc:
            return _error(request, 413, str(exc))
        except ValueError as exc:
            return _error(request, 400, f"the request body is not valid JSON: {exc}")
        try:
            status = launcher.start(RunRequest.from_mapping(data))
        except RunRequestError as exc:
            return _error(request, 400, str(exc))
        except TooManyRuns as exc:
            return _error(request, 429, str(exc), {"Retry-After": "30"})
        return JSONResponse(status, status_code=202, headers={"Location": f"/api/runs/{status['run_id']}"})

    async def api_status(request: Request) -> JSONResponse:
        run_id = _valid_run_id(request)
        if run_id is None:
            return _error(request, 404, "invalid run id: use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit")
        status = launcher.status(run_id)
        if status is None:
            return _error(request, 404, f"run {run_id} not found in {runs_dir}")
        return JSONResponse(status)

    async def static_file(request: Request) -> Response:
        name = str(request.path_params.get("name", ""))
        path = _STATIC / name
        if not _FILE_NAME.match(name) or not path.is_file():
            return _error(request, 404, f"static file {name} not found")
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "running": launcher.running()})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        logger.info("serving %s; starting runs %s", output, "requires the access token" if token else "is open (no token set)")
        yield
        running = launcher.running()
        if running:
            logger.info("server stopped; %d run(s) go on in the background: %s", len(running), ", ".join(running))

    routes = [
        Route("/", index),
        Route("/index.html", index),
        Route("/history.html", history),
        Route("/runs/new", new_run_form),
        Route("/runs", submit_form, methods=["POST"]),
        Route("/runs/{run_id}", run_page),
        Route("/runs/{run_id}/{name}", run_file),
        Route("/runs/{run_id}/{folder}/{name}", run_file),
        Route("/api/runs", api_list, methods=["GET"]),
        Route("/api/runs", api_start, methods=["POST"]),
        Route("/api/runs/{run_id}", api_status),
        Route("/static/{name}", static_file),
        Route("/healthz", health),
    ]
    hosts = allowed_hosts or list(LOOPBACK_HOSTS)
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False), Middleware(_SecurityHeaders)],
        lifespan=lifespan,
    )
    app.state.launcher = launcher
    return app


def _parse_settings_text(text: str) -> dict[str, Any]:
    """Parse the form's settings box: one ``key=value`` per line, values in YAML (as ``--set`` reads them)."""
    settings: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, separator, value = line.partition("=")
        if not separator or not key.strip():
            raise RunRequestError(f"settings line {number} {line!r} is not key=value, such as detection.contamination=0.02")
        try:
            settings[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise RunRequestError(f"settings line {number}: the value {value!r} is not valid YAML ({exc})") from None
    return settings

