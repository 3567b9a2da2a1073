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


def main() -> None:
    """Entry point of the ``anomaly-spark`` console script."""
    cli(prog_name="anomaly-spark")


def job_main(argv: list[str] | None = None) -> None:
    """Entry point for spark-submit and wheel tasks: the ``run`` command's options, with or without the word ``run``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "run":
        args = args[1:]
    run_command.main(args=args, prog_name="run_pipeline", standalone_mode=True)
