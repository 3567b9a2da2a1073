"""Ingest a file or an API into the raw and flat Delta tables of a run."""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.utils import AnalysisException

from ..config import Config
from ..history import retry_on_write_conflict
from ..logs import mask_secrets
from ..storage import storage_level
from .flatten import FlattenError, flatten_records
from .http import ApiError, fetch_api_records

__all__ = [
    "IngestError",
    "IngestResult",
    "ingest_source",
    "read_flat_snapshot",
    "dataset_key_for",
    "ROW_ID",
    "RUN_ID",
    "INGESTED_AT",
]

logger = logging.getLogger(__name__)

ROW_ID = "_row_id"
RUN_ID = "run_id"
INGESTED_AT = "ingested_at"
_EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet"}

RAW_SCHEMA = T.StructType(
    [
        T.StructField(RUN_ID, T.StringType(), False),
        T.StructField(INGESTED_AT, T.TimestampType(), False),
        T.StructField("source", T.StringType(), True),
        T.StructField("page", T.IntegerType(), True),
        T.StructField("url", T.StringType(), True),
        T.StructField("status", T.IntegerType(), True),
        T.StructField("headers", T.StringType(), True),
        T.StructField("fetched_at", T.StringType(), True),
        T.StructField("body", T.StringType(), True),
    ]
)


class IngestError(RuntimeError):
    """The source cannot be read; the message names the source and the fix."""

    exit_code = 10


@dataclass
class IngestResult:
    """Rows, counts and column mapping that ingestion wrote for one run."""

    flat: DataFrame
    rows: int
    dataset_key: str
    source: str
    source_format: str
    column_mapping: dict[str, str]
    pages: int = 0
    retries: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def dataset_key_for(source: str) -> str:
    """Derive a stable dataset key from a path or URL (secrets and query removed)."""
    if re.match(r"^https?://", source, re.I):
        parts = urllib.parse.urlsplit(source)
        text = f"{parts.hostname or ''}{parts.path}"
    else:
        text = Path(source.rstrip("/")).stem or source
    key = re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower()
    return key[:80] or "dataset"


def _detect_format(source: str, requested: str) -> str:
    if requested != "auto":
        return requested
    if re.match(r"^https?://", source, re.I):
        return "api"
    path = Path(source)
    if (path / "_delta_log").is_dir():
        return "delta"
    if path.is_dir():
        files = [p for p in path.iterdir() if not p.name.startswith((".", "_"))]
        suffixes = {p.suffix.lower() for p in files}
        for suffix in suffixes:
            if suffix in _EXTENSIONS:
                return _EXTENSIONS[suffix]
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise IngestError(
            f"cannot tell the format of {source}: use --format csv, json, parquet or delta"
        )
    return fmt


def _json_starts_with_container(path: Path) -> bool:
    """Return True when a local JSON file holds one document (an array or object spanning lines)."""
    target = path
    if path.is_dir():
        candidates = sorted(p for p in path.iterdir() if p.suffix.lower() in (".json",))
        if not candidates:
            return False
        target = candidates[0]
    try:
        with open(target, "r", encoding="utf-8", errors="replace") as handle:
            head = handle.read(4096).lstrip()
    except OSError:
        return False
    if head.startswith("["):
        return True
    if head.startswith("{"):
        # One record per line (JSON Lines) closes its first object on the first line.
        first_line = head.split("\n", 1)[0].strip()
        try:
            json.loads(first_line)
            return False
        except json.JSONDecodeError:
            return True
    return False


def _read_file(spark: SparkSession, source: str, fmt: str, config: Config) -> DataFrame:
    path = Path(source)
    if not re.match(r"^[a-z][a-z0-9+.-]*://", source) and not path.exists():
        raise IngestError(f"source not found: {source}; pass an existing path or an http(s) URL with --source")
    records_path = config.get("source.records_path")
    try:
        if fmt == "csv":
            csv_options = {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in config.get("source.csv").items()}
            if path.suffix.lower() == ".tsv" and "sep" not in (config.get("source.csv") or {}):
                csv_options["sep"] = "\t"
            # Values are read as text; the features stage casts numbers and reports what fails.
            df = spark.read.options(**csv_options).option("inferSchema", "true").option("mode", "PERMISSIVE").csv(source)
        elif fmt == "json":
            multi_line = _json_starts_with_container(path)
            df = spark.read.option("multiLine", str(multi_line).lower()).option("mode", "PERMISSIVE").json(source)
        elif fmt == "parquet":
            df = spark.read.parquet(source)
        elif fmt == "delta":
            df = spark.read.format("delta").load(source)
        else:
            raise IngestError(f"invalid format {fmt!r}; allowed: csv, json, parquet, delta")
    except AnalysisException as exc:
        raise IngestError(f"cannot read {source} as {fmt}: {str(exc).splitlines()[0]}") from None
    if "_corrupt_record" in df.columns:
        bad = df.filter(F.col("_corrupt_record").isNotNull()).count()
        if bad:
            sample = df.filter(F.col("_corrupt_record").isNotNull()).select("_corrupt_record").first()
            preview = (sample[0] if sample else "")[:120]
            raise IngestError(
                f"{bad} record(s) of {source} are not valid {fmt.upper()}, for example {preview!r}; fix the file or use --format"
            )
    if records_path:
        df = _select_records(df, records_path, source, config.get("source.records_key_column"))
    return df


