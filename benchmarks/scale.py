"""Time the whole anomaly-spark job from 10 thousand to 10 million rows, against two baselines.

For every row count in ``--rows`` the script generates a synthetic table
with ``generate.py`` (or reuses one with the same parameters), then runs as
separate processes, one after another:

- the job, ``anomaly-spark run`` in each mode of ``--modes`` (complex mode
  only at the row counts in ``--complex-rows``);
- ``spark_ml``: a raw Spark ML pass on the same table (mean fill,
  VectorAssembler, StandardScaler, KMeans fit and transform, a count per
  cluster), the floor for one Spark pass;
- ``sklearn``: the same analysis as the job in scikit-learn on one node
  (KMeans fill, scaling, KMeans distance, Gaussian mixture, Isolation
  Forest, 95% quantile threshold, silhouette, scores CSV), skipped when the
  table would not fit in half of the available memory.

Each run records its wall time, CPU time, the stage timings from the run's
``log.jsonl`` (events with ``"event": "end"``), peak memory and the 1-minute
load average before and after. Memory is measured from outside by polling
``/proc`` every ``--poll-s`` seconds over the process tree:

- ``driver_mb``: peak RSS (``VmHWM``) of the Python driver process;
- ``jvm_mb``: peak RSS (``VmHWM``) of the Java process. In local mode this
  one JVM holds the Spark driver and the executor, so it is the executor
  peak as well;
- ``workers_mb``: the largest sum of RSS (``VmRSS``) of the Python worker
  processes (``pyspark.daemon`` and its forks) seen in one poll, so short
  peaks between polls are missed.

With ``--event-log`` (on by default) the job writes Spark's event log with
stage executor metrics, and each job record also gets, per pipeline stage,
the number of Spark jobs, stages and tasks, the summed task run time, and
the slowest Spark stages with their call sites; ``jvm_heap_mb`` is the peak
``JVMHeapMemory`` from the event log.

Results are appended to ``OUT/results.jsonl``; ``OUT/table.md`` and the plot
(``--plot``, default ``OUT/scale.png``) are rebuilt from all records in
that file. ``--report-only`` rebuilds them without running anything.

Example::

    .venv/bin/python benchmarks/scale.py --rows 1e4,1e5 --modes simple,complex --out /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import TableSpec, generate_table, parse_count, read_spec  # noqa: E402

__all__ = ["main", "run_job", "run_baseline", "summarize_event_log", "render_table"]

REPO = Path(__file__).resolve().parents[1]
# Table columns come first in this order; stages the job adds later follow in the order they ran.
STAGES = ["ingest", "features", "preprocess", "train", "evaluate", "artifacts"]
_MB = 1024 * 1024
# Estimated bytes per cell that the scikit-learn baseline keeps in memory at its peak: the raw
# matrix, the standardised and filled copies, the scaled matrix and per-model work arrays.
_SKLEARN_BYTES_PER_CELL = 8 * 8


# ---------------------------------------------------------------------------
# Process-tree memory polling


def _read_status(pid: int) -> dict[str, int]:
    """Return VmHWM and VmRSS of ``pid`` in bytes; empty when the process is gone."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key, amount = line.split(":", 1)
                    values[key] = int(amount.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return values


def _children(pid: int) -> list[int]:
    """Return the direct children of ``pid`` from /proc/PID/task/*/children."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as handle:
                    found += [int(p) for p in handle.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
    except (FileNotFoundError, ProcessLookupError):
        return []
    return found


def _command_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _cpu_ticks(pid: int) -> int:
    """Return the user plus system CPU time of ``pid`` in clock ticks; 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    # Fields 14 and 15 of proc(5), counted after the command name: utime and stime.
    return int(fields[11]) + int(fields[12])


@dataclass
class _MemoryPeaks:
    driver: int = 0
    jvm: int = 0
    workers: int = 0
    roles: dict[int, str] = field(default_factory=dict)
    cpu_ticks: dict[int, int] = field(default_factory=dict)


class TreeMonitor:
    """Poll the memory of a process tree in a background thread.

    Parameters
    ----------
    root : int
        Process id of the Python driver (the started subprocess).
    interval : float
        Seconds between polls.
    """

    def __init__(self, root: int, interval: float) -> None:
        self.root = root
        self.interval = interval
        self.peaks = _MemoryPeaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "TreeMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _role(self, pid: int) -> str:
        # Classified on every poll: spark-class starts as a shell script and then execs java under the same pid.
        command = _command_name(pid)
        if pid == self.root:
            role = "driver"
        elif re.search(r"(^|/)java\s", command):
            role = "jvm"
        elif "python" in command:
            role = "worker"
        else:
            role = "other"
        self.peaks.roles[pid] = role
        return role

    def poll(self) -> None:
        """Take one sample of every process in the tree."""
        pending, seen = [self.root], set()
        worker_rss = 0
        while pending:
            pid = pending.pop()
            if pid in seen:
                continue
            seen.add(pid)
            pending += _children(pid)
            status = _read_status(pid)
            if not status:
                continue
            self.peaks.cpu_ticks[pid] = max(self.peaks.cpu_ticks.get(pid, 0), _cpu_ticks(pid))
            role = self._role(pid)
            if role == "driver":
                self.peaks.driver = max(self.peaks.driver, status.get("VmHWM", 0))
            elif role == "jvm":
                self.peaks.jvm = max(self.peaks.jvm, status.get("VmHWM", 0))
            elif role == "worker":
                worker_rss += status.get("VmRSS", 0)
        self.peaks.workers = max(self.peaks.workers, worker_rss)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)


