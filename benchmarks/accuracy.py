"""Accuracy benchmark: run the whole pipeline on every labelled table and record ROC-AUC per detector.

For each table and mode (simple, complex) the script runs ``run_analysis``
with the table's ``label`` column as the evaluation label (it never reaches
training), then records each model's ROC-AUC, the selected output's ROC-AUC
and which model every label-free criterion would have chosen. It writes

- ``benchmarks/results/accuracy.json`` with every number,
- the ``## Accuracy`` section of ``docs/benchmarks.md``,
- ``anomaly_spark/selection_evidence.json``, the per-rule agreement with
  labels that every run quotes in its trust statement.

One Spark session serves all tables. Usage::

    .venv/bin/python benchmarks/accuracy.py [--tables wbc,cardio] [--modes simple,complex] [--budget 60]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anomaly_spark.config import load_config  # noqa: E402
from anomaly_spark.detectors.builtin import IsolationForestDetector  # noqa: E402
from anomaly_spark.evaluate import METRIC_DIRECTIONS  # noqa: E402
from anomaly_spark.pipeline import run_analysis  # noqa: E402
from anomaly_spark.session import create_spark_session  # noqa: E402

DEFAULT_TABLES = REPO.parent / "shared" / "data" / "benchmarks"
DOC = REPO / "docs" / "benchmarks.md"
EVIDENCE = REPO / "anomaly_spark" / "selection_evidence.json"
RESULTS = REPO / "benchmarks" / "results" / "accuracy.json"

logger = logging.getLogger("benchmarks.accuracy")


def _criterion_pick(models: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """Return the eligible model that ``metric`` alone ranks first, or None when no model has it."""
    direction = METRIC_DIRECTIONS[metric]
    eligible = [m for m in models if m["excluded"] is None and m["metrics"].get(metric) is not None]
    if not eligible:
        return None
    return max(eligible, key=lambda m: direction * m["metrics"][metric])


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _sklearn_forest_auc(path: Path, seed: int) -> float:
    """ROC-AUC of scikit-learn's IsolationForest fitted on all rows (standardized), as a reference."""
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    frame = pd.read_csv(path)
    labels = frame.pop("label").to_numpy()
    x = StandardScaler().fit_transform(frame.to_numpy(dtype=float))
    trees = IsolationForestDetector.params_spec["n_estimators"].default
    forest = IsolationForest(n_estimators=trees, max_samples=min(256, len(x)), random_state=seed).fit(x)
    return float(roc_auc_score(labels, -forest.score_samples(x)))


def run_table(spark: Any, path: Path, mode: str, budget: float, output: Path) -> dict[str, Any]:
    """Run one table in one mode and return the per-model ROC-AUC and the criteria's picks."""
    started = time.perf_counter()
    config = load_config(
        extra={
            "run.output": str(output),
            "run.mode": mode,
            "run.plots": False,
            "source.path": str(path),
            "source.label_column": "label",
            "detection.search.time_budget_s": budget,
        }
    )
    result = run_analysis(config, spark=spark)
    summary = result.summary
    models = summary["models"]
    auc = {m["name"]: m["metrics"].get("roc_auc") for m in models}
    singles = {k: v for k, v in auc.items() if k != "consensus" and v is not None}
    record: dict[str, Any] = {
        "table": path.stem,
        "mode": mode,
        "rows": summary["rows_scored"],
        "seconds": round(time.perf_counter() - started, 1),
        "roc_auc": auc,
        "selected": summary["best_model"]["name"],
        "selected_roc_auc": summary["best_model"]["metrics"].get("roc_auc"),
        "best_model": max(auc, key=lambda k: auc[k] if auc[k] is not None else -1.0),
        "best_roc_auc": max(v for v in auc.values() if v is not None),
        "best_single_roc_auc": max(singles.values()) if singles else None,
        "excluded": {m["name"]: m["excluded"] for m in models if m["excluded"]},
        "criteria": {},
    }
    for metric in METRIC_DIRECTIONS:
        pick = _criterion_pick(models, metric)
        pairs = [(m["metrics"].get(metric), m["metrics"].get("roc_auc")) for m in models]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        record["criteria"][metric] = {
            "pick": pick["name"] if pick else None,
            "pick_roc_auc": pick["metrics"].get("roc_auc") if pick else None,
            "spearman_with_roc_auc": _spearman([METRIC_DIRECTIONS[metric] * a for a, _ in pairs], [b for _, b in pairs]),
        }
    shutil.rmtree(output / "runs" / result.run_id, ignore_errors=True)
    return record


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _evidence(records: list[dict[str, Any]], command: str, date: str) -> dict[str, Any]:
    simple = [r for r in records if r["mode"] == "simple"]
    rules: dict[str, Any] = {}

    def summarise(choices: list[float | None]) -> dict[str, Any]:
        pairs = [(c, r["best_roc_auc"]) for c, r in zip(choices, simple) if c is not None]
        return {
            "tables": len(pairs),
            "mean_roc_auc": _mean([c for c, _ in pairs]),
            "mean_best_roc_auc": _mean([b for _, b in pairs]),
            "tables_within_0_05": sum(1 for c, b in pairs if b - c <= 0.05),
        }

    rules["consensus"] = summarise([r["selected_roc_auc"] for r in simple])
    for metric in METRIC_DIRECTIONS:
        rules[f"ranking:{metric}"] = summarise([r["criteria"][metric]["pick_roc_auc"] for r in simple])
        rules[f"ranking:{metric}"]["mean_spearman_with_roc_auc"] = _mean([r["criteria"][metric]["spearman_with_roc_auc"] for r in simple])
    return {"date": date, "command": command, "mode": "simple", "rules": rules}


