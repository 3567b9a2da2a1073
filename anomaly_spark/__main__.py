"""``python -m anomaly_spark`` runs the command-line interface."""

from anomaly_spark.cli import main

main()