def _load_average() -> float:
    with open("/proc/loadavg", encoding="ascii") as handle:
        return float(handle.read().split()[0])


def _run_monitored(command: list[str], log_path: Path, interval: float, env: dict[str, str], cwd: Path = REPO) -> dict[str, Any]:
    """Run ``command`` with its output in ``log_path`` and return wall, CPU, exit code and memory peaks."""
    load_before = _load_average()
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        with TreeMonitor(process.pid, interval) as monitor:
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    return {
        "exit_code": process.returncode,
        "wall_s": round(wall, 3),
        # wait4 counts the driver and the descendants it waited for. The driver does not
        # always reap the JVM and the Python workers, so this is a lower bound.
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        # CPU seconds of every process seen in the tree, up to its last poll. Waiting for a
        # processor on a loaded machine adds wall time but no CPU time.
        "tree_cpu_s": round(sum(monitor.peaks.cpu_ticks.values()) / os.sysconf("SC_CLK_TCK"), 3),
        "driver_mb": round(monitor.peaks.driver / _MB, 1),
        "jvm_mb": round(monitor.peaks.jvm / _MB, 1),
        "workers_mb": round(monitor.peaks.workers / _MB, 1),
        "load_before": load_before,
        "load_after": _load_average(),
    }


# ---------------------------------------------------------------------------
# Run logs and Spark event logs