def _markdown(records: list[dict[str, Any]], forest: dict[str, float], command: str, date: str, evidence: dict[str, Any]) -> str:
    lines = [
        "## Accuracy",
        "",
        f"Measured {date} with `{command}` on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"({platform.platform()}), Python {platform.python_version()}, Spark local[2]. The `label` column of each table is "
        "used for evaluation only. ROC-AUC per model; `selected` is the model the run chose (rule `consensus`, the default), "
        "`best` the best of our models chosen with hindsight.",
        "",
    ]
    for mode in ("simple", "complex"):
        rows = [r for r in records if r["mode"] == mode]
        if not rows:
            continue
        names = list(dict.fromkeys(name for r in rows for name in r["roc_auc"]))
        lines += [f"### {mode} mode", "", "| table | " + " | ".join(names) + " | selected | best | gap |", "|---" * (len(names) + 4) + "|"]
        for r in rows:
            cells = [_fmt(r["roc_auc"].get(n)) for n in names]
            gap = None if r["selected_roc_auc"] is None else r["best_roc_auc"] - r["selected_roc_auc"]
            lines.append(f"| {r['table']} | " + " | ".join(cells) + f" | {_fmt(r['selected_roc_auc'])} ({r['selected']}) | {_fmt(r['best_roc_auc'])} | {_fmt(gap)} |")
        means = [_fmt(_mean([r["roc_auc"].get(n) for r in rows])) for n in names]
        within = sum(1 for r in rows if r["selected_roc_auc"] is not None and r["best_roc_auc"] - r["selected_roc_auc"] <= 0.05)
        lines.append(
            "| **mean** | " + " | ".join(means) + f" | **{_fmt(_mean([r['selected_roc_auc'] for r in rows]))}** | "
            f"{_fmt(_mean([r['best_roc_auc'] for r in rows]))} | within 0.05 on {within} of {len(rows)} |"
        )
        selected_mean = _mean([r["selected_roc_auc"] for r in rows])
        single_means = {n: _mean([r["roc_auc"].get(n) for r in rows]) for n in names if n != "consensus"}
        best_single = max(single_means, key=lambda n: single_means[n] or -1.0)
        lines += [
            "",
            f"Selected output: mean ROC-AUC {_fmt(selected_mean)}; best single detector by mean: {best_single} "
            f"{_fmt(single_means[best_single])}; within 0.05 of the best of our models on {within} of {len(rows)} tables.",
            "",
            f"Run time: {sum(r['seconds'] for r in rows):.0f} s for {len(rows)} tables.",
            "",
        ]
    lines += [
        "### Label-free selection criteria against labels (simple mode)",
        "",
        "Each row is one rule: the ROC-AUC of the model it chooses, averaged over the tables, and the mean Spearman "
        "correlation between the criterion and ROC-AUC across the models of a table. The default rule is the one with the "
        "highest mean; these numbers ship in `anomaly_spark/selection_evidence.json` and appear in every run's trust statement.",
        "",
        "| rule | mean ROC-AUC of its choice | mean best ROC-AUC | within 0.05 of best | Spearman with ROC-AUC |",
        "|---|---|---|---|---|",
    ]
    for rule, entry in evidence["rules"].items():
        lines.append(
            f"| {rule} | {_fmt(entry['mean_roc_auc'])} | {_fmt(entry['mean_best_roc_auc'])} | "
            f"{entry['tables_within_0_05']} of {entry['tables']} | {_fmt(entry.get('mean_spearman_with_roc_auc'))} |"
        )
    if forest:
        ours = {r["table"]: r["roc_auc"].get("isolation_forest") for r in records if r["mode"] == "simple"}
        lines += [
            "",
            "### Isolation Forest on a bounded sample against scikit-learn on all rows",
            "",
            "Ours: scikit-learn trees fitted on at most `detection.max_train_rows` rows, scored on Spark. Reference: "
            f"scikit-learn's IsolationForest ({IsolationForestDetector.params_spec['n_estimators'].default} trees, 256 rows "
            "per tree, seed 42) fitted and scored on all standardized rows.",
            "",
            "| table | ours | scikit-learn, all rows | difference |",
            "|---|---|---|---|",
        ]
        for table, reference in forest.items():
            mine = ours.get(table)
            lines.append(f"| {table} | {_fmt(mine)} | {_fmt(reference)} | {_fmt(None if mine is None else mine - reference)} |")
        lines.append(f"| **mean** | {_fmt(_mean(list(ours.values())))} | {_fmt(_mean(list(forest.values())))} | |")
    return "\n".join(lines) + "\n"


