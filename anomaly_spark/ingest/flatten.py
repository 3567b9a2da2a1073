"""Flatten nested Spark rows into top-level columns with valid, distinct names.

JSON keys may contain dots or spaces, differ only in case (``Name`` and
``name``, which Spark resolves as the same column) or use non-ASCII letters.
Every struct field is therefore first renamed by position to a safe
internal name (a struct cast renames fields by position), and the original
names are only used to build the output column names and the mapping.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DataType, MapType, StringType, StructField, StructType

__all__ = ["FlattenError", "FlattenResult", "flatten_records", "sanitize_column_names", "FLATTEN_SEPARATOR"]

logger = logging.getLogger(__name__)

FLATTEN_SEPARATOR = "_"

# Plain decimal or exponent notation; "NaN", "Infinity" and hex are not numbers here.
_NUMBER_PATTERN = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
# Digit strings with a leading zero ("007", "02139") are identifiers or codes, so they stay text.
_LEADING_ZERO_PATTERN = r"^\s*[+-]?0\d"
_JSON_CONTAINER_PATTERN = r"^\s*[\[{]"

SafePath = tuple[str, ...]


class FlattenError(ValueError):
    """A flatten setting names a field that is missing or has the wrong type."""

    exit_code = 10


@dataclass
class FlattenResult:
    """The flat rows and what flattening changed.

    Attributes
    ----------
    data : DataFrame
        One column per leaf field, named as in ``mapping``.
    mapping : dict
        Raw field path (``geometry.coordinates[0]``, ``weather[].main``,
        ``["a.b"]`` for a key that contains a dot) to column name.
    exploded : dict
        Each exploded array path to the number of rows it added (an empty or
        null array keeps its row, so the count is never negative).
    placeholders_nulled : dict
        Column to the number of placeholder texts (``N/A``, ...) set to null.
    cast_to_number : list of str
        Text columns whose every non-null value is a number, cast to double.
    mixed_types : dict
        Text column to the number of values that hold a JSON object or array
        while other records hold a scalar; Spark keeps those values as JSON text.
    arrays_as_json : list of str
        Columns holding arrays or maps kept as JSON text.
    """

    data: DataFrame
    mapping: dict[str, str]
    exploded: dict[str, int] = field(default_factory=dict)
    placeholders_nulled: dict[str, int] = field(default_factory=dict)
    cast_to_number: list[str] = field(default_factory=list)
    mixed_types: dict[str, int] = field(default_factory=dict)
    arrays_as_json: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Return the JSON-ready counts for run_summary.json."""
        return {
            "columns": len(self.mapping),
            "exploded": self.exploded,
            "placeholders_nulled": self.placeholders_nulled,
            "cast_to_number": self.cast_to_number,
            "mixed_types": self.mixed_types,
            "arrays_as_json": self.arrays_as_json,
        }


def _safe_name(raw: str) -> str:
    # Accents are dropped ("é" becomes "e"); other letters, such as "ß" or CJK, are kept.
    decomposed = unicodedata.normalize("NFKD", raw)
    without_marks = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    name = re.sub(r"\W+", "_", without_marks).strip("_")
    if not name:
        name = "col"
    if name[0].isdigit():
        name = "c_" + name
    return name


def sanitize_column_names(names: Sequence[str]) -> list[str]:
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
        while candidate.casefold() in taken:
            candidate = f"{base}_{suffix}"
            suffix += 1
        taken.add(candidate.casefold())
        result.append(candidate)
    return result


def _rename_fields(data_type: DataType, safe: SafePath, names: dict[SafePath, str]) -> DataType:
    """Return ``data_type`` with struct fields renamed ``f0``, ``f1``, ...; record each original name in ``names``."""
    if isinstance(data_type, StructType):
        fields = []
        for index, child in enumerate(data_type.fields):
            safe_name = f"f{index}"
            names[safe + (safe_name,)] = child.name
            renamed = _rename_fields(child.dataType, safe + (safe_name,), names)
            fields.append(StructField(safe_name, renamed, True))
        return StructType(fields)
    if isinstance(data_type, ArrayType):
        return ArrayType(_rename_fields(data_type.elementType, safe, names), True)
    return data_type


def _restore_names(data_type: DataType, safe: SafePath, names: dict[SafePath, str]) -> DataType:
    """Return the type with the original field names, for ``to_json`` output."""
    if isinstance(data_type, StructType):
        return StructType(
            [
                StructField(names.get(safe + (child.name,), child.name), _restore_names(child.dataType, safe + (child.name,), names), True)
                for child in data_type.fields
            ]
        )
    if isinstance(data_type, ArrayType):
        return ArrayType(_restore_names(data_type.elementType, safe, names), True)
    return data_type


def _column_at(path: SafePath) -> Column:
    column = F.col(path[0])
    for part in path[1:]:
        column = column.getField(part)
    return column


def _field_type(schema: StructType, path: SafePath) -> DataType | None:
    node: DataType = schema
    for part in path:
        if not isinstance(node, StructType) or part not in node.fieldNames():
            return None
        node = node[part].dataType
    return node