def read_stage_timings(log_path: Path) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Return the seconds per stage and each stage's (start, end) epoch seconds from a run's log.jsonl."""
    durations: dict[str, float] = {}
    spans: dict[str, tuple[float, float]] = {}
    starts: dict[str, float] = {}
    with open(log_path, encoding="utf-8") as handle:
        for line in handle:
            event = json.loads(line)
            name = event.get("stage")
            if not name:
                continue
            moment = datetime.fromisoformat(event["time"]).timestamp()
            if event.get("event") == "start":
                starts[name] = moment
            elif event.get("event") == "end":
                durations[name] = float(event["duration_s"])
                spans[name] = (starts.get(name, moment - float(event["duration_s"])), moment)
    return durations, spans


def _stage_of(moment: float, spans: dict[str, tuple[float, float]]) -> str:
    for name, (start, end) in spans.items():
        if start <= moment <= end:
            return name
    return "outside stages"


def summarize_event_log(path: Path, spans: dict[str, tuple[float, float]], top: int = 5) -> dict[str, Any]:
    """Attribute Spark jobs, stages and task time to pipeline stages, and find the slowest Spark stages.

    Parameters
    ----------
    path : Path
        One application's event log (JSON lines, uncompressed).
    spans : dict
        Pipeline stage name to its (start, end) epoch seconds.
    top : int
        Slowest Spark stages kept per pipeline stage.

    Returns
    -------
    dict
        ``by_stage`` (per pipeline stage: jobs, spark_stages, tasks,
        task_s, busy_s, the time covered by at least one running Spark job,
        and ``slowest``), and ``executor_peaks_mb`` with the peak of each
        executor metric that is measured in bytes.
    """
    jobs: dict[int, float] = {}
    job_spans: list[tuple[float, float]] = []
    stages: list[dict[str, Any]] = []
    task_ms: dict[tuple[int, int], float] = {}
    peaks: dict[str, float] = {}
    for line in _event_lines(path):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a log still being written can end in a partial line
        if not isinstance(event, dict):
            continue
        kind = event.get("Event")
        if kind == "SparkListenerJobStart":
            jobs[event["Job ID"]] = event["Submission Time"] / 1000
        elif kind == "SparkListenerJobEnd" and event["Job ID"] in jobs:
            job_spans.append((jobs.pop(event["Job ID"]), event["Completion Time"] / 1000))
        elif kind == "SparkListenerTaskEnd":
            key = (event["Stage ID"], event["Stage Attempt ID"])
            metrics = event.get("Task Metrics") or {}
            task_ms[key] = task_ms.get(key, 0.0) + float(metrics.get("Executor Run Time", 0))
        elif kind == "SparkListenerStageCompleted":
            info = event["Stage Info"]
            if "Submission Time" not in info or "Completion Time" not in info:
                continue
            stages.append(
                {
                    "key": (info["Stage ID"], info["Stage Attempt ID"]),
                    "start": info["Submission Time"] / 1000,
                    "seconds": (info["Completion Time"] - info["Submission Time"]) / 1000,
                    "tasks": info["Number of Tasks"],
                    "name": info["Stage Name"],
                }
            )
        elif kind in ("SparkListenerStageExecutorMetrics", "SparkListenerExecutorMetricsUpdate"):
            metrics = event.get("Executor Metrics") or {}
            for updates in event.get("Executor Metrics Updated", []) or []:
                metrics = {**metrics, **(updates.get("Executor Metrics") or {})}
            for name, value in metrics.items():
                if "Memory" in name:
                    peaks[name] = max(peaks.get(name, 0.0), float(value))

    by_stage: dict[str, dict[str, Any]] = {}
    for name in [*spans, "outside stages"]:
        by_stage[name] = {"jobs": 0, "spark_stages": 0, "tasks": 0, "task_s": 0.0, "busy_s": 0.0, "slowest": []}
    for start, end in job_spans:
        by_stage[_stage_of(start, spans)]["jobs"] += 1
    for name, intervals in _group_intervals(job_spans, spans).items():
        by_stage[name]["busy_s"] = round(_union_length(intervals), 3)
    for record in stages:
        entry = by_stage[_stage_of(record["start"], spans)]
        entry["spark_stages"] += 1
        entry["tasks"] += record["tasks"]
        entry["task_s"] = round(entry["task_s"] + task_ms.get(record["key"], 0.0) / 1000, 3)
        entry["slowest"].append({"name": _short_call_site(record["name"]), "seconds": round(record["seconds"], 3), "tasks": record["tasks"]})
    for entry in by_stage.values():
        entry["slowest"] = sorted(entry["slowest"], key=lambda s: -s["seconds"])[:top]
    return {
        "by_stage": {k: v for k, v in by_stage.items() if v["jobs"] or v["spark_stages"] or k in spans},
        "executor_peaks_mb": {k: round(v / _MB, 1) for k, v in sorted(peaks.items())},
    }


def _event_lines(path: Path) -> Iterable[str]:
    """Yield the lines of an event log file, or of every part of a rolling event log folder in order."""
    parts = [path]
    if path.is_dir():
        parts = sorted(path.glob("events_*"), key=lambda p: int(p.name.split("_")[1]))
    for part in parts:
        with open(part, encoding="utf-8", errors="replace") as handle:
            yield from handle


def _group_intervals(intervals: list[tuple[float, float]], spans: dict[str, tuple[float, float]]) -> dict[str, list[tuple[float, float]]]:
    grouped: dict[str, list[tuple[float, float]]] = {}
    for start, end in intervals:
        grouped.setdefault(_stage_of(start, spans), []).append((start, end))
    return grouped


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None and current_start is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None and current_start is not None:
        total += current_end - current_start
    return total


def _short_call_site(name: str) -> str:
    """Shorten ``collect at /abs/path/anomaly_spark/x.py:12`` to ``collect at anomaly_spark/x.py:12``."""
    return re.sub(r"\S*/(anomaly_spark/|benchmarks/|pyspark/)", r"\1", name)


# ---------------------------------------------------------------------------
# Data, job and baselines


def ensure_table(data_dir: Path, spec: TableSpec) -> Path:
    """Return the folder of the table for ``spec``, generating it unless an identical one exists."""
    path = data_dir / f"gmm_{spec.rows}x{spec.features}_m{spec.missing:g}_s{spec.seed}.parquet"
    if read_spec(path) == spec:
        return path
    print(f"generating {spec.rows} rows into {path}", flush=True)
    generate_table(spec, path, overwrite=True)
    return path


def code_version(code: Path) -> str:
    """Return the commit of the code folder, with ``+dirty`` when its package has uncommitted changes.

    A folder outside git, such as one unpacked from ``git archive``, is named by its path.
    """
    def git(*arguments: str) -> str:
        result = subprocess.run(["git", *arguments], cwd=code, capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    if git("rev-parse", "--show-toplevel") != str(code.resolve()):
        return f"snapshot {code}"
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "anomaly_spark") else "")


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env["PYSPARK_PYTHON"] = sys.executable
    return env


def run_job(data: Path, rows: int, mode: str, args: argparse.Namespace, repeat: int) -> dict[str, Any]:
    """Run ``anomaly-spark run`` once on ``data`` and return its measurements."""
    run_id = f"scale-{rows}-{mode}-{repeat}-{int(time.time())}"
    output = args.out / "job_output" / run_id
    event_dir = args.out / "eventlog" / run_id
    # ``python -m anomaly_spark`` started in the code folder imports the package from that folder
    # (it comes first on sys.path), whatever version the installed entry point points at.
    command = [
        sys.executable,
        "-m",
        "anomaly_spark",
        "run",
        "--source", str(data),
        "--output", str(output),
        "--run-id", run_id,
        "--mode", mode,
        "--no-plots",
        "--set", f"spark.master={args.master}",
        "--set", "source.id_column=id",
    ]
    command += ["--label-column", "label"] if args.with_label else ["--set", "features.exclude=[label]"]
    if args.event_log:
        event_dir.mkdir(parents=True, exist_ok=True)
        for key, value in (
            ("spark.eventLog.enabled", "true"),
            ("spark.eventLog.dir", event_dir.as_uri()),
            ("spark.eventLog.logStageExecutorMetrics", "true"),
            ("spark.executor.processTreeMetrics.enabled", "true"),
            # Spark 4.0 writes zstd-compressed event logs by default, and Python 3.11 cannot read zstd.
            ("spark.eventLog.compress", "false"),
        ):
            command += ["--set", f"spark.conf.{key}={value}"]
    for extra in args.job_set:
        command += ["--set", extra]

    log_dir = args.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"job {mode} {rows} rows (run {repeat + 1}); load {_load_average():.2f}", flush=True)
    record: dict[str, Any] = {"kind": "job", "mode": mode, "rows": rows, "repeat": repeat, "run_id": run_id, "code": code_version(args.code)}
    record.update(_run_monitored(command, log_dir / f"{run_id}.out", args.poll_s, _environment(), cwd=args.code))

    run_log = output / "runs" / run_id / "log.jsonl"
    if run_log.is_file():
        durations, spans = read_stage_timings(run_log)
        record["stages_s"] = durations
        record["startup_s"] = round(record["wall_s"] - sum(durations.values()), 3)
        event_logs = sorted(event_dir.glob("*")) if args.event_log else []
        if event_logs:
            record["spark"] = summarize_event_log(event_logs[-1], spans)
            record["jvm_heap_mb"] = record["spark"]["executor_peaks_mb"].get("JVMHeapMemory")

    summary_path = output / "runs" / run_id / "run_summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        record["status"] = summary.get("status")
        record["rows_scored"] = summary.get("rows_scored")
        record["best_model"] = (summary.get("best_model") or {}).get("name")
    if record["exit_code"] != 0:
        print(f"  job failed with exit code {record['exit_code']}; output in {log_dir / (run_id + '.out')}", flush=True)
    if not args.keep_output:
        shutil.rmtree(output, ignore_errors=True)
    return record


def _sklearn_fits(rows: int, features: int) -> tuple[bool, str]:
    needed = rows * features * _SKLEARN_BYTES_PER_CELL
    available = 0
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    if needed > available / 2:
        return False, f"needs about {needed / _MB:.0f} MB, more than half of the {available / _MB:.0f} MB available"
    return True, ""


def run_baseline(kind: str, data: Path, rows: int, args: argparse.Namespace, repeat: int) -> dict[str, Any]:
    """Run one baseline (``spark_ml`` or ``sklearn``) as a subprocess and return its measurements."""
    record: dict[str, Any] = {"kind": kind, "mode": "-", "rows": rows, "repeat": repeat}
    if kind == "sklearn":
        fits, reason = _sklearn_fits(rows, args.features)
        if not fits:
            print(f"sklearn baseline at {rows} rows skipped: {reason}", flush=True)
            record.update(exit_code=None, skipped=reason)
            return record
    log_dir = args.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    name = f"{kind}-{rows}-{repeat}-{int(time.time())}"
    result_file = log_dir / f"{name}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--baseline", kind, "--data", str(data), "--master", args.master, "--result-file", str(result_file), "--out", str(args.out)]
    print(f"baseline {kind} {rows} rows (run {repeat + 1}); load {_load_average():.2f}", flush=True)
    record.update(_run_monitored(command, log_dir / f"{name}.out", args.poll_s, _environment()))
    if result_file.is_file():
        inner = json.loads(result_file.read_text(encoding="utf-8"))
        record["stages_s"] = inner["stages_s"]
        # Like the job's, the start-up time includes the Spark session: everything outside the stages.
        record["startup_s"] = round(record["wall_s"] - sum(v for k, v in inner["stages_s"].items() if k != "session"), 3)
    elif record["exit_code"] != 0:
        print(f"  baseline failed with exit code {record['exit_code']}; output in {log_dir / (name + '.out')}", flush=True)
    return record


def _baseline_spark_ml(data: Path, master: str) -> dict[str, float]:
    """Mean fill, VectorAssembler, StandardScaler, KMeans fit and transform; return seconds per step."""
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.feature import StandardScaler, VectorAssembler
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    timings: dict[str, float] = {}
    started = time.perf_counter()
    spark = (
        SparkSession.builder.master(master)
        .appName("scale-baseline-spark-ml")
        # The job's defaults, so the floor runs with the same partitioning and driver heap.
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.driver.memory", "2g")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    timings["session"] = time.perf_counter() - started

    started = time.perf_counter()
    df = spark.read.parquet(str(data))
    features = [c for c in df.columns if c not in ("id", "label")]
    means = df.agg(*[F.avg(c).alias(c) for c in features]).first()
    assert means is not None
    filled = df.na.fill({c: float(means[c] or 0.0) for c in features})
    assembled = VectorAssembler(inputCols=features, outputCol="raw").transform(filled)
    scaled = StandardScaler(inputCol="raw", outputCol="features", withMean=True, withStd=True).fit(assembled).transform(assembled)
    timings["preprocess"] = time.perf_counter() - started

    started = time.perf_counter()
    # The parameters of the job's kmeans_distance detector.
    model = KMeans(k=8, maxIter=50, seed=42, initSteps=5, featuresCol="features").fit(scaled)
    counts = model.transform(scaled).groupBy("prediction").count().collect()
    assert sum(row["count"] for row in counts) > 0
    timings["train"] = time.perf_counter() - started
    spark.stop()
    return {k: round(v, 3) for k, v in timings.items()}


def _nearest_on_observed(z: Any, observed: Any, centroids: Any) -> Any:
    import numpy as np

    filled = np.where(observed, z, 0.0)
    diff = filled[:, None, :] - centroids[None, :, :]
    squared = np.einsum("rkf,rkf->rk", diff * observed[:, None, :], diff)
    return np.argmin(squared / np.maximum(observed.sum(axis=1, keepdims=True), 1), axis=1)


def _squared_euclidean_silhouette(x: Any, flags: Any) -> float | None:
    """Silhouette of a two-group split with squared Euclidean distance, as Spark's ClusteringEvaluator defines it."""
    import numpy as np

    groups = [flags == value for value in (0, 1)]
    if not all(g.any() for g in groups):
        return None
    norms = np.einsum("ij,ij->i", x, x)
    # Mean squared distance from every row to each group, from the group's mean and mean squared norm.
    mean_distance = np.column_stack([norms - 2 * x @ x[g].mean(axis=0) + norms[g].mean() for g in groups])
    own = mean_distance[np.arange(len(x)), flags]
    other = mean_distance[np.arange(len(x)), 1 - flags]
    sizes = np.array([g.sum() for g in groups])[flags]
    # A row's own-group mean includes its zero distance to itself; Spark rescales by n / (n - 1).
    own = np.where(sizes > 1, own * sizes / np.maximum(sizes - 1, 1), 0.0)
    scores = np.where(sizes > 1, (other - own) / np.maximum(np.maximum(own, other), 1e-300), 0.0)
    return float(scores.mean())


