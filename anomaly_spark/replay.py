"""Replay a run offline: its saved config and its flat Delta snapshot instead of the source.

A replay reads the rows that the original run stored in ``DIR/delta/flat``,
with the column list saved in its ``columns.json`` and the resolved config
saved in its ``config.json``. It never opens the source, so an API that is
down, changed or rate-limited does not matter. With the same seeds, the
replay's ``scores.csv`` is byte-identical to the original's.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql.utils import AnalysisException

from .config import Config, load_config
from .ingest import IngestResult, dataset_key_for, read_flat_snapshot
from .logs import mask_secrets

__all__ = ["ReplayError", "load_run_config", "replay_ingest", "snapshot_run_id"]

logger = logging.getLogger(__name__)

_MAX_REPLAY_DEPTH = 100


class ReplayError(RuntimeError):
    """The run to replay, its saved config or its snapshot is missing; the message names the path."""

    exit_code = 13


def _check_run_id(run_id: str) -> None:
    from .pipeline import validate_run_id  # imported here because the pipeline imports this module

    try:
        validate_run_id(run_id)
    except ValueError as exc:
        raise ReplayError(str(exc)) from None


def _read_json(path: Path, description: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReplayError(f"{description} not found: {path}; check the run id and --output (the folder that contains runs/)") from None
    except json.JSONDecodeError as exc:
        raise ReplayError(f"{description} {path} is not valid JSON ({exc.msg} at line {exc.lineno}); it cannot be replayed") from None


def load_run_config(output: Path, run_id: str, overrides: dict[str, Any] | None = None) -> Config:
    """Return the resolved config saved by run ``run_id`` in ``output``, pointed at ``output``.

    The saved tree is validated like a user file layered over today's
    defaults, so a key added since the run gets its default and an invalid
    value is reported.

    Raises
    ------
    ReplayError
        When ``config.json`` is missing or unreadable.
    ConfigError
        When a saved value is no longer valid.
    """
    _check_run_id(run_id)
    saved = _read_json(output / "runs" / run_id / "config.json", "saved config of the run")
    tree = saved.get("config") if isinstance(saved, dict) else None
    if not isinstance(tree, dict):
        raise ReplayError(f"{output / 'runs' / run_id / 'config.json'} has no 'config' mapping; it cannot be replayed")
    extra = {"run.output": str(output), **(overrides or {})}
    with tempfile.TemporaryDirectory(prefix="anomaly-spark-replay-") as folder:
        # JSON is valid YAML, so the saved tree goes through the same layering and checks as a --config file.
        path = Path(folder) / "config.json"
        path.write_text(json.dumps(tree), encoding="utf-8")
        return load_config(path, extra=extra)


def snapshot_run_id(output: Path, run_id: str) -> str:
    """Return the run whose flat rows ``run_id`` uses: itself, or for a replay the run it replayed, transitively."""
    _check_run_id(run_id)
    current = run_id
    visited: list[str] = []
    while len(visited) < _MAX_REPLAY_DEPTH:
        if current in visited:
            raise ReplayError(f"the runs {' -> '.join(visited + [current])} replay each other in a loop; none of them has a snapshot")
        visited.append(current)
        saved = _read_json(output / "runs" / current / "config.json", "saved config of the run")
        parent = saved.get("replay_of") if isinstance(saved, dict) else None
        if not parent:
            return current
        current = str(parent)
    raise ReplayError(f"run {run_id} is a replay chain longer than {_MAX_REPLAY_DEPTH} runs")


def replay_ingest(spark: SparkSession, config: Config, replay_of: str, output: Path) -> IngestResult:
    """Read the flat snapshot of ``replay_of`` (or of the run it replayed) in place of the ingest stage.

    Nothing is fetched and nothing is written to the raw or flat tables: the
    replay reuses the original rows, including their ``_row_id``.

    Raises
    ------
    ReplayError
        When the run's ``columns.json`` or its rows in ``delta/flat`` are missing.
    """
    snapshot_run = snapshot_run_id(output, replay_of)
    run_dir = output / "runs" / snapshot_run
    mapping = _read_json(run_dir / "columns.json", "column mapping of the run")
    if not isinstance(mapping, dict) or not mapping:
        raise ReplayError(f"{run_dir / 'columns.json'} lists no columns; run {snapshot_run} stopped before its ingest finished")
    columns = [str(name) for name in mapping.values()]
    flat_path = output / "delta" / "flat"
    try:
        snapshot = read_flat_snapshot(spark, output, snapshot_run, columns)
    except AnalysisException as exc:
        raise ReplayError(
            f"cannot read the rows of run {snapshot_run} from {flat_path}: {str(exc).splitlines()[0]}"
        ) from None
    rows = snapshot.count()
    if rows == 0:
        raise ReplayError(f"{flat_path} contains no rows of run {snapshot_run}; was the table vacuumed or rewritten?")
    original = _original_summary(run_dir)
    source = original.get("source") or mask_secrets(str(config.get("source.path")))
    logger.info("replaying run %s from its snapshot: %d rows, %d columns, no source access", snapshot_run, rows, len(columns))
    return IngestResult(
        flat=snapshot,
        rows=rows,
        dataset_key=original.get("dataset_key") or dataset_key_for(str(config.get("source.path"))),
        source=source,
        source_format=original.get("source_format") or "snapshot",
        column_mapping={str(k): str(v) for k, v in mapping.items()},
        extra={"replay": {"snapshot_run": snapshot_run, "snapshot_table": str(flat_path), "rows": rows}},
    )


def _original_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run_summary.json"
    if not path.exists():
        return {}
    summary = _read_json(path, "run summary")
    return summary if isinstance(summary, dict) else {}