def _raw_part(name: str) -> str:
    return json.dumps(name, ensure_ascii=False).join("[]") if re.search(r'[.\[\]"]', name) or not name else name


def _raw_path(safe: SafePath, names: dict[SafePath, str], exploded: set[SafePath]) -> str:
    text = ""
    for depth in range(1, len(safe) + 1):
        part = _raw_part(names.get(safe[:depth], safe[depth - 1]))
        text += part if not text or part.startswith("[") else "." + part
        if safe[:depth] in exploded:
            text += "[]"
    return text


def _resolve_explode_path(dotted: str, schema: StructType, names: dict[SafePath, str]) -> SafePath:
    """Translate a dotted path of original names into the safe path; exact case first, then any case."""
    safe: SafePath = ()
    node: DataType = schema
    for part in [p for p in dotted.split(".") if p]:
        if not isinstance(node, StructType):
            break
        children = [(child.name, names.get(safe + (child.name,), child.name)) for child in node.fields]
        match = [s for s, o in children if o == part] or [s for s, o in children if o.casefold() == part.casefold()]
        if not match:
            break
        safe = safe + (match[0],)
        node = node[match[0]].dataType
    else:
        if safe and isinstance(node, ArrayType):
            return safe
    arrays = _array_paths(schema, (), names)
    raise FlattenError(
        f"source.explode names '{dotted}', which is not an array field of the records; "
        f"array fields: {', '.join(arrays) if arrays else '(none)'}"
    )


def _array_paths(data_type: DataType, safe: SafePath, names: dict[SafePath, str]) -> list[str]:
    if isinstance(data_type, StructType):
        found: list[str] = []
        for child in data_type.fields:
            found.extend(_array_paths(child.dataType, safe + (child.name,), names))
        return found
    if isinstance(data_type, ArrayType):
        own = [".".join(names.get(safe[:d], safe[d - 1]) for d in range(1, len(safe) + 1))]
        return own + _array_paths(data_type.elementType, safe, names)
    return []


def _explode(df: DataFrame, path: SafePath) -> DataFrame:
    """Replace the array at ``path`` by its elements, one row each. An empty or null array keeps its row, with null."""
    element = "__exploded"
    df = df.select("*", F.explode_outer(_column_at(path)).alias(element))
    if len(path) == 1:
        return df.withColumn(path[0], F.col(element)).drop(element)
    nested = ".".join(path[1:])
    return df.withColumn(path[0], F.col(path[0]).withField(nested, F.col(element))).drop(element)


def _leaves(data_type: DataType, safe: SafePath) -> list[tuple[SafePath, DataType]]:
    if isinstance(data_type, StructType):
        found: list[tuple[SafePath, DataType]] = []
        for child in data_type.fields:
            found.extend(_leaves(child.dataType, safe + (child.name,)))
        return found
    return [(safe, data_type)]


def _is_scalar_array(data_type: DataType) -> bool:
    return isinstance(data_type, ArrayType) and not isinstance(data_type.elementType, (StructType, ArrayType, MapType))