def _baseline_sklearn(data: Path, out: Path) -> dict[str, float]:
    """The job's analysis on one node with numpy and scikit-learn; return seconds per step."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq
    from sklearn.cluster import KMeans
    from sklearn.ensemble import IsolationForest
    from sklearn.mixture import GaussianMixture

    timings: dict[str, float] = {}
    seed, max_train_rows, contamination = 42, 100_000, 0.05

    started = time.perf_counter()
    table = pq.read_table(str(data))
    features = [c for c in table.column_names if c not in ("id", "label")]
    x = table.select(features).to_pandas().to_numpy(dtype=float)
    ids = table.column("id").to_numpy()
    timings["ingest"] = time.perf_counter() - started

    # The job's KMeansImputer: standardise, mean-seeded KMeans, 3 refinement rounds on observed values, fill.
    started = time.perf_counter()
    observed = ~np.isnan(x)
    means, stds = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    stds[stds == 0] = 1.0
    z = (x - means) / stds
    centroids = KMeans(n_clusters=8, n_init=1, max_iter=30, random_state=seed).fit(np.where(observed, z, 0.0)).cluster_centers_
    chunk = 200_000
    for _ in range(3):
        sums = np.zeros_like(centroids)
        counts = np.zeros_like(centroids)
        for start in range(0, len(z), chunk):
            part, seen = z[start : start + chunk], observed[start : start + chunk]
            nearest = _nearest_on_observed(part, seen, centroids)
            np.add.at(sums, nearest, np.where(seen, part, 0.0))
            np.add.at(counts, nearest, seen)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    for start in range(0, len(z), chunk):
        part, seen = z[start : start + chunk], observed[start : start + chunk]
        nearest = _nearest_on_observed(part, seen, centroids)
        z[start : start + chunk] = np.where(seen, part, centroids[nearest])
    z[~observed.any(axis=1)] = 0.0
    filled = z * stds + means
    scaled = (filled - filled.mean(axis=0)) / np.where(filled.std(axis=0, ddof=1) == 0, 1.0, filled.std(axis=0, ddof=1))
    timings["preprocess"] = time.perf_counter() - started

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    sample = scaled[rng.choice(len(scaled), size=min(max_train_rows, len(scaled)), replace=False)]
    scores = {
        "kmeans_distance": KMeans(n_clusters=8, n_init=1, max_iter=50, random_state=seed).fit(scaled).transform(scaled).min(axis=1),
        "gaussian_mixture": -GaussianMixture(n_components=4, max_iter=100, tol=1e-4, random_state=seed).fit(sample).score_samples(scaled),
        "isolation_forest": -IsolationForest(n_estimators=200, max_samples=min(256, len(sample)), random_state=seed, n_jobs=2).fit(sample).score_samples(scaled),
    }
    timings["train"] = time.perf_counter() - started

    started = time.perf_counter()
    silhouettes: dict[str, float | None] = {}
    flags: dict[str, Any] = {}
    for name, score in scores.items():
        threshold = np.quantile(score, 1 - contamination)
        flags[name] = (score > threshold).astype(int)
        silhouettes[name] = _squared_euclidean_silhouette(scaled, flags[name])
    ranked = {name: value if value is not None else -np.inf for name, value in silhouettes.items()}
    best = max(ranked, key=lambda name: ranked[name])
    timings["evaluate"] = time.perf_counter() - started

    started = time.perf_counter()
    scores_dir = out / "sklearn_scores"
    scores_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(filled, columns=features)
    frame.insert(0, "id", ids)
    frame["anomaly_score"] = scores[best]
    frame["is_anomaly"] = flags[best]
    frame["model"] = best
    frame.to_csv(scores_dir / "scores.csv", index=False)
    shutil.rmtree(scores_dir)
    timings["artifacts"] = time.perf_counter() - started
    return {k: round(v, 3) for k, v in timings.items()}


# ---------------------------------------------------------------------------
# Report


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _grouped(records: list[dict[str, Any]]) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for record in records:
        if record.get("exit_code") == 0:
            groups.setdefault((record["kind"], record["mode"], record["rows"]), []).append(record)
    return groups


def render_table(records: list[dict[str, Any]]) -> str:
    """Return a Markdown table of median figures per kind, mode and row count, then the ratios."""
    groups = _grouped(records)
    stages = list(STAGES)
    for record in records:
        if record.get("kind") == "job" and record.get("exit_code") == 0:
            stages += [name for name in record.get("stages_s", {}) if name not in stages]
    header = (
        "| rows | run | n | wall s | CPU s | start-up s | "
        + " | ".join(stages)
        + " | driver MB | JVM MB | workers MB | load 1-min before / after |"
    )
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    order = {"job": 0, "spark_ml": 1, "sklearn": 2}
    for (kind, mode, rows), group in sorted(groups.items(), key=lambda item: (item[0][2], order.get(item[0][0], 9), item[0][1])):
        label = f"job {mode}" if kind == "job" else kind
        stage_cells = []
        for name in stages:
            value = _median(r.get("stages_s", {}).get(name) for r in group)
            stage_cells.append(f"{value:.1f}" if value is not None else "")
        loads = ", ".join(f"{r['load_before']:.1f} / {r['load_after']:.1f}" for r in group)
        cells = [
            f"{rows:.0e}".replace("e+0", "e"),
            label,
            str(len(group)),
            f"{_median(r['wall_s'] for r in group):.1f}",
            _format(_median(r.get("tree_cpu_s") for r in group)),
            _format(_median(r.get("startup_s") for r in group)),
            *stage_cells,
            _format(_median(r.get("driver_mb") for r in group), 0),
            _format(_median(r.get("jvm_mb") for r in group), 0),
            _format(_median(r.get("workers_mb") for r in group), 0),
            loads,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *render_ratios(records)]
    return "\n".join(lines) + "\n"


def _format(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def render_ratios(records: list[dict[str, Any]]) -> list[str]:
    """Return Markdown lines with the ratios of the job to each baseline and between row counts."""
    groups = _grouped(records)
    wall = {key: _median(r["wall_s"] for r in group) for key, group in groups.items()}
    cpu = {key: _median(r.get("tree_cpu_s") for r in group) for key, group in groups.items()}
    row_counts = sorted({key[2] for key in wall})
    lines = [
        "Ratios of median wall time, with the ratio of median CPU time in brackets.",
        "",
        "| rows | simple / spark_ml | simple / sklearn | complex / simple | simple t(rows) / t(rows / 10) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for rows in row_counts:
        simple = ("job", "simple", rows)
        cells = [
            _ratio(wall, cpu, simple, ("spark_ml", "-", rows)),
            _ratio(wall, cpu, simple, ("sklearn", "-", rows)),
            _ratio(wall, cpu, ("job", "complex", rows), simple),
            _ratio(wall, cpu, simple, ("job", "simple", rows // 10)),
        ]
        lines.append(f"| {rows:.0e} | ".replace("e+0", "e") + " | ".join(cells) + " |")
    return lines


def _ratio(wall: dict[Any, float | None], cpu: dict[Any, float | None], numerator: Any, denominator: Any) -> str:
    def divide(values: dict[Any, float | None]) -> str:
        top, bottom = values.get(numerator), values.get(denominator)
        return f"{top / bottom:.2f}" if top is not None and bottom else ""

    wall_ratio, cpu_ratio = divide(wall), divide(cpu)
    return f"{wall_ratio} ({cpu_ratio})" if wall_ratio and cpu_ratio else wall_ratio


def render_plot(records: list[dict[str, Any]], path: Path) -> None:
    """Plot the median wall time (solid) and CPU time (dashed) against rows, log-log, per kind and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float, float]]] = {}
    for (kind, mode, rows), group in _grouped(records).items():
        label = f"anomaly-spark {mode}" if kind == "job" else {"spark_ml": "raw Spark ML pass", "sklearn": "scikit-learn, one node"}.get(kind, kind)
        wall = _median(r["wall_s"] for r in group) or 0.0
        cpu = _median(r.get("tree_cpu_s") for r in group) or 0.0
        series.setdefault(label, []).append((rows, wall, cpu))
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for label, points in sorted(series.items()):
        points.sort()
        (line,) = axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{label}, wall")
        axes.plot([p[0] for p in points], [p[2] for p in points], marker="x", linestyle="--", color=line.get_color(), label=f"{label}, CPU")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("rows (20 features, 5% missing cells)")
    axes.set_ylabel("seconds per process (median)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def machine_info() -> dict[str, Any]:
    """Return the processor count, memory, CPU model and the versions of Python, Java and Spark."""
    cpu = ""
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False).stderr.splitlines()
    versions: dict[str, str] = {}
    for module in ("pyspark", "sklearn", "numpy", "pyarrow"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = "not installed"
    return {
        "nproc": os.cpu_count(),
        "memory": subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout.strip(),
        "cpu": cpu,
        "python": platform.python_version(),
        "java": java[0] if java else "not found",
        **versions,
    }


# ---------------------------------------------------------------------------
# Command line


def _counts_argument(text: str) -> list[int]:
    try:
        return [parse_count(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=_counts_argument, default=[10**4, 10**5, 10**6, 10**7], help="comma-separated row counts (default: 1e4,1e5,1e6,1e7)")
    parser.add_argument("--modes", default="simple,complex", help="comma-separated job modes: simple, complex (default: both)")
    parser.add_argument("--complex-rows", type=_counts_argument, default=[10**5, 10**6], help="row counts at which complex mode runs (default: 1e5,1e6)")
    parser.add_argument("--baselines", default="spark_ml,sklearn", help="comma-separated baselines: spark_ml, sklearn, or none (default: both)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each job and baseline per row count (default: 1)")
    parser.add_argument("--features", type=int, default=20, help="feature columns of the generated tables (default: 20)")
    parser.add_argument("--missing", type=float, default=0.05, help="share of missing feature cells (default: 0.05)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the generated tables (default: 42)")
    parser.add_argument("--master", default="local[2]", help="Spark master of the job and the Spark baseline (default: local[2])")
    # Required because OUT/data holds the generated tables, 1.9 GB at 1e7 rows, which do not belong in the repository.
    parser.add_argument("--out", type=Path, required=True, help="folder for results.jsonl, table.md, logs, event logs and (by default) the generated tables")
    parser.add_argument("--data-dir", type=Path, help="folder for generated tables (default: OUT/data)")
    parser.add_argument("--plot", type=Path, help="PNG of wall time against rows (default: OUT/scale.png)")
    parser.add_argument("--code", type=Path, default=REPO, help="folder whose anomaly_spark package the job runs, such as a `git archive` of one commit (default: this work tree)")
    parser.add_argument("--with-label", action="store_true", help="pass the generated label column to the job, which then also computes ROC-AUC and PR-AUC")
    parser.add_argument("--event-log", action=argparse.BooleanOptionalAction, default=True, help="write and summarise Spark's event log of each job run (default: on)")
    parser.add_argument("--keep-output", action="store_true", help="keep each job's output folder (Delta tables, scores.csv); by default it is deleted after reading the log")
    parser.add_argument("--poll-s", type=float, default=0.2, help="seconds between memory polls (default: 0.2)")
    parser.add_argument("--set", dest="job_set", action="append", default=[], metavar="KEY=VALUE", help="extra --set passed to every job run; repeatable")
    parser.add_argument("--report-only", action="store_true", help="rebuild table.md and the plot from OUT/results.jsonl without running anything")
    parser.add_argument("--baseline", choices=["spark_ml", "sklearn"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    return parser


def _write_report(args: argparse.Namespace) -> None:
    results = args.out / "results.jsonl"
    records = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line.strip()] if results.is_file() else []
    table = render_table(records)
    (args.out / "table.md").write_text(table, encoding="utf-8")
    plot = args.plot or args.out / "scale.png"
    if records:
        render_plot(records, plot)
    print(table)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark described by the command line and write its results."""
    args = _parser().parse_args(argv)
    args.out = args.out.resolve()
    args.code = args.code.resolve()
    if not (args.code / "anomaly_spark" / "__main__.py").is_file():
        print(f"error: invalid --code {args.code}: it has no anomaly_spark/__main__.py; pass the repository root or an unpacked `git archive`", file=sys.stderr)
        return 2
    if args.baseline:
        # Internal: one baseline inside this process, called by run_baseline.
        if args.data is None or args.result_file is None:
            print("error: --baseline needs --data and --result-file", file=sys.stderr)
            return 2
        timings = _baseline_spark_ml(args.data, args.master) if args.baseline == "spark_ml" else _baseline_sklearn(args.data, args.out)
        args.result_file.write_text(json.dumps({"stages_s": timings}), encoding="utf-8")
        return 0

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip() and b.strip() != "none"]
    for value, allowed, option in ((modes, {"simple", "complex"}, "--modes"), (baselines, {"spark_ml", "sklearn"}, "--baselines")):
        unknown = sorted(set(value) - allowed)
        if unknown:
            print(f"error: invalid {option} value(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}", file=sys.stderr)
            return 2
    if args.repeat < 1:
        print(f"error: invalid --repeat {args.repeat}; use at least 1", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        _write_report(args)
        return 0

    (args.out / "machine.json").write_text(json.dumps(machine_info(), indent=2) + "\n", encoding="utf-8")
    data_dir = (args.data_dir or args.out / "data").resolve()
    results = args.out / "results.jsonl"
    for rows in args.rows:
        data = ensure_table(data_dir, TableSpec(rows=rows, features=args.features, missing=args.missing, seed=args.seed))
        runs: list[dict[str, Any]] = []
        for repeat in range(args.repeat):
            for mode in modes:
                if mode == "complex" and rows not in args.complex_rows:
                    continue
                runs.append(run_job(data, rows, mode, args, repeat))
                _append(results, runs[-1])
            for kind in baselines:
                runs.append(run_baseline(kind, data, rows, args, repeat))
                _append(results, runs[-1])
        for record in runs:
            print(f"  {record['kind']} {record['mode']} {rows}: exit {record.get('exit_code')}, wall {record.get('wall_s')} s", flush=True)
    _write_report(args)
    return 0


def _append(path: Path, record: dict[str, Any]) -> None:
    record["finished_at"] = datetime.now().astimezone().isoformat(timespec="seconds")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    sys.exit(main())
