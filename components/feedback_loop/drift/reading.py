"""Reading a Parquet dataset in batches: a capped, seeded uniform sample of its rows for
the tests, and data-quality counts over every row.

The sample is a reservoir in its "bottom-k" form: every row draws a random key and the
`max_rows` rows with the smallest keys are kept. That is a uniform sample without
replacement, reproducible from the seed, with memory bounded by `max_rows` plus one batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feedback_loop.errors import DataError

BATCH_ROWS = 65_536


@dataclass
class ColumnCounts:
    """Counts over every row of one column (numbers only for numeric columns)."""

    rows: int = 0
    nulls: int = 0
    nan: int = 0
    inf: int = 0
    non_numeric: int = 0  # text or booleans under a number column, read as missing
    minimum: float = float("inf")  # over finite values
    maximum: float = float("-inf")
    below: int = 0  # finite values under the bounds given to the reader (the reference range)
    above: int = 0

    @property
    def has_range(self) -> bool:
        return self.minimum <= self.maximum


@dataclass
class Sample:
    table: pa.Table  # at most max_rows rows
    rows: int  # rows in the file
    counts: dict[str, ColumnCounts] = field(default_factory=dict)

    @property
    def capped(self) -> bool:
        return self.table.num_rows < self.rows


def schema_and_rows(path: Path, role: str) -> tuple[pa.Schema, int]:
    """The schema and row count of a Parquet file, from its footer; `role` names it in errors."""
    try:
        metadata = pq.read_metadata(path)
    except FileNotFoundError:
        raise DataError(f"{role} dataset {path} does not exist: check the path or URI given for it") from None
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(
            f"{role} dataset {path} is not a readable Parquet file ({err}): write it with feedback_loop.dataset"
        ) from None
    return metadata.schema.to_arrow_schema(), metadata.num_rows


def read_sample(
    path: Path,
    columns: list[str],
    *,
    max_rows: int,
    seed: int,
    numeric: set[str],
    bounds: dict[str, tuple[float, float]] | None = None,
) -> Sample:
    """Reads `columns` of `path` batch by batch.

    Args:
        path: A Parquet file.
        columns: Columns to read.
        max_rows: Largest sample kept; a larger file is sampled uniformly (seeded).
        seed: Seed of the sample.
        numeric: Columns read as numbers, whose NaN, infinities and range are counted.
        bounds: Per numeric column, the (minimum, maximum) outside of which values are counted.

    Returns:
        The sample and, per column, the counts over every row.
    """
    parquet = pq.ParquetFile(path)
    rows = parquet.metadata.num_rows
    counts = {name: ColumnCounts() for name in columns}
    update: Callable[[pa.RecordBatch], None] = lambda batch: _count(batch, counts, numeric, bounds or {})  # noqa: E731
    batches = parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)
    if rows <= max_rows:
        kept = []
        for batch in batches:
            update(batch)
            kept.append(batch)
        table = pa.Table.from_batches(kept, schema=parquet.schema_arrow.empty_table().select(columns).schema)
        return Sample(table.combine_chunks(), rows, counts)

    rng = np.random.default_rng(seed)
    table: pa.Table | None = None
    keys = np.empty(0)
    for batch in batches:
        update(batch)
        batch_keys = rng.random(batch.num_rows)
        if table is not None and keys.size == max_rows:
            # Only rows whose key beats the largest kept key can enter the reservoir.
            enter = batch_keys < keys.max()
            batch, batch_keys = batch.filter(pa.array(enter)), batch_keys[enter]
        merged = pa.Table.from_batches([batch]) if table is None else pa.concat_tables([table, pa.Table.from_batches([batch])])
        keys = np.concatenate([keys, batch_keys])
        if keys.size > max_rows:
            keep = np.sort(np.argpartition(keys, max_rows - 1)[:max_rows])  # sorted: the file's row order stays
            merged, keys = merged.take(pa.array(keep)), keys[keep]
        table = merged
    assert table is not None  # rows > max_rows >= 1
    return Sample(table.combine_chunks(), rows, counts)


def _count(
    batch: pa.RecordBatch,
    counts: dict[str, ColumnCounts],
    numeric: set[str],
    bounds: dict[str, tuple[float, float]],
) -> None:
    for name, column in zip(batch.schema.names, batch.columns):
        c = counts[name]
        c.rows += len(column)
        c.nulls += column.null_count
        if name not in numeric:
            continue
        numbers = as_numbers(column)
        non_numeric = numbers.null_count - column.null_count
        c.non_numeric += non_numeric
        values = _floats(numbers)
        finite = np.isfinite(values)
        n_finite = int(finite.sum())
        c.nan += int(np.isnan(values).sum()) - numbers.null_count  # nulls read as NaN
        c.inf += len(values) - n_finite - int(np.isnan(values).sum())
        if n_finite:
            shown = values if n_finite == len(values) else values[finite]
            c.minimum = min(c.minimum, float(shown.min()))
            c.maximum = max(c.maximum, float(shown.max()))
            if name in bounds:
                lo, hi = bounds[name]
                c.below += int((shown < lo).sum())
                c.above += int((shown > hi).sum())


# A plain decimal number in text ("1.5", " -2e3"); "NaN", "inf", "true" and "" are no number.
_NUMBER = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"


def as_numbers(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The column as float64: a number column as it is; under text or booleans (a number
    feature a client sent as "NaN", true or ""), decimal texts as their number and every
    other value null, so one stray value does not turn the whole feature into text."""
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return column.cast(pa.float64(), safe=False)
    if pa.types.is_dictionary(column.type):
        column = column.cast(kind)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return pa.nulls(len(column), pa.float64())  # booleans and the rest: no number
    text = pc.if_else(pc.match_substring_regex(column, _NUMBER), column, pa.scalar(None, column.type))
    return pc.cast(pc.utf8_trim_whitespace(text), pa.float64())


def _floats(column: pa.Array) -> np.ndarray:
    """The column as float64, nulls as NaN."""
    if pa.types.is_floating(column.type) and column.type != pa.float64():
        column = column.cast(pa.float64())
    elif not pa.types.is_floating(column.type):
        column = column.cast(pa.float64(), safe=False)
    return column.to_numpy(zero_copy_only=False)
