"""The ``anomaly-spark serve`` web app: browse runs, read reports and history, start runs."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from .app import LOOPBACK_HOSTS, TOKEN_ENV, create_app

__all__ = ["create_app", "serve", "TOKEN_ENV", "is_loopback"]

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Return True when ``host`` is a loopback name or address (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(output: Path, host: str = "127.0.0.1", port: int = 8080, max_runs: int = 2) -> None:
    """Serve the web app for ``output`` with uvicorn until interrupted.

    The access token comes from the ``ANOMALY_SPARK_WEB_TOKEN`` environment
    variable. Binding a non-loopback address without a token raises
    ValueError, because anyone on the network could then start runs that read
    any path the server can read.
    """
    import uvicorn

    token = os.environ.get(TOKEN_ENV) or None
    if not is_loopback(host) and not token:
        raise ValueError(
            f"refusing to serve on {host} without an access token: set {TOKEN_ENV}, or bind 127.0.0.1"
        )
    if token:
        from ..logs import register_secret

        register_secret(token)
    allowed_hosts = list(LOOPBACK_HOSTS) if is_loopback(host) else ["*"]
    output.mkdir(parents=True, exist_ok=True)
    app = create_app(output, token=token, max_runs=max_runs, allowed_hosts=allowed_hosts)
    logger.info("web app on http://%s:%d/ for %s", host, port, output)
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=False, server_header=False)
