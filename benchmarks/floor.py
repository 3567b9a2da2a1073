"""Time the Delta input and output that every run makes, without any analysis.

One fresh process starts Spark with Delta the way the job does, with its
class-data archive and JIT choice, and reads a Parquet table. It writes the
rows to a raw table (one JSON string per row) and to a flat table, then
reads the flat rows back and counts them. Last, it writes one score per row
and model to a scores table and appends one row to a history table. Each
step's wall time is printed. On a small table this is the least that any
run of the job can take in a fresh JVM.

    .venv/bin/python benchmarks/floor.py --source /tmp/gmm_1e4.parquet --output /tmp/floor
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()

from pyspark.sql import functions as F  # noqa: E402

from anomaly_spark.class_archive import archive_folder  # noqa: E402
from anomaly_spark.config import load_config  # noqa: E402
from anomaly_spark.session import create_spark_session, is_small_local_source  # noqa: E402

MODELS = 8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="Parquet table to read")
    parser.add_argument("--output", type=Path, required=True, help="folder for the Delta tables; deleted first")
    parser.add_argument("--master", default="local[2]", help="Spark master (default: local[2])")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting; repeatable")
    parser.add_argument(
        "--class-archive", action=argparse.BooleanOptionalAction, default=True, help="start the JVM from the job's class-data archive (default: on)"
    )
    parser.add_argument(
        "--small-input",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the job's small-input settings: quick JIT tier only, no whole-stage code generation, no adaptive "
        "execution (default: as the job decides from the size of --source)",
    )
    args = parser.parse_args(argv)
    shutil.rmtree(args.output, ignore_errors=True)

    last = STARTED

    def step(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        print(f"{name:<34} {now - last:6.2f} s", flush=True)
        last = now

    step("interpreter and imports")
    config = load_config()
    conf = {str(k): str(v) for k, v in (config.get("spark.conf") or {}).items()}
    for item in args.conf:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--conf {item!r} is not KEY=VALUE")
        conf[key] = value
    small_input = args.small_input
    if small_input is None:
        small_input = is_small_local_source(str(args.source), float(config.get("spark.small_input_max_mb")))
    archive = archive_folder(config) if args.class_archive else None
    spark = create_spark_session(args.master, "anomaly-spark-floor", conf, class_archive=archive, small_input=small_input)
    step("Spark session with Delta")
    source = spark.read.parquet(str(args.source))
    rows = source.count()
    step(f"read Parquet ({rows} rows)")
    source.select(F.to_json(F.struct(*[F.col(f"`{c}`") for c in source.columns])).alias("body")).write.format("delta").save(
        str(args.output / "raw")
    )
    step("write raw table")
    source.write.format("delta").save(str(args.output / "flat"))
    step("write flat table")
    flat = spark.read.format("delta").load(str(args.output / "flat")).cache()
    flat.count()
    step("read flat table and cache")
    scores = flat.select(
        F.col(f"`{source.columns[0]}`").cast("string").alias("row_key"),
        F.explode(F.array(*[F.struct(F.lit(m).alias("model"), F.rand(m).alias("anomaly_score")) for m in range(MODELS)])).alias("s"),
    ).select("row_key", "s.*")
    scores.write.format("delta").save(str(args.output / "scores"))
    step(f"write scores table ({MODELS} per row)")
    spark.createDataFrame([("run", 1.0)], "metric string, value double").write.format("delta").mode("append").save(
        str(args.output / "history")
    )
    step("append history row")
    spark.stop()
    step("stop Spark")
    print(f"{'total':<34} {time.perf_counter() - STARTED:6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