def flatten_records(
    df: DataFrame,
    separator: str = FLATTEN_SEPARATOR,
    explode: Sequence[str] = (),
    null_values: Sequence[str] = (),
    max_array_positions: int = 50,
    cast_numbers: bool = True,
    keep_text: Sequence[str] = (),
) -> FlattenResult:
    """Flatten structs into columns and arrays of scalars into positional columns.

    Nested fields become ``parent<sep>child`` columns. An array of scalars
    such as GeoJSON's ``geometry.coordinates`` becomes one column per
    position (``geometry_coordinates_0``, ``_1``, ...), sized by the longest
    array in the data. Shorter arrays give nulls, and an array longer than
    ``max_array_positions`` is kept as JSON text. The arrays named in ``explode`` (dotted paths of
    original key names, applied in order) give one row per element, and a
    row whose array is empty or null is kept with nulls. Other arrays of
    objects and maps are kept as JSON text.

    Text values listed in ``null_values`` become null. With ``cast_numbers``
    a text column whose every other value is a decimal number (no leading
    zero such as ``"007"``) is cast to double, except the output columns
    named in ``keep_text`` (identifiers).

    Raises
    ------
    FlattenError
        When an ``explode`` path is not an array field.
    """
    names: dict[SafePath, str] = {}
    original_top = df.columns
    renamed = StructType(
        [
            StructField(f"c{index}", _rename_fields(f.dataType, (f"c{index}",), names), True)
            for index, f in enumerate(df.schema.fields)
        ]
    )
    for index, name in enumerate(original_top):
        names[(f"c{index}",)] = name
    # toDF renames top-level columns by position; the casts rename nested fields by position.
    safe_df = df.toDF(*[f.name for f in renamed.fields])
    safe_df = safe_df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in renamed.fields])

    exploded_paths: set[SafePath] = set()
    explode_counts: dict[str, int] = {}
    rows_before = safe_df.count() if explode else 0
    for dotted in explode:
        path = _resolve_explode_path(dotted, safe_df.schema, names)
        safe_df = _explode(safe_df, path)
        exploded_paths.add(path)
        rows_after = safe_df.count()
        explode_counts[dotted] = rows_after - rows_before
        logger.info("exploded %s: %d rows became %d", dotted, rows_before, rows_after)
        rows_before = rows_after

    leaves = _leaves(safe_df.schema, ())
    scalar_arrays = [(path, dtype) for path, dtype in leaves if _is_scalar_array(dtype)]
    lengths: dict[SafePath, int] = {}
    if scalar_arrays:
        row = safe_df.agg(*[F.max(F.size(_column_at(path))).alias(f"len{i}") for i, (path, _) in enumerate(scalar_arrays)]).first()
        for index, (path, _) in enumerate(scalar_arrays):
            value: Any = row[f"len{index}"] if row is not None else None
            lengths[path] = max(int(value or 0), 0)

    raw_names: list[str] = []
    display: list[str] = []
    expressions: list[Column] = []
    text_flags: list[bool] = []
    json_columns: list[int] = []
    for path, dtype in leaves:
        raw = _raw_path(path, names, exploded_paths)
        readable = separator.join(names.get(path[:d], path[d - 1]) for d in range(1, len(path) + 1))
        column = _column_at(path)
        if path in lengths and lengths[path] <= max_array_positions:
            assert isinstance(dtype, ArrayType)
            for position in range(lengths[path]):
                raw_names.append(f"{raw}[{position}]")
                display.append(f"{readable}{separator}{position}")
                # get() returns null past the end of a shorter array; getItem raises under ANSI mode.
                expressions.append(F.get(column, position))
                text_flags.append(isinstance(dtype.elementType, StringType))
        elif isinstance(dtype, (ArrayType, MapType)):
            raw_names.append(raw)
            display.append(readable)
            expressions.append(F.to_json(column.cast(_restore_names(dtype, path, names))))
            json_columns.append(len(raw_names) - 1)
            text_flags.append(False)
        else:
            raw_names.append(raw)
            display.append(readable)
            expressions.append(column)
            text_flags.append(isinstance(dtype, StringType))

    columns = sanitize_column_names(display)
    mapping = dict(zip(raw_names, columns))
    flat = safe_df.select(*[expr.alias(name) for expr, name in zip(expressions, columns)])
    result = FlattenResult(data=flat, mapping=mapping, exploded=explode_counts)
    result.arrays_as_json = [columns[i] for i in json_columns]
    text_columns = [name for name, is_text in zip(columns, text_flags) if is_text]
    if text_columns:
        keep = {name.casefold() for name in keep_text}
        result.data = _clean_text_columns(flat, text_columns, list(null_values), cast_numbers, keep, result)
    return result


def _clean_text_columns(
    flat: DataFrame,
    text_columns: list[str],
    null_values: list[str],
    cast_numbers: bool,
    keep_text: set[str],
    result: FlattenResult,
) -> DataFrame:
    """Null the placeholders and cast all-number text columns, counting both in one pass."""
    aggregates: list[Column] = []
    for index, name in enumerate(text_columns):
        column = F.col(f"`{name}`")
        is_placeholder = F.trim(column).isin(*null_values) if null_values else F.lit(False)
        is_present = column.isNotNull() & ~is_placeholder
        is_number = column.rlike(_NUMBER_PATTERN) & ~column.rlike(_LEADING_ZERO_PATTERN)
        aggregates += [
            F.count(F.when(is_placeholder, 1)).alias(f"placeholder{index}"),
            F.count(F.when(is_present, 1)).alias(f"present{index}"),
            F.count(F.when(is_present & is_number, 1)).alias(f"number{index}"),
            F.count(F.when(is_present & column.rlike(_JSON_CONTAINER_PATTERN), 1)).alias(f"container{index}"),
        ]
    stats = flat.agg(*aggregates).first()
    assert stats is not None
    replacements: dict[str, Column] = {}
    for index, name in enumerate(text_columns):
        column = F.col(f"`{name}`")
        placeholders = int(stats[f"placeholder{index}"])
        present = int(stats[f"present{index}"])
        numbers = int(stats[f"number{index}"])
        containers = int(stats[f"container{index}"])
        cleaned = column
        if placeholders:
            result.placeholders_nulled[name] = placeholders
            cleaned = F.when(F.trim(column).isin(*null_values), F.lit(None).cast("string")).otherwise(column)
        if cast_numbers and present and numbers == present and name.casefold() not in keep_text:
            result.cast_to_number.append(name)
            cleaned = F.trim(cleaned).try_cast("double")
        if containers and containers < present:
            result.mixed_types[name] = containers
            logger.warning(
                "column %s: %d of %d values are JSON objects or arrays while the others are scalars; kept as text",
                name, containers, present,
            )
        if cleaned is not column:
            replacements[name] = cleaned
    if not replacements:
        return flat
    return flat.select(*[replacements.get(name, F.col(f"`{name}`")).alias(name) for name in flat.columns])
