"""Write a synthetic anomaly-detection table as Parquet: a Gaussian mixture with injected outliers.

Rows are generated and written in chunks with pyarrow, so the memory in use
depends on ``--chunk-rows`` and not on ``--rows``. With 20 features, one
chunk of doubles is 500,000 x 20 x 8 bytes (80 MB) by default.

Columns of the output: ``id`` (int64, 0 to rows - 1), ``f00`` to ``fNN``
(double, null where a cell is missing) and ``label`` (int32, 1 for an
injected outlier). Inliers come from ``--components`` Gaussians with random
centres in [-10, 10] and diagonal standard deviations in [0.5, 2]. Outliers
are drawn uniformly from the inliers' bounding box widened by 20% on each
side. With 20 features none of the 92 outliers of a 10,000-row table falls
within 3 standard deviations of any component on all features.
Missing cells are chosen completely at random with probability
``--missing``; ``id`` and ``label`` are never missing.

The output is a folder of Parquet files (``part-NNNNN.parquet``, one per
chunk) plus ``_generator.json`` with the parameters and counts; Spark skips
files whose names start with an underscore. The same parameters, chunk
size included, give the same rows: each chunk draws from its own generator
seeded with ``(seed, chunk index)``.

Example::

    .venv/bin/python benchmarks/generate.py --rows 1e6 --features 20 --missing 0.05 --out /tmp/gmm_1e6.parquet
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["TableSpec", "parse_count", "generate_table", "read_spec", "main"]

GENERATOR_FILE = "_generator.json"
# Raised whenever the rows drawn for the same parameters change.
GENERATOR_VERSION = 1
_BOX_MARGIN = 0.2


@dataclass(frozen=True)
class TableSpec:
    """Parameters of one synthetic table.

    Attributes
    ----------
    rows : int
        Total rows, inliers and outliers.
    features : int
        Number of feature columns.
    missing : float
        Probability that a feature cell is null, in [0, 1).
    outliers : float
        Share of rows that are injected outliers, in [0, 0.5].
    components : int
        Gaussian components of the inlier mixture.
    seed : int
        Seed of the mixture and of every chunk.
    chunk_rows : int
        Rows per chunk and per Parquet file.
    """

    rows: int
    features: int = 20
    missing: float = 0.05
    outliers: float = 0.01
    components: int = 5
    seed: int = 42
    chunk_rows: int = 500_000

    def validate(self) -> None:
        """Raise ValueError naming the first invalid parameter and its allowed range."""
        checks = [
            (self.rows >= 1, f"rows={self.rows}: use at least 1"),
            (self.features >= 1, f"features={self.features}: use at least 1"),
            (0.0 <= self.missing < 1.0, f"missing={self.missing}: use a share in [0, 1)"),
            (0.0 <= self.outliers <= 0.5, f"outliers={self.outliers}: use a share in [0, 0.5]"),
            (self.components >= 1, f"components={self.components}: use at least 1"),
            (self.chunk_rows >= 1, f"chunk_rows={self.chunk_rows}: use at least 1"),
        ]
        for valid, message in checks:
            if not valid:
                raise ValueError(f"invalid {message}")


def parse_count(text: str) -> int:
    """Parse a row count written as an integer or in scientific notation (``1e6``, ``2.5e5``).

    Raises
    ------
    ValueError
        When the text is not a whole positive number.
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid count {text!r}: write a whole number such as 100000 or 1e5") from None
    if not np.isfinite(value) or value < 1 or value != int(value):
        raise ValueError(f"invalid count {text!r}: write a whole number of at least 1, such as 100000 or 1e5")
    return int(value)


