"""Storage level of the job's cached DataFrames, chosen by their size."""

from __future__ import annotations

from pyspark import StorageLevel

__all__ = ["MEMORY_CACHE_CELLS", "storage_level"]

# Cached frames with more cells (rows times columns) than this stay on local
# disk. In memory with disk spill, Spark builds each cached partition in the
# Java heap. There, 1e6 rows of 22 columns in two partitions ran the default
# 2 GiB local driver out of heap while caching the scored rows. A 1e7-row
# table ran a 4 GiB driver out of heap when Spark copied spilled blocks back
# into it. Disk-only blocks are read from the local disk (and the operating
# system's page cache) on each pass and are not copied into storage memory.
MEMORY_CACHE_CELLS = 10_000_000


def storage_level(rows: int, columns: int) -> StorageLevel:
    """Return MEMORY_AND_DISK for a frame of up to ``MEMORY_CACHE_CELLS`` cells, else DISK_ONLY."""
    if rows * max(columns, 1) > MEMORY_CACHE_CELLS:
        return StorageLevel.DISK_ONLY
    return StorageLevel.MEMORY_AND_DISK
