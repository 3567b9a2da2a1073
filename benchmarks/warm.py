"""Run the whole job several times in one Python process and one Spark session, and print each run's wall time.

The first run pays for a fresh JVM: class loading, the first Delta write and
the code generation of every new query shape. The later runs show what a
warm session costs, although they do slightly more work, because they also
compare features with the earlier run for drift.

    .venv/bin/python benchmarks/warm.py --source /tmp/gmm_1e4.parquet --output /tmp/warm --runs 3
"""

from __future__ import annotations

import argparse
import shutil
import time

from anomaly_spark.config import load_config
from anomaly_spark.pipeline import run_analysis
from anomaly_spark.session import create_spark_session


def main(argv: list[str] | None = None) -> int:
    """Parse the options, start one session and time ``--runs`` runs of the job on it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="table written by generate.py")
    parser.add_argument("--output", required=True, help="output folder; deleted first")
    parser.add_argument("--runs", type=int, default=3, help="number of runs (default: 3)")
    parser.add_argument("--master", default="local[2]", help="Spark master (default: local[2])")
    args = parser.parse_args(argv)

    shutil.rmtree(args.output, ignore_errors=True)
    overrides = ["source.id_column=id", "features.exclude=[label]", f"spark.master={args.master}", "run.plots=false"]
    config = load_config(None, overrides, {"source.path": args.source, "run.output": args.output})
    started = time.perf_counter()
    spark = create_spark_session(config.get("spark.master"), "anomaly-spark-warm", config.get("spark.conf"))
    print(f"session: {time.perf_counter() - started:.1f} s", flush=True)
    for attempt in range(1, args.runs + 1):
        started = time.perf_counter()
        run_analysis(config, spark=spark)
        print(f"run {attempt}: {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
