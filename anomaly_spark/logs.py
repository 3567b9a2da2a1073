"""Logging setup: console progress, a JSON-lines run log, an error log, run ids and secret masking.

Every record of the ``anomaly_spark`` loggers goes to stderr. While a run
is active in the current thread (or asyncio task), its records also go to
that run's ``log.jsonl``, one JSON object per line. Each object has the keys
``time``, ``level``, ``run_id``, ``stage``, ``event``, ``message``,
``counts`` and ``duration_s``, which are null where they do not apply. Two
runs in two threads of one process each get only their own records.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "SecretMaskFilter",
    "configure_logging",
    "close_run_log",
    "current_run_id",
    "stage",
    "register_secret",
    "mask_secrets",
    "mask_value",
    "append_error_record",
]

_SECRETS: set[str] = set()
_MASK = "***"
# Query parameters whose values are masked in any URL that reaches a log or artifact. The value stops at
# quotes, backslashes and angle brackets too, so masking JSON or HTML text keeps it well-formed.
_SECRET_QUERY = re.compile(r"(?i)([?&](?:api[_-]?key|apikey|token|access_token|key|secret|password|auth)=)[^&#\s\"'<>\\]*")
_ROOT_LOGGER = "anomaly_spark"
# Keys of every JSON-lines record, in output order.
_EVENT_KEYS = ("time", "level", "run_id", "logger", "stage", "event", "message", "counts", "duration_s")

_current_run: ContextVar[str | None] = ContextVar("anomaly_spark_run_id", default=None)
_current_stage: ContextVar[str | None] = ContextVar("anomaly_spark_stage", default=None)
_run_handlers: dict[str, logging.Handler] = {}
_console_handler: logging.Handler | None = None
_setup_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret so that every later log record and artifact masks it."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def mask_secrets(text: str) -> str:
    """Replace registered secrets and secret-looking query parameters in ``text``."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return _SECRET_QUERY.sub(lambda match: match.group(1) + _MASK, text)


def mask_value(value: Any) -> Any:
    """Return a copy of a JSON-like value with secrets masked in every string, keys included."""
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {mask_value(k) if isinstance(k, str) else k: mask_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_value(v) for v in value]
    return value


def _masked_text(value: Any) -> str:
    return mask_secrets(str(value))


def _finite(value: Any) -> Any:
    """Return a copy with NaN and infinite floats replaced by None, so the record stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def current_run_id() -> str | None:
    """Return the id of the run active in this thread, or None outside a run."""
    return _current_run.get()


class SecretMaskFilter(logging.Filter):
    """Mask secrets in the message, the traceback and the stack of every record it filters."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg = masked
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


class _RunIdFilter(logging.Filter):
    """Tag records with the active run id and stage; with ``only`` set, pass only that run's records."""

    def __init__(self, only: str | None = None) -> None:
        super().__init__()
        self.only = only

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "run_id"):
            record.run_id = _current_run.get()
        if getattr(record, "stage", None) is None:
            record.stage = _current_stage.get()
        # The console shows "-" for a record outside any run, such as one written at exit.
        record.run_label = getattr(record, "run_id", None) or "-"
        return self.only is None or getattr(record, "run_id", None) == self.only


class _JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = dict.fromkeys(_EVENT_KEYS)
        event.update(
            time=datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(),
            level=record.levelname,
            run_id=getattr(record, "run_id", None),
            logger=record.name,
            stage=getattr(record, "stage", None),
            event=getattr(record, "event", None),
            message=record.getMessage(),
            counts=getattr(record, "counts", None),
            duration_s=getattr(record, "duration_s", None),
        )
        if hasattr(record, "error_type"):
            event["error_type"] = record.error_type
        if record.exc_info or record.exc_text:
            event["traceback"] = record.exc_text or "".join(traceback.format_exception(*record.exc_info))  # type: ignore[misc]
        return json.dumps(_finite(mask_value(event)), default=_masked_text, allow_nan=False)


def _ensure_console(logger: logging.Logger, level: int) -> None:
    global _console_handler
    logger.setLevel(level)
    logger.propagate = False
    if _console_handler is not None:
        return
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(run_label)s] %(message)s", "%H:%M:%S"))
    console.addFilter(_RunIdFilter())
    console.addFilter(SecretMaskFilter())
    logger.addHandler(console)
    _console_handler = console


def configure_logging(run_id: str, log_file: Path | None = None, level: int = logging.INFO) -> None:
    """Make ``run_id`` the active run of this thread and send its records to stderr and ``log_file``.

    A run started earlier in the same thread is closed first, so sequential
    runs do not share a file. Runs in other threads keep their own files.
    """
    logger = logging.getLogger(_ROOT_LOGGER)
    with _setup_lock:
        _ensure_console(logger, level)
        previous = _current_run.get()
        if previous is not None and previous != run_id:
            _close_locked(logger, previous)
        _current_run.set(run_id)
        if log_file is None or run_id in _run_handlers:
            return
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(_JsonLinesFormatter())
        handler.addFilter(_RunIdFilter(only=run_id))
        handler.addFilter(SecretMaskFilter())
        logger.addHandler(handler)
        _run_handlers[run_id] = handler


def _close_locked(logger: logging.Logger, run_id: str) -> None:
    handler = _run_handlers.pop(run_id, None)
    if handler is not None:
        logger.removeHandler(handler)
        handler.close()


def close_run_log(run_id: str) -> None:
    """Close the JSON-lines file of ``run_id`` and end it as the active run of this thread."""
    with _setup_lock:
        _close_locked(logging.getLogger(_ROOT_LOGGER), run_id)
        if _current_run.get() == run_id:
            _current_run.set(None)


def append_error_record(path: Path, exc: BaseException, stage_name: str | None, run_id: str | None = None) -> dict[str, Any]:
    """Append one caught error to a JSON-lines error log and return the record.

    The record contains the time, run id, stage, error type, message and the
    formatted traceback, all with secrets masked.
    """
    record = {
        "time": datetime.now(timezone.utc).isoformat(),
        "run_id": run_id if run_id is not None else _current_run.get(),
        "stage": stage_name,
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }
    record = mask_value(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=_masked_text, allow_nan=False) + "\n")
    return record


@contextmanager
def stage(logger: logging.Logger, name: str, timings: dict[str, float]) -> Iterator[dict[str, Any]]:
    """Log a stage's start and end at INFO with its duration, and its failure at ERROR.

    Counts put in the yielded dict (rows, columns, models, ...) are logged
    with the end or failure record and recorded under ``counts``.
    """
    counts: dict[str, Any] = {}
    token = _current_stage.set(name)
    logger.info("stage %s: started", name, extra={"stage": name, "event": "start"})
    started = time.perf_counter()
    try:
        yield counts
    except Exception as exc:
        duration = round(time.perf_counter() - started, 3)
        timings[name] = duration
        logger.error(
            "stage %s: failed after %.1f s: %s: %s",
            name,
            duration,
            type(exc).__name__,
            exc,
            extra={"stage": name, "event": "failed", "duration_s": duration, "counts": counts, "error_type": type(exc).__name__},
        )
        raise
    finally:
        _current_stage.reset(token)
    duration = round(time.perf_counter() - started, 3)
    timings[name] = duration
    shown = ", ".join(f"{key}={value}" for key, value in counts.items())
    logger.info(
        "stage %s: finished in %.1f s%s",
        name,
        duration,
        f" ({shown})" if shown else "",
        extra={"stage": name, "event": "end", "duration_s": duration, "counts": counts},
    )
