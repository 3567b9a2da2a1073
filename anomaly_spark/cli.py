"""Command-line interface: ``anomaly-spark run``, ``detectors`` and the job entry points."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from .config import ConfigError, load_config

__all__ = ["main", "cli", "job_main"]

logger = logging.getLogger(__name__)


def _run_options(function: Any) -> Any:
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file layered over conf/default.yaml."),
        click.option("--source", help="Input path (CSV, JSON, Parquet, Delta) or http(s) URL of a JSON API. Default: the bundled sample."),
        click.option("--format", "source_format", type=click.Choice(["auto", "csv", "json", "parquet", "delta"]), help="Input format; auto decides from the extension or URL."),
        click.option("--records-path", help="Dotted path to the list of records inside a JSON document, such as 'features'."),
        click.option("--mode", type=click.Choice(["simple", "complex"]), help="simple: default detector parameters; complex: a parameter search."),
        click.option("--output", type=click.Path(file_okay=False), help="Folder for Delta tables, runs and models. Default: ./output."),
        click.option("--master", help="Spark master URL, such as local[*] or spark://host:7077."),
        click.option("--label-column", help="Ground-truth column (1 = anomaly), used for evaluation only."),
        click.option("--run-id", help="Run id to use instead of a generated one."),
        click.option("--plots/--no-plots", default=None, help="Write PNG plots (default: on)."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one config key, such as detection.contamination=0.02. Repeatable."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def build_config(
    config_file: str | None,
    source: str | None,
    source_format: str | None,
    records_path: str | None,
    mode: str | None,
    output: str | None,
    master: str | None,
    label_column: str | None,
    plots: bool | None,
    overrides: tuple[str, ...],
) -> Any:
    """Resolve the config from the file, ``--set`` overrides and the dedicated options, in that order."""
    extra: dict[str, Any] = {}
    for key, value in (
        ("source.path", source),
        ("source.format", source_format),
        ("source.records_path", records_path),
        ("run.mode", mode),
        ("run.output", output),
        ("spark.master", master),
        ("source.label_column", label_column),
        ("run.plots", plots),
    ):
        if value is not None:
            extra[key] = value
    return load_config(config_file, overrides, extra)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Spark-native anomaly detection: ingest, validate, train, rank and report in one run."""


