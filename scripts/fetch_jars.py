"""Resolve Spark's JVM packages (Delta Lake) from Maven Central into the local Ivy cache.

Run once at set-up so that the first analysis and the tests start without
a download. It starts a local SparkSession with the same settings the job
uses and writes a one-row Delta table to prove the jar loads.
"""

from __future__ import annotations

import sys
import tempfile
import time

from anomaly_spark.session import DELTA_PACKAGE, create_spark_session


def main() -> int:
    """Start a local session with Delta, write and read a tiny table, and report the time taken."""
    started = time.perf_counter()
    spark = create_spark_session(master="local[1]", app_name="anomaly-spark-fetch-jars")
    try:
        with tempfile.TemporaryDirectory() as folder:
            spark.range(1).write.format("delta").save(folder + "/probe")
            rows = spark.read.format("delta").load(folder + "/probe").count()
    finally:
        spark.stop()
    if rows != 1:
        print(f"Delta probe read {rows} rows instead of 1", file=sys.stderr)
        return 1
    print(f"resolved {DELTA_PACKAGE} and wrote a Delta table in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