def _select_records(df: DataFrame, records_path: str, source: str, key_column: str) -> DataFrame:
    try:
        selected = df.select(F.col(records_path).alias("_records"))
    except AnalysisException:
        raise IngestError(
            f"records path '{records_path}' not found in {source}; top-level fields: {', '.join(df.columns)}"
        ) from None
    data_type = selected.schema["_records"].dataType
    if isinstance(data_type, T.ArrayType):
        exploded = selected.select(F.explode("_records").alias("_record"))
        if isinstance(data_type.elementType, T.StructType):
            return exploded.select("_record.*")
        return exploded.withColumnRenamed("_record", "value")
    if isinstance(data_type, T.StructType) and data_type.fields and all(isinstance(f.dataType, T.ArrayType) for f in data_type.fields):
        return _gather_dynamic_keys(selected, data_type, key_column)
    if isinstance(data_type, T.StructType):
        return selected.select("_records.*")
    raise IngestError(f"records path '{records_path}' in {source} is a {data_type.simpleString()}, not a list of records")


def _gather_dynamic_keys(selected: DataFrame, data_type: T.StructType, key_column: str) -> DataFrame:
    """Gather the lists held under dynamic keys (such as dates) into one table, the key in ``key_column``.

    Each key's list has its own inferred element type, so the elements pass
    through JSON text and are read again with one schema for all keys.
    """
    parts = [
        selected.select(F.lit(f.name).alias("key"), F.explode(F.col("_records").getField(f.name)).alias("element")).select(
            # Wrapped in an array because to_json takes structs, arrays and maps but not scalars.
            "key", F.to_json(F.array("element")).alias("element")
        )
        for f in data_type.fields
    ]
    combined = parts[0]
    for part in parts[1:]:
        combined = combined.unionByName(part)

    def to_record(row: Any) -> str:
        element = json.loads(row[1])[0]
        record = {key_column: row[0], **element} if isinstance(element, dict) else {key_column: row[0], "value": element}
        return json.dumps(record)

    return combined.sparkSession.read.option("mode", "PERMISSIVE").json(combined.rdd.map(to_record))


