"""Logging setup: console progress, a JSON-lines run log, run ids and secret masking."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

__all__ = ["SecretMaskFilter", "configure_logging", "stage", "register_secret", "mask_secrets"]

_SECRETS: set[str] = set()
_MASK = "***"
# Query parameters whose values are masked in any URL that reaches a log or artifact.
_SECRET_QUERY = re.compile(r"(?i)([?&](?:api[_-]?key|apikey|token|access_token|key|secret|password|auth)=)[^&#\s]*")


def register_secret(value: str | None) -> None:
    """Remember a secret so that every later log record and artifact masks it."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def mask_secrets(text: str) -> str:
    """Replace registered secrets and secret-looking query parameters in ``text``."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return _SECRET_QUERY.sub(lambda match: match.group(1) + _MASK, text)


class SecretMaskFilter(logging.Filter):
    """Mask secrets in the formatted message of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg = masked
            record.args = None
        return True


class _RunIdFilter(logging.Filter):
    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = self.run_id
        return True


class _JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(),
            "level": record.levelname,
            "run_id": getattr(record, "run_id", None),
            "logger": record.name,
            "stage": getattr(record, "stage", None),
            "message": record.getMessage(),
        }
        for key in ("counts", "duration_s", "event"):
            if hasattr(record, key):
                event[key] = getattr(record, key)
        if record.exc_info:
            event["traceback"] = mask_secrets("".join(traceback.format_exception(*record.exc_info)))
        return json.dumps(event, default=str)


_HANDLERS: list[logging.Handler] = []


def configure_logging(run_id: str, log_file: Path | None = None, level: int = logging.INFO) -> None:
    """Send ``anomaly_spark`` records to stderr and, if given, to a JSON-lines file.

    Calling it again replaces the handlers of the previous run.
    """
    logger = logging.getLogger("anomaly_spark")
    for handler in _HANDLERS:
        logger.removeHandler(handler)
        handler.close()
    _HANDLERS.clear()
    logger.setLevel(level)
    logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(run_id)s] %(message)s", "%H:%M:%S"))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(_JsonLinesFormatter())
        handlers.append(file_handler)
    for handler in handlers:
        handler.addFilter(_RunIdFilter(run_id))
        handler.addFilter(SecretMaskFilter())
        logger.addHandler(handler)
        _HANDLERS.append(handler)


@contextmanager
def stage(logger: logging.Logger, name: str, timings: dict[str, float]) -> Iterator[dict[str, Any]]:
    """Log a stage's start and end with its duration; counts put in the yielded dict are logged at the end."""
    counts: dict[str, Any] = {}
    logger.info("stage %s: started", name, extra={"stage": name, "event": "start"})
    started = time.perf_counter()
    try:
        yield counts
    except Exception:
        duration = time.perf_counter() - started
        timings[name] = round(duration, 3)
        logger.error("stage %s: failed after %.1f s", name, duration, extra={"stage": name, "event": "failed", "duration_s": round(duration, 3)})
        raise
    duration = time.perf_counter() - started
    timings[name] = round(duration, 3)
    shown = ", ".join(f"{key}={value}" for key, value in counts.items())
    logger.info(
        "stage %s: finished in %.1f s%s",
        name,
        duration,
        f" ({shown})" if shown else "",
        extra={"stage": name, "event": "end", "duration_s": round(duration, 3), "counts": counts},
    )