@cli.command("run")
@_run_options
def run_command(
    config_file: str | None,
    source: str | None,
    source_format: str | None,
    records_path: str | None,
    mode: str | None,
    output: str | None,
    master: str | None,
    label_column: str | None,
    run_id: str | None,
    plots: bool | None,
    overrides: tuple[str, ...],
) -> None:
    """Run the whole analysis on a file, folder or API and write the report."""
    from .pipeline import RunFailed, run_analysis

    try:
        config = build_config(config_file, source, source_format, records_path, mode, output, master, label_column, plots, overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        result = run_analysis(config, run_id=run_id)
    except RunFailed as exc:
        click.echo(f"error: {exc}", err=True)
        if exc.summary_path:
            click.echo(f"failure recorded in {exc.summary_path}", err=True)
        sys.exit(exc.exit_code)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    best = result.summary["best_model"]
    click.echo(f"run id: {result.run_id}")
    click.echo(f"best model: {best['name']} ({result.summary['anomalies_flagged']} of {result.summary['rows_scored']} rows flagged)")
    click.echo(f"report: {result.report_path}")


@cli.command("detectors")
def detectors_command() -> None:
    """List the registered detectors and their parameters."""
    from .detectors import available_detectors

    for name, cls in sorted(available_detectors().items()):
        click.echo(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else ''}")
        for param, spec in cls.params_spec.items():
            click.echo(f"  {param} (default {spec.default!r}; {spec.describe()}): {spec.doc}")


@cli.command("score")
@click.option("--model", "model", default="active", show_default=True, help="'active' (the model named by DIR/models/active.json) or the run id of a saved model.")
@click.option("--source", required=True, help="Input path (CSV, JSON, Parquet, Delta) or http(s) URL with the model's feature columns.")
@click.option("--format", "source_format", type=click.Choice(["auto", "csv", "json", "parquet", "delta"]), help="Input format; auto decides from the extension or URL.")
@click.option("--records-path", help="Dotted path to the list of records inside a JSON document.")
@click.option("--output", type=click.Path(file_okay=False), help="Output folder that holds models/; scores go to runs/<id>/. Default: ./output.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file layered over conf/default.yaml.")
@click.option("--master", help="Spark master URL, such as local[*].")
@click.option("--run-id", help="Id of the scoring output folder instead of a generated one.")
def score_command(
    model: str,
    source: str,
    source_format: str | None,
    records_path: str | None,
    output: str | None,
    config_file: str | None,
    master: str | None,
    run_id: str | None,
) -> None:
    """Score new data with a saved model and write scores.csv the way a run does."""
    from .pipeline import new_run_id, validate_run_id
    from .class_archive import archive_folder
    from .scoring import ScoringError, score_new_data
    from .session import create_spark_session, is_small_local_source

    try:
        config = build_config(config_file, source, source_format, records_path, None, output, master, None, None, ())
        score_id = validate_run_id(run_id) if run_id else new_run_id()
    except (ConfigError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    spark = create_spark_session(
        master=config.get("spark.master"),
        app_name=f"{config.get('spark.app_name')}-score",
        conf=config.get("spark.conf"),
        class_archive=archive_folder(config),
        small_input=is_small_local_source(config.get("source.path"), float(config.get("spark.small_input_max_mb"))),
    )
    try:
        result = score_new_data(spark, config, model, score_id)
    except ScoringError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    click.echo(f"scored {result.rows_scored} rows with the model of run {result.model_run_id}; {result.anomalies_flagged} flagged")
    click.echo(f"scores: {result.run_dir / 'scores.csv'}")


@cli.command("history")
@click.option("--dataset", "dataset_key", help="Show only runs of this dataset key (as in run_summary.json).")
@click.option("--output", type=click.Path(file_okay=False), help="Output folder that contains delta/metrics_history; history.html is written there. Default: ./output.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Number of most recent runs to show and plot.")
@click.option("--master", help="Spark master URL, such as local[*]. Default: spark.master of conf/default.yaml.")
def history_command(dataset_key: str | None, output: str | None, limit: int, master: str | None) -> None:
    """Print the most recent runs as a table and write history.html with trend plots."""
    from .class_archive import archive_folder
    from .history import history_path, run_overview
    from .report.history_page import format_history_table, write_history_page
    from .session import create_spark_session

    config = load_config()
    output_dir = Path(output if output is not None else config.get("run.output")).resolve()
    if not (history_path(output_dir) / "_delta_log").is_dir():
        click.echo(f"error: no metrics history in {output_dir}: {history_path(output_dir)} does not exist; pass the --output folder of your runs", err=True)
        sys.exit(2)
    spark = create_spark_session(
        master=master or config.get("spark.master"),
        app_name=f"{config.get('spark.app_name')}-history",
        conf=config.get("spark.conf"),
        class_archive=archive_folder(config),
        # The metrics history contains a few rows per run.
        small_input=True,
    )
    runs = run_overview(spark, output_dir, dataset_key, limit=limit)
    click.echo(format_history_table(runs))
    page = write_history_page(runs, output_dir, output_dir / "history.html", dataset_key)
    click.echo(f"history page: {page}")


@cli.command("replay")
@click.argument("replay_of", metavar="RUN_ID")
@click.option("--output", type=click.Path(file_okay=False), help="Output folder that holds the run (its runs/ and delta/); the replay is written there too. Default: ./output.")
@click.option("--run-id", help="Run id of the replay instead of a generated one.")
@click.option("--master", help="Spark master URL, such as local[*] or spark://host:7077. Default: the one the run used.")
def replay_command(replay_of: str, output: str | None, run_id: str | None, master: str | None) -> None:
    """Re-run the analysis of RUN_ID from its saved config and flat snapshot, without the source or the network.

    The replay is a new run whose run_summary.json records replay_of; with
    the same seeds its scores.csv is identical to the original's.
    """
    from .pipeline import RunFailed, run_analysis
    from .replay import ReplayError, load_run_config

    output_dir = Path(output if output is not None else load_config().get("run.output")).resolve()
    try:
        config = load_run_config(output_dir, replay_of, {"spark.master": master} if master else None)
    except ReplayError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        raise click.UsageError(f"the saved config of run {replay_of} is no longer valid: {exc}") from None
    try:
        result = run_analysis(config, run_id=run_id, replay_of=replay_of)
    except RunFailed as exc:
        click.echo(f"error: {exc}", err=True)
        if exc.summary_path:
            click.echo(f"failure recorded in {exc.summary_path}", err=True)
        sys.exit(exc.exit_code)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"run id: {result.run_id} (replay of {replay_of})")
    click.echo(f"scores: {result.run_dir / 'scores.csv'}")
    click.echo(f"report: {result.report_path}")


@cli.command("serve")
@click.option("--output", type=click.Path(file_okay=False), default="./output", show_default=True, help="Output folder whose runs the app shows and where new runs write.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind. A non-loopback address requires ANOMALY_SPARK_WEB_TOKEN.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="TCP port to listen on.")
@click.option("--max-runs", type=click.IntRange(min=1), default=2, show_default=True, help="Maximum number of runs executing at once; each is a Spark driver process.")
def serve_command(output: str, host: str, port: int, max_runs: int) -> None:
    """Serve the runs index, reports and history, and start runs from a form or the JSON API.

    When the environment variable ANOMALY_SPARK_WEB_TOKEN is set, starting a
    run requires it as 'Authorization: Bearer TOKEN' (or in the form).
    """
    from .logs import configure_logging
    from .web import serve

    configure_logging("serve")
    try:
        serve(Path(output).resolve(), host=host, port=port, max_runs=max_runs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def main() -> None:
    """Entry point of the ``anomaly-spark`` console script."""
    cli(prog_name="anomaly-spark")


def job_main(argv: list[str] | None = None) -> None:
    """Entry point for spark-submit and wheel tasks: the ``run`` command's options, with or without the word ``run``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "run":
        args = args[1:]
    run_command.main(args=args, prog_name="run_pipeline", standalone_mode=True)
