"""Writers for run artifacts: strict JSON, CSV tables and streamed score rows."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

from pyspark.sql import DataFrame

from .logs import mask_secrets

__all__ = ["to_json_safe", "write_json", "write_csv_rows", "stream_csv"]


def to_json_safe(value: Any) -> Any:
    """Return a copy with NaN and infinities replaced by None and numpy scalars made plain."""
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: Any) -> Path:
    """Write strict JSON (no NaN or Infinity) atomically, with secrets masked."""
    text = json.dumps(to_json_safe(data), indent=2, sort_keys=False, allow_nan=False, default=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(mask_secrets(text) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_csv_rows(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Write rows to a CSV file atomically and return how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v for v in row])
            count += 1
    os.replace(tmp, path)
    return count


def stream_csv(df: DataFrame, path: Path) -> int:
    """Write every row of ``df`` to one CSV file with a header, and return the number of rows in the file.

    The executors write the rows in parallel with Spark's CSV writer into a
    folder beside ``path``. The driver then joins the part files in
    partition order by copying bytes. No row passes through Python, and
    driver memory does not grow with the rows. The folder must be on a file
    system that the driver reads as a local path, as the run folder is.
    """
    parts = path.with_name(f".{path.name}.parts")
    shutil.rmtree(parts, ignore_errors=True)
    df.write.option("header", "false").option("escape", '"').csv(str(parts))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    newlines = 0
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerow(df.columns)
    with open(tmp, "ab") as out:
        for part in sorted(parts.glob("part-*")):
            with open(part, "rb") as source:
                while chunk := source.read(1 << 20):
                    newlines += chunk.count(b"\n")
                    out.write(chunk)
    shutil.rmtree(parts, ignore_errors=True)
    rows = newlines
    if rows != df.count():
        # A quoted value with a line break spans two lines, so count records with the CSV parser instead.
        with open(tmp, newline="", encoding="utf-8") as handle:
            rows = sum(1 for _ in csv.reader(handle)) - 1
    os.replace(tmp, path)
    return rows
