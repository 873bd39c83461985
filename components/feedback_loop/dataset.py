"""The tabular contract every stage shares: one Parquet file per dataset.

Columns:
    id          string, unique per row (prediction id, or training example id)
    created_at  timestamp (UTC); time-aware splits and windows use it
    label       string; the true class (or value, as text) where known, else null.
                Labels become text where data enters (`label_text`): 3 -> "3", 3.0 -> "3",
                2.5 -> "2.5" (the shortest text that reads back as the same float),
                b"cat" -> "cat", " cat " -> "cat"; null, empty, NaN or non-scalar labels
                are unusable (one DataError naming the column, the rows and their count)
    pixels      binary, optional; raw image bytes (uint8, row-major) for the image family
    ...         any other column is an input feature: numeric (float/int) or categorical (string)

Columns that describe the serving of a row (predicted label, confidence, feedback) are
listed in SERVING_COLUMNS; neither drift detection nor training treats them as inputs.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feedback_loop.errors import DataError

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


_SHOWN_ROWS = 3
_MISSING = ("null", "NaN", "empty")  # what "no label" looks like in feedback without a correction


def _as_text(value: object) -> str | None:
    """One label as text, or None when it is unusable (see the module docstring)."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (bytes, bytearray)):
        try:
            return value.decode("utf-8").strip() or None
        except UnicodeDecodeError:
            return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            return None
        # A whole float is an integer label that pandas widened (e.g. beside a null): 3.0 is "3".
        return str(int(number)) if number.is_integer() else repr(number)
    return None


def _why(value: object) -> str:
    if value is None or value is pd.NA or value is pd.NaT:
        return "null"
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return "NaN" if math.isnan(float(value)) else "infinite"
    if isinstance(value, (str, bytes, bytearray)):
        return "empty" if not str(value).strip() else "not UTF-8"
    return type(value).__name__


def label_text(frame: pd.DataFrame, where: str, *, missing_ok: bool = False, column: str = LABEL) -> pd.Series:
    """`frame[column]` as text, one label type for every stage (rule in the module docstring).

    With `missing_ok` (feedback without a correction), null and empty labels stay null;
    otherwise every row must carry a usable label. Any unusable label raises one DataError
    naming the column, a few row ids and how many rows are affected.
    """
    values = frame[column]
    text = [_as_text(value) for value in values]
    bad = [i for i, (value, converted) in enumerate(zip(values, text)) if converted is None]
    if missing_ok:
        bad = [i for i in bad if _why(values.iloc[i]) not in _MISSING]
    if bad:
        ids = frame[ID].astype(str).to_numpy() if ID in frame.columns else np.arange(len(frame)).astype(str)
        shown = ", ".join(f"{ids[i]!r} ({_why(values.iloc[i])})" for i in bad[:_SHOWN_ROWS])
        raise DataError(
            f"{where}: column '{column}' has {len(bad)} of {len(frame)} rows without a usable label, e.g. {shown}; "
            "every row needs one text or number label: fix or drop those rows"
        )
    return pd.Series(text, index=frame.index, dtype=object, name=column)