def _write_section(text: str) -> None:
    """Replace the ``## Accuracy`` section of docs/benchmarks.md, keeping every other section."""
    existing = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    start = existing.find("## Accuracy")
    if start < 0:
        DOC.write_text(existing.rstrip("\n") + "\n\n" + text)
        return
    end = existing.find("\n## ", start + 1)
    DOC.write_text(existing[:start] + text + (existing[end + 1 :] if end >= 0 else ""))


def main() -> None:
    """Parse the options, run every table and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_TABLES, help="folder of labelled CSV tables with a label column")
    parser.add_argument("--tables", default="", help="comma-separated table names (default: every CSV in --data)")
    parser.add_argument("--modes", default="simple,complex", help="comma-separated modes: simple, complex")
    parser.add_argument("--budget", type=float, default=60.0, help="complex-mode search budget per table, in seconds")
    parser.add_argument("--no-write", action="store_true", help="print the results without writing the doc and evidence files")
    parser.add_argument("--report-only", action="store_true", help="rebuild the doc section from benchmarks/results/accuracy.json without running")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.report_only:
        saved = json.loads(RESULTS.read_text())
        evidence = _evidence(saved["records"], saved["command"], saved["date"])
        _write_section(_markdown(saved["records"], saved["sklearn_forest"], saved["command"], saved["date"], evidence))
        return

    paths = sorted(args.data.glob("*.csv"))
    if args.tables:
        wanted = set(args.tables.split(","))
        paths = [p for p in paths if p.stem in wanted]
    if not paths:
        raise SystemExit(f"no CSV tables found in {args.data}")
    modes = args.modes.split(",")
    command = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:])
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    spark = create_spark_session(
        "local[2]",
        "anomaly-spark-accuracy",
        {"spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", "spark.sql.execution.arrow.pyspark.enabled": "true"},
    )
    spark.sparkContext.setLogLevel("ERROR")
    records: list[dict[str, Any]] = []
    forest: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="anomaly-spark-accuracy-") as scratch:
        for path in paths:
            forest[path.stem] = _sklearn_forest_auc(path, 42)
            for mode in modes:
                # One output folder per table: tables with the same column names but other types cannot share a flat table.
                record = run_table(spark, path, mode, args.budget, Path(scratch) / path.stem)
                records.append(record)
                print(f"{record['table']:12s} {mode:8s} selected {record['selected']:28s} {_fmt(record['selected_roc_auc'])} best {_fmt(record['best_roc_auc'])} ({record['seconds']} s)", flush=True)
    spark.stop()
    evidence = _evidence(records, command, date)
    text = _markdown(records, forest, command, date, evidence)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"date": date, "command": command, "records": records, "sklearn_forest": forest}, indent=2))
        if "simple" in modes and not args.tables:
            EVIDENCE.write_text(json.dumps(evidence, indent=2) + "\n")
        _write_section(text)


if __name__ == "__main__":
    main()
