"""Old training data + corrected feedback → a time-aware train / holdout split with no shared row.

The holdout is the most recent slice of labelled feedback: the data the next model will
meet, on which candidate and production are compared. Everything older trains.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from feedback_loop import storage
from feedback_loop.dataset import CREATED_AT, ID, LABEL, PIXELS, SERVING_COLUMNS, write_parquet
from feedback_loop.errors import DataError

log = logging.getLogger(__name__)

MIN_HOLDOUT_ROWS = 10


@dataclass(frozen=True)
class Split:
    train_rows: int
    holdout_rows: int
    feedback_rows: int
    reference_rows: int
    holdout_start: str

    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items() if isinstance(v, int)}


def load_pixels(uri: str) -> bytes:
    """Raw image bytes (uint8, row-major) from a stored `.npy` input."""
    array = np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False)
    return np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def labelled_feedback(feedback_path: Path, with_pixels: bool) -> pd.DataFrame:
    rows = pd.read_parquet(feedback_path)
    rows = rows[rows[LABEL].notna()].copy()
    if with_pixels:
        missing = rows["input_uri"].isna()
        if missing.any():
            log.warning("%d labelled rows have no input_uri and are left out", int(missing.sum()))
            rows = rows[~missing].copy()
        rows[PIXELS] = [load_pixels(uri) for uri in rows["input_uri"]]
    return rows.drop(columns=[c for c in rows.columns if c in SERVING_COLUMNS])


def prepare(reference: Path | None, feedback_path: Path, train_out: Path, holdout_out: Path, holdout_fraction: float = 0.3) -> Split:
    old = pd.read_parquet(reference) if reference else pd.DataFrame()
    with_pixels = PIXELS in old.columns or (old.empty and _has_input_uris(feedback_path))
    new = labelled_feedback(feedback_path, with_pixels).sort_values([CREATED_AT, ID], kind="stable")
    n_holdout = int(len(new) * holdout_fraction + 0.5)
    if n_holdout < MIN_HOLDOUT_ROWS:
        raise DataError(
            f"only {len(new)} labelled feedback rows: at least {int(np.ceil(MIN_HOLDOUT_ROWS / holdout_fraction))} are needed "
            "for a holdout; collect more feedback or lower holdout_fraction"
        )
    holdout, recent_train = new.iloc[len(new) - n_holdout :], new.iloc[: len(new) - n_holdout]
    train = pd.concat([old, recent_train], ignore_index=True) if not old.empty else recent_train
    train = train.drop_duplicates(subset=[ID], keep="last")
    assert_disjoint(train, holdout)
    write_parquet(train.reset_index(drop=True), train_out)
    write_parquet(holdout.reset_index(drop=True), holdout_out)
    split = Split(len(train), len(holdout), len(new), len(old), str(holdout[CREATED_AT].min()))
    log.info("train %d rows (%d old + %d feedback), holdout %d rows from %s", split.train_rows, len(old), len(recent_train), split.holdout_rows, split.holdout_start)
    return split


def assert_disjoint(train: pd.DataFrame, holdout: pd.DataFrame) -> None:
    """The leak check: no row id may be both trained on and held out."""
    shared = set(train[ID]) & set(holdout[ID])
    if shared:
        example = sorted(shared)[:3]
        raise DataError(f"{len(shared)} rows are in both train and holdout (e.g. {example}): the split leaks")


def _has_input_uris(path: Path) -> bool:
    column = pq.read_table(path, columns=["input_uri"])["input_uri"]
    return column.null_count < len(column)
