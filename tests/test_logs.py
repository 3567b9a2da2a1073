"""JSON-lines run logs, the error log and secret masking."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from anomaly_spark.logs import (
    SecretMaskFilter,
    append_error_record,
    close_run_log,
    configure_logging,
    current_run_id,
    register_secret,
    stage,
)

logger = logging.getLogger("anomaly_spark.tests.logs")

SECRET = "tok-4f9a1c77e2b5-secret"


def _strict_lines(path: Path) -> list[dict[str, Any]]:
    def reject(constant: str) -> None:
        raise AssertionError(f"{path.name} contains {constant}")

    return [json.loads(line, parse_constant=reject) for line in path.read_text(encoding="utf-8").splitlines()]


def test_logs_stage_records_have_every_key(tmp_path: Path) -> None:
    log_file = tmp_path / "log.jsonl"
    timings: dict[str, float] = {}
    configure_logging("run-keys", log_file)
    try:
        with stage(logger, "ingest", timings) as counts:
            logger.info("reading the source")
            counts.update(rows=42, pages=1)
    finally:
        close_run_log("run-keys")
    records = _strict_lines(log_file)
    assert len(records) == 3
    for record in records:
        assert set(record) >= {"time", "level", "run_id", "stage", "event", "message", "counts", "duration_s"}
        assert record["run_id"] == "run-keys"
        assert record["stage"] == "ingest"
        assert record["level"] == "INFO"
    start, inner, end = records
    assert start["event"] == "start"
    assert inner["message"] == "reading the source"
    assert end["event"] == "end"
    assert end["counts"] == {"rows": 42, "pages": 1}
    assert end["duration_s"] == timings["ingest"]
    assert end["duration_s"] >= 0


def test_logs_stage_failure_logged_at_error(tmp_path: Path) -> None:
    log_file = tmp_path / "log.jsonl"
    timings: dict[str, float] = {}
    configure_logging("run-fail", log_file)
    try:
        with pytest.raises(ValueError):
            with stage(logger, "features", timings) as counts:
                counts.update(rows=7)
                raise ValueError("no usable numeric feature")
    finally:
        close_run_log("run-fail")
    failed = _strict_lines(log_file)[-1]
    assert failed["level"] == "ERROR"
    assert failed["event"] == "failed"
    assert failed["error_type"] == "ValueError"
    assert failed["counts"] == {"rows": 7}
    assert "no usable numeric feature" in failed["message"]
    assert "features" in timings


def test_logs_secret_masked_in_every_field(tmp_path: Path) -> None:
    register_secret(SECRET)
    log_file = tmp_path / "log.jsonl"
    configure_logging("run-secret", log_file)
    try:
        logger.info("calling https://127.0.0.1/api?token=%s", SECRET)
        with stage(logger, "ingest", {}) as counts:
            counts.update(url=f"https://127.0.0.1/api?key={SECRET}", header={"Authorization": f"Bearer {SECRET}"})
        try:
            raise RuntimeError(f"request with {SECRET} rejected")
        except RuntimeError:
            logger.exception("fetch failed")
    finally:
        close_run_log("run-secret")
    text = log_file.read_text(encoding="utf-8")
    assert SECRET not in text
    records = _strict_lines(log_file)
    assert "***" in records[0]["message"]
    end = next(r for r in records if r["event"] == "end")
    assert end["counts"]["header"]["Authorization"] == "Bearer ***"
    failure = records[-1]
    assert "RuntimeError: request with *** rejected" in failure["traceback"]


def test_logs_mask_filter_masks_traceback() -> None:
    register_secret(SECRET)
    try:
        raise KeyError(SECRET)
    except KeyError:
        record = logging.LogRecord("anomaly_spark", logging.ERROR, __file__, 1, "failed with %s", (SECRET,), None)
        import sys

        record.exc_info = sys.exc_info()
    assert SecretMaskFilter().filter(record)
    assert SECRET not in record.getMessage()
    assert record.exc_text is not None
    assert SECRET not in record.exc_text


def test_errors_jsonl_one_record_per_error(tmp_path: Path) -> None:
    register_secret(SECRET)
    path = tmp_path / "errors.jsonl"
    for index, stage_name in enumerate(["ingest", "drift"]):
        try:
            raise OSError(f"failure {index} using {SECRET}")
        except OSError as exc:
            append_error_record(path, exc, stage_name, "run-errors")
    records = _strict_lines(path)
    assert [r["stage"] for r in records] == ["ingest", "drift"]
    for index, record in enumerate(records):
        assert record["type"] == "OSError"
        assert record["run_id"] == "run-errors"
        assert record["message"] == f"failure {index} using ***"
        assert "Traceback" in record["traceback"]
    assert SECRET not in path.read_text(encoding="utf-8")


def test_logs_threads_keep_their_own_run(tmp_path: Path) -> None:
    barrier = threading.Barrier(2)
    seen: dict[str, str | None] = {}

    def work(run_id: str) -> None:
        configure_logging(run_id, tmp_path / run_id / "log.jsonl")
        barrier.wait()
        for index in range(20):
            logger.info("%s message %d", run_id, index)
        seen[run_id] = current_run_id()
        close_run_log(run_id)

    threads = [threading.Thread(target=work, args=(name,)) for name in ("run-a", "run-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"run-a": "run-a", "run-b": "run-b"}
    for name in ("run-a", "run-b"):
        records = _strict_lines(tmp_path / name / "log.jsonl")
        assert len(records) == 20
        assert {r["run_id"] for r in records} == {name}
        assert all(r["message"].startswith(name) for r in records)
