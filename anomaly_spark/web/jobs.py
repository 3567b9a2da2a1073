"""Runs started from the web app: request validation, one Spark driver process per run, status tracking.

Each run is a separate ``python -m anomaly_spark run ...`` process started
with an argument list (never through a shell). Its console output goes to
``DIR/web/jobs/<run_id>.log`` and a small JSON record beside it keeps the
process id and exit code, so the status survives a restart of the server.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import ConfigError, load_config
from ..report.index import RUN_ID_PATTERN, describe_run

__all__ = ["RunRequest", "RunRequestError", "RunLauncher", "TooManyRuns", "ALLOWED_SETTING_PREFIXES"]

logger = logging.getLogger(__name__)

# Config keys a web request may override with ``settings``. The output folder
# is the server's, and Spark settings, API headers and API auth stay with the
# operator: they could run code on the driver or send a local secret file to
# any URL.
ALLOWED_SETTING_PREFIXES = (
    "run.mode",
    "run.seed",
    "run.plots",
    "source.format",
    "source.records_path",
    "source.label_column",
    "source.id_column",
    "source.csv.",
    "source.null_values",
    "api.method",
    "api.params",
    "api.body",
    "api.connect_timeout_s",
    "api.read_timeout_s",
    "api.max_retries",
    "api.max_pages",
    "api.pagination.",
    "features.",
    "preprocess.",
    "detection.",
    "report.",
)

_FORMATS = ("auto", "csv", "json", "parquet", "delta")
_MODES = ("simple", "complex")
# Lines of a failed process's console output returned with its status.
_LOG_TAIL_LINES = 20


class RunRequestError(ValueError):
    """A request to start a run is invalid; the message names the field and the fix."""


class TooManyRuns(RuntimeError):
    """The server already runs its maximum number of runs at once."""


@dataclass
class RunRequest:
    """A validated request to start a run; :meth:`command` turns it into the ``run`` command's arguments."""

    source: str = ""
    source_format: str = "auto"
    records_path: str = ""
    label_column: str = ""
    mode: str = "simple"
    run_id: str | None = None
    plots: bool = True
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Any) -> "RunRequest":
        """Validate a JSON object or form fields and return the request, or raise :class:`RunRequestError`."""
        if not isinstance(data, dict):
            raise RunRequestError("the request body must be a JSON object such as {\"source\": \"data.csv\"}")
        known = {"source", "format", "records_path", "label_column", "mode", "run_id", "plots", "settings", "token"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RunRequestError(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known - {'token'}))}")
        request = cls(
            source=_text(data, "source"),
            source_format=_text(data, "format") or "auto",
            records_path=_text(data, "records_path"),
            label_column=_text(data, "label_column"),
            mode=_text(data, "mode") or "simple",
            run_id=_text(data, "run_id") or None,
            plots=_flag(data, "plots", True),
            settings=_settings(data.get("settings")),
        )
        if request.source_format not in _FORMATS:
            raise RunRequestError(f"invalid format {request.source_format!r}; use one of {', '.join(_FORMATS)}")
        if request.mode not in _MODES:
            raise RunRequestError(f"invalid mode {request.mode!r}; use one of {', '.join(_MODES)}")
        if request.run_id == "new":
            raise RunRequestError("run_id 'new' is reserved for the web app's form page; choose another run_id")
        if request.run_id is not None and not RUN_ID_PATTERN.match(request.run_id):
            raise RunRequestError(
                f"invalid run_id {request.run_id!r}: use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return request

    def validate_config(self, output: Path) -> None:
        """Resolve the config the run would use and raise :class:`RunRequestError` if it is invalid."""
        try:
            load_config(None, self._overrides(), self._extra(output))
        except ConfigError as exc:
            raise RunRequestError(str(exc)) from None

    def command(self, output: Path, run_id: str) -> list[str]:
        """Return the argument list of the child process (each value in its own ``--name=value`` item)."""
        args = [sys.executable, "-m", "anomaly_spark", "run", f"--output={output}", f"--run-id={run_id}"]
        if self.source:
            args.append(f"--source={self.source}")
        args.append(f"--format={self.source_format}")
        if self.records_path:
            args.append(f"--records-path={self.records_path}")
        if self.label_column:
            args.append(f"--label-column={self.label_column}")
        args.append(f"--mode={self.mode}")
        args.append("--plots" if self.plots else "--no-plots")
        for item in self._overrides():
            args.append(f"--set={item}")
        return args

    def _overrides(self) -> list[str]:
        # JSON is valid YAML, so the child's --set parser reads back the same value and type.
        return [f"{key}={json.dumps(value)}" for key, value in self.settings.items()]

    def _extra(self, output: Path) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "run.output": str(output),
            "source.format": self.source_format,
            "run.mode": self.mode,
            "run.plots": self.plots,
        }
        if self.source:
            extra["source.path"] = self.source
        if self.records_path:
            extra["source.records_path"] = self.records_path
        if self.label_column:
            extra["source.label_column"] = self.label_column
        return extra

    def describe(self) -> dict[str, Any]:
        """Return the request as JSON-ready fields, for the job record."""
        return {
            "source": self.source,
            "format": self.source_format,
            "records_path": self.records_path,
            "label_column": self.label_column,
            "mode": self.mode,
            "plots": self.plots,
            "settings": self.settings,
        }


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RunRequestError(f"field {name} must be text, got {type(value).__name__} {value!r}")
    if any(ord(character) < 32 for character in value):
        raise RunRequestError(f"field {name} contains a control character; remove line breaks and tabs")
    return value.strip()