def _mixture(spec: TableSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the component weights, centres and standard deviations from the table's seed."""
    rng = np.random.default_rng([spec.seed, 0xC0])
    weights = rng.dirichlet(np.full(spec.components, 2.0))
    centres = rng.uniform(-10.0, 10.0, size=(spec.components, spec.features))
    scales = rng.uniform(0.5, 2.0, size=(spec.components, spec.features))
    return weights, centres, scales


def _chunk(spec: TableSpec, index: int, start: int, size: int, mixture: tuple[np.ndarray, np.ndarray, np.ndarray]) -> pa.Table:
    """Build rows ``start`` to ``start + size - 1`` as an Arrow table."""
    weights, centres, scales = mixture
    rng = np.random.default_rng([spec.seed, index])
    component = rng.choice(spec.components, size=size, p=weights)
    values = centres[component] + rng.standard_normal((size, spec.features)) * scales[component]

    is_outlier = rng.random(size) < spec.outliers
    low = (centres - 3 * scales).min(axis=0)
    high = (centres + 3 * scales).max(axis=0)
    margin = _BOX_MARGIN * (high - low)
    outlier_count = int(is_outlier.sum())
    values[is_outlier] = rng.uniform(low - margin, high + margin, size=(outlier_count, spec.features))

    missing = rng.random((size, spec.features)) < spec.missing
    columns: dict[str, pa.Array] = {"id": pa.array(np.arange(start, start + size, dtype=np.int64))}
    width = max(2, len(str(spec.features - 1)))
    for j in range(spec.features):
        columns[f"f{j:0{width}d}"] = pa.array(values[:, j], type=pa.float64(), mask=missing[:, j])
    columns["label"] = pa.array(is_outlier.astype(np.int32))
    return pa.table(columns)


def generate_table(spec: TableSpec, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the table described by ``spec`` into the folder ``out`` and return its metadata.

    The metadata, also written to ``out/_generator.json``, contains the spec,
    the counts of outliers and missing cells, and the seconds taken.

    Raises
    ------
    FileExistsError
        When ``out`` exists and ``overwrite`` is false.
    """
    spec.validate()
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
        shutil.rmtree(out)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)

    started = time.perf_counter()
    mixture = _mixture(spec)
    outliers = missing_cells = 0
    chunks = (spec.rows + spec.chunk_rows - 1) // spec.chunk_rows
    for index in range(chunks):
        start = index * spec.chunk_rows
        table = _chunk(spec, index, start, min(spec.chunk_rows, spec.rows - start), mixture)
        outliers += int(pc.sum(table["label"]).as_py() or 0)
        missing_cells += sum(table[name].null_count for name in table.column_names if name not in ("id", "label"))
        pq.write_table(table, partial / f"part-{index:05d}.parquet", compression="snappy")

    metadata = {
        "generator_version": GENERATOR_VERSION,
        "spec": asdict(spec),
        "files": chunks,
        "outlier_rows": outliers,
        "missing_cells": missing_cells,
        "seconds": round(time.perf_counter() - started, 3),
    }
    (partial / GENERATOR_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    # The folder appears under its final name only when complete, so a crash leaves no half table behind.
    partial.rename(out)
    return metadata


def read_spec(out: Path) -> TableSpec | None:
    """Return the spec stored in ``out/_generator.json``, or None when the folder has no complete table."""
    path = out / GENERATOR_FILE
    if not path.is_file():
        return None
    metadata = json.loads(path.read_text(encoding="utf-8"))
    if metadata.get("generator_version") != GENERATOR_VERSION:
        return None
    return TableSpec(**metadata["spec"])


def _count_argument(text: str) -> int:
    try:
        return parse_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=_count_argument, required=True, help="total rows, such as 100000 or 1e5")
    parser.add_argument("--features", type=int, default=20, help="feature columns (default: 20)")
    parser.add_argument("--missing", type=float, default=0.05, help="share of feature cells that are null (default: 0.05)")
    parser.add_argument("--outliers", type=float, default=0.01, help="share of rows that are injected outliers (default: 0.01)")
    parser.add_argument("--components", type=int, default=5, help="Gaussian components of the inliers (default: 5)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    parser.add_argument("--chunk-rows", type=_count_argument, default=500_000, help="rows per chunk and per file (default: 500000)")
    parser.add_argument("--out", type=Path, required=True, help="output folder, such as /tmp/gmm_1e6.parquet")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, write the table and print its metadata as JSON."""
    args = _parser().parse_args(argv)
    spec = TableSpec(
        rows=args.rows,
        features=args.features,
        missing=args.missing,
        outliers=args.outliers,
        components=args.components,
        seed=args.seed,
        chunk_rows=args.chunk_rows,
    )
    try:
        metadata = generate_table(spec, args.out, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(metadata, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
