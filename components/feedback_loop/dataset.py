"""The tabular contract every stage shares: one Parquet file per dataset.

Columns:
    id          string, unique per row (prediction id, or training example id)
    created_at  timestamp (UTC); time-aware splits and windows use it
    label       string; the true class (or value, as text) where known, else null
    pixels      binary, optional; raw image bytes (uint8, row-major) for the image family
    ...         any other column is an input feature: numeric (float/int) or categorical (string)

Columns that describe the serving of a row (predicted label, confidence, feedback) are
listed in SERVING_COLUMNS; neither drift detection nor training treats them as inputs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ID, CREATED_AT, LABEL, PIXELS = "id", "created_at", "label", "pixels"
SERVING_COLUMNS = frozenset(
    {
        "model_name",
        "model_version",
        "predicted_label",
        "confidence",
        "latency_ms",
        "is_correct",
        "corrected_label",
        "comment",
        "feedback_at",
        "user_id",
        "input_uri",
    }
)
NON_FEATURES = frozenset({ID, CREATED_AT, LABEL, PIXELS}) | SERVING_COLUMNS


def feature_columns(columns: list[str] | pa.Schema) -> list[str]:
    names = columns.names if isinstance(columns, pa.Schema) else list(columns)
    return [name for name in names if name not in NON_FEATURES]


def write_parquet(table: pa.Table | pd.DataFrame, path: Path | str) -> Path:
    """Writes whole or not at all: a temporary file in the same folder, then a rename."""
    path = Path(path)
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