def _flag(data: dict[str, Any], name: str, default: bool) -> bool:
    value = data.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "on", "1", "yes", "false", "off", "0", "no"):
        return value.lower() in ("true", "on", "1", "yes")
    raise RunRequestError(f"field {name} must be true or false, got {value!r}")


def _settings(value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise RunRequestError('field settings must be an object of config keys, such as {"detection.contamination": 0.02}')
    for key in value:
        if not isinstance(key, str) or not key.startswith(ALLOWED_SETTING_PREFIXES):
            raise RunRequestError(
                f"setting {key!r} cannot be set from the web app; allowed keys start with {', '.join(ALLOWED_SETTING_PREFIXES)}"
            )
    return dict(value)


@dataclass
class _Job:
    run_id: str
    process: subprocess.Popen[bytes] | None
    record: dict[str, Any]


class RunLauncher:
    """Start runs as child processes under ``output`` and report their status.

    At most ``max_active`` runs execute at once. Each run is a Spark driver
    of its own, so this limit bounds the memory and cores the server uses.
    """

    def __init__(self, output: Path, max_active: int = 2, python: str | None = None) -> None:
        if max_active < 1:
            raise ValueError(f"max_active must be at least 1, got {max_active}")
        self.output = output.resolve()
        self.jobs_dir = self.output / "web" / "jobs"
        self.max_active = max_active
        self.python = python or sys.executable
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    def start(self, request: RunRequest) -> dict[str, Any]:
        """Validate ``request``, start its run in the background and return the run's status.

        Raises :class:`RunRequestError` for an invalid request or a run id
        already in use, and :class:`TooManyRuns` when ``max_active`` runs are
        still running.
        """
        from ..pipeline import new_run_id

        request.validate_config(self.output)
        with self._lock:
            active = [job.run_id for job in self._jobs.values() if job.process is not None and job.process.poll() is None]
            if len(active) >= self.max_active:
                raise TooManyRuns(
                    f"{len(active)} run(s) are in progress ({', '.join(active)}), the maximum for this server; "
                    "retry when one finishes or start the server with a higher --max-runs"
                )
            run_id = request.run_id or new_run_id()
            if (self.output / "runs" / run_id).exists() or self._record_path(run_id).exists():
                raise RunRequestError(f"run id {run_id!r} is already used in {self.output}; choose another run_id")
            command = request.command(self.output, run_id)
            command[0] = self.python
            self.jobs_dir.mkdir(parents=True, exist_ok=True)
            log_path = self._log_path(run_id)
            environment = {k: v for k, v in os.environ.items() if k != "ANOMALY_SPARK_WEB_TOKEN"}
            with open(log_path, "wb") as log:
                # A session of its own keeps the run going when the server stops or gets Ctrl-C.
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=environment,
                    close_fds=True,
                    start_new_session=True,
                )
            record = {
                "run_id": run_id,
                "pid": process.pid,
                "submitted_at": datetime.now(timezone.utc).isoformat(),
                "finished_at": None,
                "exit_code": None,
                "request": request.describe(),
            }
            self._write_record(record)
            self._jobs[run_id] = _Job(run_id, process, record)
        logger.info("run %s started as process %d", run_id, process.pid)
        threading.Thread(target=self._wait, args=(run_id,), name=f"wait-{run_id}", daemon=True).start()
        return self.status(run_id) or {"run_id": run_id, "status": "running"}

    def _wait(self, run_id: str) -> None:
        job = self._jobs[run_id]
        assert job.process is not None
        exit_code = job.process.wait()
        with self._lock:
            job.record.update(exit_code=exit_code, finished_at=datetime.now(timezone.utc).isoformat())
            self._write_record(job.record)
        level = logging.INFO if exit_code == 0 else logging.ERROR
        logger.log(level, "run %s finished: process %d exited with code %d", run_id, job.record["pid"], exit_code)

    def status(self, run_id: str) -> dict[str, Any] | None:
        """Return the status of ``run_id`` from its run folder and job record, or None if neither exists."""
        record = self._record(run_id)
        # The process state is read before the run folder: a process seen as ended has
        # already written everything it ever will, so its summary cannot be missed.
        process_state = self._process_state(run_id, record) if record is not None else None
        run_dir = self.output / "runs" / run_id
        if record is None and not run_dir.is_dir():
            return None
        status: dict[str, Any] = describe_run(run_dir) if run_dir.is_dir() else {"run_id": run_id, "status": "incomplete"}
        if record is not None:
            status["submitted_at"] = record.get("submitted_at")
            status["exit_code"] = record.get("exit_code")
            status["request"] = record.get("request")
            # A run of this server counts as running until its process exits, even after its summary
            # is written, so that a finished status always comes with the exit code.
            own_process_running = run_id in self._jobs and process_state == "running"
            if own_process_running or (status["status"] == "incomplete" and process_state is not None):
                status["status"] = process_state
            if status["status"] == "failed" and not status.get("error"):
                status["error"] = f"the run process exited with code {record.get('exit_code')} before writing run_summary.json"
                status["log_tail"] = self._log_tail(run_id)
        status["links"] = {
            "page": f"/runs/{run_id}",
            "api": f"/api/runs/{run_id}",
            "report": f"/{status['report']}" if status.get("report") else None,
        }
        return status

    def list_runs(self) -> list[dict[str, Any]]:
        """Return the status of every run in the output folder and every job record, newest first."""
        ids: set[str] = set()
        runs_dir = self.output / "runs"
        if runs_dir.is_dir():
            ids.update(entry.name for entry in runs_dir.iterdir() if entry.is_dir() and RUN_ID_PATTERN.match(entry.name))
        if self.jobs_dir.is_dir():
            ids.update(path.stem for path in self.jobs_dir.glob("*.json") if RUN_ID_PATTERN.match(path.stem))
        statuses = [s for s in (self.status(run_id) for run_id in ids) if s is not None]
        statuses.sort(key=lambda s: (s.get("started_at") or s.get("submitted_at") or "", s["run_id"]), reverse=True)
        return statuses

    def running(self) -> list[str]:
        """Return the ids of runs whose process this server started and that are still running."""
        with self._lock:
            return [job.run_id for job in self._jobs.values() if job.process is not None and job.process.poll() is None]

    def terminate_running(self, timeout: float = 30.0) -> list[str]:
        """Stop the runs this server started that are still running (SIGTERM, then SIGKILL) and return their ids."""
        stopped = []
        for job in list(self._jobs.values()):
            if job.process is None or job.process.poll() is not None:
                continue
            job.process.terminate()
            try:
                job.process.wait(timeout)
            except subprocess.TimeoutExpired:
                job.process.kill()
                job.process.wait(timeout)
            logger.warning("run %s stopped: process %d terminated", job.run_id, job.process.pid)
            stopped.append(job.run_id)
        return stopped

    def _process_state(self, run_id: str, record: dict[str, Any]) -> str:
        job = self._jobs.get(run_id)
        if job is not None and job.process is not None:
            return "running" if job.process.poll() is None else "failed"
        if record.get("exit_code") is not None:
            return "failed"
        # A record from an earlier server: the process may still run on its own.
        return "running" if _process_alive(int(record.get("pid") or 0)) else "failed"

    def _record(self, run_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(run_id)
        if job is not None:
            record = dict(job.record)
            if record["exit_code"] is None and job.process is not None and job.process.returncode is not None:
                record["exit_code"] = job.process.returncode
            return record
        path = self._record_path(run_id)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            logger.warning("job record %s is unreadable: %s", path, exc)
            return None
        return data if isinstance(data, dict) else None

    def _write_record(self, record: dict[str, Any]) -> None:
        path = self._record_path(record["run_id"])
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def _log_tail(self, run_id: str) -> list[str]:
        from ..logs import mask_secrets

        path = self._log_path(run_id)
        if not path.is_file():
            return []
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        return [mask_secrets(line) for line in lines[-_LOG_TAIL_LINES:]]

    def _record_path(self, run_id: str) -> Path:
        return self.jobs_dir / f"{run_id}.json"

    def _log_path(self, run_id: str) -> Path:
        return self.jobs_dir / f"{run_id}.log"


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
