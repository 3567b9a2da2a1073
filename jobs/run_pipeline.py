"""spark-submit entry point: parses the ``run`` options and runs the analysis.

Example: ``spark-submit jobs/run_pipeline.py --source data.csv --output out``.
"""

from anomaly_spark.cli import job_main

if __name__ == "__main__":
    job_main()