def _records_to_df(spark: SparkSession, records: list[Any]) -> DataFrame:
    lines = [json.dumps(record if isinstance(record, dict) else {"value": record}) for record in records]
    rdd = spark.sparkContext.parallelize(lines, numSlices=max(1, min(8, len(lines) // 50_000 + 1)))
    return spark.read.option("mode", "PERMISSIVE").json(rdd)


def _write_raw(spark: SparkSession, raw: DataFrame, output: Path) -> None:
    path = str(output / "delta" / "raw")
    retry_on_write_conflict(
        lambda: raw.write.format("delta").mode("append").partitionBy(RUN_ID).save(path), "append to the raw table"
    )


def ingest_source(
    spark: SparkSession,
    config: Config,
    run_id: str,
    output: Path,
    defer: Callable[[Callable[[], None], str], None] | None = None,
) -> IngestResult:
    """Read the configured source, write the raw and flat Delta tables, return the flat rows of this run.

    Without ``defer``, the raw table is written before the flat table. With
    it, the raw table's write is passed to ``defer`` as an action and a
    description. The caller then runs the action, in a background thread for
    example, and reports its failure.
    """
    source = config.get("source.path")
    fmt = _detect_format(source, config.get("source.format"))
    ingested_at = F.current_timestamp()
    shown_source = mask_secrets(source)
    pages = retries = 0
    extra: dict[str, Any] = {}
    if fmt == "api" or (fmt == "json" and re.match(r"^https?://", source, re.I)):
        fmt = "api"
        result = fetch_api_records(
            source, config.section("api"), config.get("source.records_path"), config.get("source.records_key_column")
        )
        pages, retries = len(result.pages), result.retries
        extra["api"] = {"pages": pages, "retries": retries, "stop_reason": result.stop_reason, "records": len(result.records)}
        page_rows = [
            (p.page, p.url, p.status, json.dumps(p.headers, sort_keys=True), p.fetched_at, p.body) for p in result.pages
        ]
        page_df = spark.createDataFrame(
            page_rows, "page int, url string, status int, headers string, fetched_at string, body string"
        )
        raw = page_df.select(
            F.lit(run_id).alias(RUN_ID), ingested_at.alias(INGESTED_AT), F.lit(shown_source).alias("source"), "*"
        )
        nested = _records_to_df(spark, result.records)
    else:
        nested = _read_file(spark, source, fmt, config)
        raw = nested.select(
            F.lit(run_id).alias(RUN_ID),
            ingested_at.alias(INGESTED_AT),
            F.lit(shown_source).alias("source"),
            F.lit(None).cast("int").alias("page"),
            F.lit(None).cast("string").alias("url"),
            F.lit(None).cast("int").alias("status"),
            F.lit(None).cast("string").alias("headers"),
            F.lit(None).cast("string").alias("fetched_at"),
            F.to_json(F.struct(*[F.col(f"`{c}`") for c in nested.columns])).alias("body"),
        )
    raw = raw.select(*[f.name for f in RAW_SCHEMA.fields])
    if defer is None:
        _write_raw(spark, raw, output)
    else:
        defer(lambda: _write_raw(spark, raw, output), "appending to the raw table")

    flat_path = output / "delta" / "flat"
    table_types = _table_types(spark, flat_path)
    keep_text = [name for name, data_type in table_types.items() if isinstance(data_type, T.StringType)]
    if config.get("source.id_column"):
        keep_text.append(config.get("source.id_column"))
    try:
        flattened = flatten_records(
            nested,
            explode=list(config.get("source.explode") or []),
            null_values=[str(v) for v in config.get("source.null_values") or []],
            max_array_positions=int(config.get("source.max_array_positions")),
            cast_numbers=bool(config.get("source.cast_numbers")),
            keep_text=keep_text,
        )
    except FlattenError as exc:
        raise IngestError(str(exc)) from None
    flat, mapping = flattened.data, flattened.mapping
    extra["flatten"] = flattened.summary()
    reserved = {RUN_ID, INGESTED_AT, ROW_ID}
    clashes = [c for c in flat.columns if c.lower() in reserved]
    for name in clashes:
        flat = flat.withColumnRenamed(name, f"source_{name}")
        mapping = {raw_name: (f"source_{name}" if col == name else col) for raw_name, col in mapping.items()}
    flat = flat.select(
        F.lit(run_id).alias(RUN_ID),
        ingested_at.alias(INGESTED_AT),
        F.monotonically_increasing_id().alias(ROW_ID),
        *[F.col(f"`{c}`") for c in flat.columns],
    )
    flat = _align_to_table(flat, table_types, flat_path)
    # The commit names the run, so its row count can be found in the table's history.
    commit_tag = f"anomaly-spark run {run_id}"
    try:
        retry_on_write_conflict(
            lambda: flat.write.format("delta")
            .mode("append")
            .option("mergeSchema", "true")
            .option("userMetadata", commit_tag)
            .partitionBy(RUN_ID)
            .save(str(flat_path)),
            "append to the flat table",
        )
    except AnalysisException as exc:
        # NOTE: a column whose type differs from an earlier run's in the same output folder cannot be appended.
        raise IngestError(
            f"cannot append the flattened rows to {flat_path}: {str(exc).splitlines()[0]}. "
            "A column changed its type since an earlier run; write this source to its own --output folder."
        ) from None
    written_rows, written_files = _committed_counts(spark, flat_path, commit_tag) or (None, None)
    snapshot = read_flat_snapshot(
        spark, output, run_id, list(mapping.values()), expected_rows=written_rows, expected_files=written_files
    )
    rows = snapshot.count()
    if rows == 0:
        raise IngestError(f"the source {shown_source} contains no records; check the path, the format and source.records_path")
    if fmt == "api":
        expected = extra["api"]["records"] + sum(flattened.exploded.values())
        if rows != expected:
            raise IngestError(f"the flat table contains {rows} rows of run {run_id} but {expected} were expected from the API records")
    logger.info("ingested %d rows with %d columns from %s (%s)", rows, len(mapping), shown_source, fmt)
    return IngestResult(
        flat=snapshot,
        rows=rows,
        dataset_key=dataset_key_for(source),
        source=shown_source,
        source_format=fmt,
        column_mapping=mapping,
        pages=pages,
        retries=retries,
        extra=extra,
    )


def _table_types(spark: SparkSession, path: Path) -> dict[str, T.DataType]:
    """Return the column types of the Delta table at ``path``, or nothing when it does not exist yet."""
    if not (path / "_delta_log").is_dir():
        return {}
    try:
        schema = spark.read.format("delta").load(str(path)).schema
    except AnalysisException as exc:
        # A concurrent run may have created _delta_log without committing its first version yet.
        if "DELTA_TABLE_NOT_FOUND" in str(exc) or "DELTA_EMPTY_DIRECTORY" in str(exc):
            return {}
        raise
    return {f.name.lower(): f.dataType for f in schema.fields}


# Commits of other runs may land between this run's append and its look-up of the row count.
_HISTORY_LOOKBACK = 20
_NUMERIC_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)


def _align_to_table(flat: DataFrame, table_types: dict[str, T.DataType], flat_path: Path) -> DataFrame:
    """Cast columns to the type an earlier run stored, where no value changes meaning.

    Any value fits a text column, and any number fits a double column. Other
    differences (text into a number column) cannot be appended and raise.
    """
    columns: list[Any] = []
    conflicts: list[str] = []
    for f in flat.schema.fields:
        column = F.col(f"`{f.name}`")
        stored = table_types.get(f.name.lower())
        if stored is None or stored == f.dataType or isinstance(f.dataType, T.NullType):
            columns.append(column)
        elif isinstance(stored, T.StringType):
            columns.append(column.cast("string").alias(f.name))
        elif isinstance(stored, (T.DoubleType, T.LongType)) and isinstance(f.dataType, _NUMERIC_TYPES):
            columns.append(column.cast(stored).alias(f.name))
        else:
            conflicts.append(f"{f.name} ({f.dataType.simpleString()}, stored as {stored.simpleString()})")
            columns.append(column)
    if conflicts:
        raise IngestError(
            f"cannot append the flattened rows to {flat_path}: column(s) {', '.join(conflicts)} changed type since an "
            "earlier run; write this source to its own --output folder."
        )
    return flat.select(*columns)


def _committed_counts(spark: SparkSession, path: Path, tag: str) -> tuple[int, int] | None:
    """Return the rows and files that the recent commit with user metadata ``tag`` wrote to the Delta table at ``path``.

    None when none of the last ``_HISTORY_LOOKBACK`` commits carries ``tag`` or
    the commit has no row or file count.
    """
    from delta.tables import DeltaTable

    history = DeltaTable.forPath(spark, str(path)).history(_HISTORY_LOOKBACK)
    for row in history.filter(F.col("userMetadata") == tag).select("operationMetrics").collect():
        metrics = row["operationMetrics"] or {}
        if metrics.get("numOutputRows") is not None and metrics.get("numFiles") is not None:
            return int(metrics["numOutputRows"]), int(metrics["numFiles"])
    return None


def read_flat_snapshot(
    spark: SparkSession,
    output: Path,
    run_id: str,
    columns: list[str],
    expected_rows: int | None = None,
    expected_files: int | None = None,
) -> DataFrame:
    """Read one run's flattened rows back from the flat Delta table, with this run's columns only.

    The result has at least ``defaultParallelism`` partitions and is marked
    for caching, so the stages after ingestion read the Delta table once:
    in memory with disk spill, or on local disk only for a frame larger
    than :data:`~anomaly_spark.storage.MEMORY_CACHE_CELLS` cells. The
    caller's first action fills the cache, and ``unpersist`` releases it.
    ``expected_rows``, when known, chooses the storage level; otherwise a
    count of the rows does. Rows held in fewer files than the default
    parallelism are spread over the cores. ``expected_files``, when known,
    is that number of files; otherwise the table's file list gives it.
    """
    table = spark.read.format("delta").load(str(output / "delta" / "flat"))
    snapshot = table.filter(F.col(RUN_ID) == run_id).select(ROW_ID, *[F.col(f"`{c}`") for c in columns])
    # A count needs no column values, so it reads far less than the passes that follow.
    rows = expected_rows if expected_rows is not None else snapshot.count()
    # A small input is often one file, so one partition, and every later pass would run on one core.
    # Round-robin repartitioning sorts each input partition first, so the row order stays deterministic.
    # A run and its replay decide by the same number: the files that hold the run's rows.
    parallelism = spark.sparkContext.defaultParallelism
    files = expected_files if expected_files is not None else len(snapshot.inputFiles())
    if files < parallelism:
        snapshot = snapshot.repartition(parallelism)
    return snapshot.persist(storage_level(rows, len(columns) + 1))
