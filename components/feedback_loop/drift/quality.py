"""Data quality: the current data's feature columns against the reference's, counted over
every row while the sample is read (missing and extra columns, type changes, missing
values, NaN and infinity, values outside the reference's range). Reported, never fatal.
"""

from __future__ import annotations

import pyarrow as pa

from feedback_loop.drift.features import family
from feedback_loop.drift.reading import ColumnCounts, Sample
from feedback_loop.drift.result import ColumnQuality, Quality


def measure_quality(
    ref_schema: pa.Schema,
    cur_schema: pa.Schema,
    ref_features: list[str],
    cur_features: list[str],
    common: list[str],
    ref: Sample,
    cur: Sample,
    bounds: dict[str, tuple[float, float]],
) -> Quality:
    """Every feature column common to both sides, counted, and the columns and types that changed."""
    in_ref, in_cur = set(ref_features), set(cur_features)
    type_changes = {
        name: f"{ref_schema.field(name).type} → {cur_schema.field(name).type}"
        for name in common
        if family(ref_schema.field(name).type) != family(cur_schema.field(name).type)
    }
    columns = []
    for name in common:
        r, c = ref.counts[name], cur.counts[name]
        has_range = name in bounds
        columns.append(
            ColumnQuality(
                name=name,
                reference_type=str(ref_schema.field(name).type),
                current_type=str(cur_schema.field(name).type),
                reference_missing=_missing(r),
                current_missing=_missing(c),
                reference_nan=r.nan,
                current_nan=c.nan,
                reference_inf=r.inf,
                current_inf=c.inf,
                current_non_numeric=c.non_numeric,
                reference_min=r.minimum if has_range else None,
                reference_max=r.maximum if has_range else None,
                current_min=c.minimum if has_range and c.has_range else None,
                current_max=c.maximum if has_range and c.has_range else None,
                below_range=c.below,
                above_range=c.above,
                current_rows=c.rows,
            )
        )
    return Quality(
        columns=columns,
        missing_columns=[n for n in ref_features if n not in in_cur],
        extra_columns=[n for n in cur_features if n not in in_ref],
        type_changes=type_changes,
    )


def _missing(counts: ColumnCounts) -> float:
    return (counts.nulls + counts.nan + counts.non_numeric) / counts.rows if counts.rows else 0.0

