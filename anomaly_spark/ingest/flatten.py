"""Flatten nested Spark rows into top-level columns with valid, distinct names."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DataType, MapType, StructType

__all__ = ["flatten_records", "sanitize_column_names", "FLATTEN_SEPARATOR"]

FLATTEN_SEPARATOR = "_"


def _leaf_paths(data_type: DataType, path: list[str]) -> list[tuple[list[str], DataType]]:
    if isinstance(data_type, StructType):
        leaves: list[tuple[list[str], DataType]] = []
        for field in data_type.fields:
            leaves.extend(_leaf_paths(field.dataType, path + [field.name]))
        return leaves
    return [(path, data_type)]


def _column_at(path: list[str]) -> Column:
    column = F.col(f"`{path[0]}`")
    for part in path[1:]:
        column = column.getField(part)
    return column


def _safe_name(raw: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")
    name = re.sub(r"[^0-9A-Za-z_]+", "_", ascii_text).strip("_")
    if not name:
        name = "col"
    if name[0].isdigit():
        name = "c_" + name
    return name


def sanitize_column_names(names: list[str]) -> list[str]:
    """Return distinct names made of letters, digits and underscores, in input order.

    Spark resolves column names case-insensitively by default, so names that
    differ only in case, or that clash after cleaning, get a numeric suffix
    (``Name`` and ``name`` become ``Name`` and ``name_2``).
    """
    result: list[str] = []
    taken: set[str] = set()
    for raw in names:
        base = _safe_name(raw)
        candidate = base
        suffix = 2
        while candidate.lower() in taken:
            candidate = f"{base}_{suffix}"
            suffix += 1
        taken.add(candidate.lower())
        result.append(candidate)
    return result


def flatten_records(df: DataFrame, separator: str = FLATTEN_SEPARATOR) -> tuple[DataFrame, dict[str, str]]:
    """Flatten structs into columns and arrays of scalars into positional columns.

    Nested fields become ``parent<sep>child`` columns. An array of scalars
    such as GeoJSON's ``geometry.coordinates`` becomes one column per
    position (``geometry_coordinates_0``, ``_1``, ...), sized by the longest
    array in the data; shorter arrays give nulls. Arrays of objects and maps
    are kept as JSON text. No row is added or removed.

    Returns
    -------
    (DataFrame, dict)
        The flat DataFrame and the mapping from each raw dotted path
        (``geometry.coordinates[0]``) to its column name.
    """
    leaves = _leaf_paths(df.schema, [])
    scalar_arrays = [
        (path, dtype)
        for path, dtype in leaves
        if isinstance(dtype, ArrayType) and not isinstance(dtype.elementType, (StructType, ArrayType, MapType))
    ]
    lengths: dict[str, int] = {}
    if scalar_arrays:
        aggregates = [
            F.max(F.size(_column_at(path))).alias(f"len{index}") for index, (path, _) in enumerate(scalar_arrays)
        ]
        row = df.agg(*aggregates).first()
        for index, (path, _) in enumerate(scalar_arrays):
            value: Any = row[f"len{index}"] if row is not None else None
            lengths[".".join(path)] = max(int(value or 0), 0)

    raw_names: list[str] = []
    expressions: list[Column] = []
    for path, dtype in leaves:
        dotted = ".".join(path)
        column = _column_at(path)
        if dotted in lengths:
            for position in range(lengths[dotted]):
                raw_names.append(f"{dotted}[{position}]")
                expressions.append(column.getItem(position))
        elif isinstance(dtype, (ArrayType, MapType)):
            raw_names.append(dotted)
            expressions.append(F.to_json(column))
        else:
            raw_names.append(dotted)
            expressions.append(column)

    display = [name.replace(".", separator).replace("[", separator).replace("]", "") for name in raw_names]
    mapping = dict(zip(raw_names, sanitize_column_names(display)))
    flat = df.select(*[expr.alias(mapping[raw]) for expr, raw in zip(expressions, raw_names)])
    return flat, mapping
