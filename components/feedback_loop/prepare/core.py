"""Old training data + corrected feedback → a time-aware train / holdout / test split with no shared row.

The holdout is the most recent slice: the data the next model will meet, on which
candidate and production are compared. With `split="recent_feedback"` (the default) it is
one in two of the newest labelled feedback rows (twice as many as it holds), so that the
candidate also learns from the days it is judged on. When the decision says where the
answers it found worse begin (`holdout_from`), only those are drawn from (when they give
at least MIN_HOLDOUT_ROWS): right after a change, the newest rows otherwise still reach back
to days where production was right, and a candidate that learnt the new concept shows
only a small, uncertain gain. With `split="time_series"` (time-ordered data, e.g. a market
model) it is the newest rows of all data, and every training row is older than every
holdout row; with `split="random"` (rows that do not depend on time) a seeded draw of the
feedback. Everything else trains, within the window (see `windows`).

The guard set (the test set) is the production model's `test_data.parquet`, carried from
version to version until the evaluation retires it because the concept moved (then the
holdout replaces it); the first time there is none, this run's holdout becomes it.
No row id may be in training and in the holdout or the test set (the leak check).

Labels are text in every file written here (`dataset.label_text`): a first training set
with integer labels and feedback with text corrections make one label column, and a
row without a usable label in the stored data is one clear error, not a pyarrow crash.
Feedback without a correction (null or empty label) is not a training row, except for a
two-class model, where a "wrong" names the other class.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from feedback_loop import storage
from feedback_loop.dataset import CREATED_AT, ID, LABEL, PIXELS, SERVING_COLUMNS, label_text, write_parquet
from feedback_loop.errors import DataError, SettingsError
from feedback_loop.prepare import windows

log = logging.getLogger(__name__)

MIN_HOLDOUT_ROWS = 10
RECENT_FEEDBACK, TIME_SERIES, RANDOM = "recent_feedback", "time_series", "random"
SPLITS = (RECENT_FEEDBACK, TIME_SERIES, RANDOM)


@dataclass(frozen=True)
class Split:
    train_rows: int
    holdout_rows: int
    feedback_rows: int
    reference_rows: int
    holdout_start: str
    test_rows: int = 0
    dropped_by_window: int = 0
    test_carried: bool = False

    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items() if isinstance(v, (int, bool))}


def load_pixels(uri: str) -> bytes:
    """Raw image bytes (uint8, row-major) from a stored `.npy` input."""
    array = np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False)
    return np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def labelled_feedback(feedback_path: Path, with_pixels: bool, classes: Sequence[str] = ()) -> pd.DataFrame:
    """The feedback rows with a label. With exactly two `classes`, a plain thumbs-down names
    the label too (the other class): without it the rows where production erred would be
    under-represented, and every holdout would flatter production."""
    rows = pd.read_parquet(feedback_path)
    rows[LABEL] = label_text(rows, f"feedback {Path(feedback_path).name}", missing_ok=True)
    if len(classes) == 2 and "is_correct" in rows and "predicted_label" in rows:
        other = dict(zip(classes, reversed(classes)))
        implied = rows[LABEL].isna() & (rows["is_correct"] == False) & rows["predicted_label"].isin(classes)  # noqa: E712
        rows.loc[implied, LABEL] = rows.loc[implied, "predicted_label"].map(other)
        if implied.any():
            log.info("%d plain thumbs-down of a two-class model labelled with the other class", int(implied.sum()))
    rows = rows[rows[LABEL].notna()].copy()
    if with_pixels:
        missing = rows["input_uri"].isna()
        if missing.any():
            log.warning("%d labelled rows have no input_uri and are left out", int(missing.sum()))
            rows = rows[~missing].copy()
        rows[PIXELS] = [load_pixels(uri) for uri in rows["input_uri"]]
    return rows.drop(columns=[c for c in rows.columns if c in SERVING_COLUMNS])


def prepare(
    reference: Path | None,
    feedback_path: Path,
    train_out: Path,
    holdout_out: Path,
    holdout_fraction: float = 0.3,
    *,
    test_out: Path | None = None,
    original_test: Path | None = None,
    window: str = windows.EXPANDING,
    window_days: float = 90.0,
    split: str = RECENT_FEEDBACK,
    holdout_from: str = "",
) -> Split:
    """Writes train, holdout and (with `test_out`) the original test set; see the module docstring."""
    if split not in SPLITS:
        raise SettingsError(f"unknown split {split!r}: choose {', '.join(SPLITS)}")
    windows.check(window, window_days, 1.0)
    old = read_labelled_rows(reference, "the production model's training data") if reference else pd.DataFrame()
    with_pixels = PIXELS in old.columns or (old.empty and _has_input_uris(feedback_path))
    classes = sorted(old[LABEL].dropna().unique()) if LABEL in old.columns else []
    new = labelled_feedback(feedback_path, with_pixels, classes).sort_values([CREATED_AT, ID], kind="stable")
    if split == TIME_SERIES:
        pool = pd.concat([old, new], ignore_index=True) if not old.empty else new
        pool = pool.drop_duplicates(subset=[ID], keep="last").sort_values([CREATED_AT, ID], kind="stable")
        old, new = pool.iloc[:0], pool
    n_holdout = int(len(new) * holdout_fraction + 0.5)
    if n_holdout < MIN_HOLDOUT_ROWS:
        what = "labelled rows" if split == TIME_SERIES else "labelled feedback rows"
        raise DataError(
            f"only {len(new)} {what}: at least {int(np.ceil(MIN_HOLDOUT_ROWS / holdout_fraction))} are needed "
            "for a holdout; collect more feedback or lower holdout_fraction"
        )
    if split == RANDOM:
        # Rows that do not depend on time: a seeded draw, so every day (the newest ones, where a
        # change shows, too) teaches the candidate and judges it.
        held = new.sample(n=n_holdout, random_state=0).index
        holdout, recent_train = new.loc[new.index.isin(held)], new.loc[~new.index.isin(held)]
    elif split == RECENT_FEEDBACK:
        # One in two of the newest 2n rows: the holdout still describes the present, and the
        # candidate learns from the present too (a concept that moved yesterday is in both).
        newest = np.arange(len(new) - min(2 * n_holdout, len(new)), len(new))
        held = newest[::-1][: 2 * n_holdout : 2] if 2 * n_holdout <= len(new) else newest[-n_holdout:]
        present = _answered_from(feedback_path, new, holdout_from)
        if present is not None and present.sum() >= 2 * MIN_HOLDOUT_ROWS:
            held = np.flatnonzero(present)[::-1][: 2 * n_holdout : 2]
            log.info("holdout: %d of the %d labelled answers given from %s (where the decision found production worse)",
                     len(held), int(present.sum()), holdout_from)
        mask = np.zeros(len(new), dtype=bool)
        mask[held] = True
        holdout, recent_train = new.iloc[mask], new.iloc[~mask]
    else:
        holdout, recent_train = new.iloc[len(new) - n_holdout :], new.iloc[: len(new) - n_holdout]
    train = pd.concat([old, recent_train], ignore_index=True) if not old.empty else recent_train
    train = train.drop_duplicates(subset=[ID], keep="last")
    test = read_labelled_rows(original_test, "the original test set") if original_test else holdout
    # Rows of the fixed test set never train, even when they came back as feedback.
    train = train[~train[ID].isin(set(test[ID]))]
    before = len(train)
    end = pd.to_datetime((holdout if split == TIME_SERIES else new)[CREATED_AT], utc=True)
    train = windows.select(train, window, window_days, end=end.min() if split == TIME_SERIES else end.max())
    assert_disjoint(train, holdout)
    assert_disjoint(train, test, "test")
    if split == TIME_SERIES:
        assert_time_ordered(train, holdout)
    write_parquet(train.reset_index(drop=True), train_out)
    write_parquet(holdout.reset_index(drop=True), holdout_out)
    if test_out is not None:
        write_parquet(test.reset_index(drop=True), test_out)
    split_info = Split(
        len(train), len(holdout), len(new), len(old), str(holdout[CREATED_AT].min()),
        test_rows=len(test), dropped_by_window=before - len(train), test_carried=original_test is not None,
    )
    log.info(
        "train %d rows (%d old + %d feedback, %d outside the %s window), holdout %d rows from %s, test %d rows (%s)",
        split_info.train_rows, len(old), len(recent_train), split_info.dropped_by_window, window,
        split_info.holdout_rows, split_info.holdout_start, split_info.test_rows,
        "carried from production" if original_test else "this run's holdout",
    )
    return split_info


def _answered_from(feedback_path: Path, new: pd.DataFrame, start: str) -> np.ndarray | None:
    """Which of `new` (labelled feedback, in its order) were answered at or after `start`; None without one."""
    if not start:
        return None
    answered = pd.read_parquet(feedback_path, columns=["feedback_at"])["feedback_at"]
    at = pd.to_datetime(answered.loc[new.index], utc=True)
    first = pd.Timestamp(start)
    return (at >= (first.tz_localize("UTC") if first.tzinfo is None else first)).to_numpy()


def read_labelled_rows(path: Path, what: str) -> pd.DataFrame:
    """A stored dataset whose every row must carry a usable label, with the labels as text."""
    rows = pd.read_parquet(path)
    if LABEL in rows.columns and not rows.empty:
        rows[LABEL] = label_text(rows, f"{what} ({Path(path).name})")
    return rows


def assert_time_ordered(train: pd.DataFrame, holdout: pd.DataFrame) -> None:
    """A time-series split: every training row is older than every holdout row."""
    if train.empty:
        return
    last_train = pd.to_datetime(train[CREATED_AT], utc=True).max()
    first_holdout = pd.to_datetime(holdout[CREATED_AT], utc=True).min()
    if last_train > first_holdout:
        raise DataError(f"training rows reach {last_train} but the holdout starts at {first_holdout}: the split looks ahead")


def assert_disjoint(train: pd.DataFrame, holdout: pd.DataFrame, name: str = "holdout") -> None:
    """The leak check: no row id may be both trained on and held out (or in the test set)."""
    shared = set(train[ID]) & set(holdout[ID])
    if shared:
        example = sorted(shared)[:3]
        raise DataError(f"{len(shared)} rows are in both train and {name} (e.g. {example}): the split leaks")


def _has_input_uris(path: Path) -> bool:
    column = pq.read_table(path, columns=["input_uri"])["input_uri"]
    return column.null_count < len(column)
