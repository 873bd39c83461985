"""The training rows: read with text labels, split by time, and batched for `fit`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from feedback_loop.dataset import CREATED_AT, LABEL, label_text
from feedback_loop.errors import DataError


def read_labelled(path: Path) -> pd.DataFrame:
    """The rows of `path` with their labels as text; DataError when they cannot train.

    Every row must carry a usable label: prepare_dataset writes labelled rows only, so a
    null or empty label here is a broken input, reported with its rows, not dropped.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset {path} not found: pass the Parquet file written by prepare_dataset")
    frame = pd.read_parquet(path)
    if frame.empty:
        raise DataError(f"dataset {path} has no rows: widen the data window or lower its filters")
    for column in (LABEL, CREATED_AT):
        if column not in frame.columns:
            raise DataError(f"dataset {path} has no '{column}' column (columns: {', '.join(frame.columns)})")
    frame[LABEL] = label_text(frame, f"training data {path.name}")
    return frame


def split_recent(frame: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(fit rows, validation rows): validation is the most recent `fraction` by created_at.

    Validating on the newest rows asks the question that matters: does the model hold
    up on the data it is about to serve?
    """
    ordered = frame.sort_values(CREATED_AT, kind="stable")
    n_val = int(round(len(ordered) * fraction))
    if n_val < 1 or n_val >= len(ordered):
        return ordered, None
    return ordered.iloc[:-n_val], ordered.iloc[-n_val:]


def as_dataset(
    inputs: dict[str, np.ndarray],
    targets: np.ndarray,
    batch: int,
    seed: int | None,
    weights: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Batches for `fit`: decoded once into tensors, shuffled by index, gathered per batch, prefetched.

    The decoded columns stay in memory as whole tensors (the cache); each step gathers one
    batch with a vectorised `tf.gather` instead of shuffling and batching row by row.
    Text inputs (categories, users, items) become string tensors.
    """
    columns: dict[str, Any] = {"x": {k: tf.constant(v) for k, v in inputs.items()}, "y": tf.constant(targets)}
    if weights is not None:
        columns["w"] = tf.constant(weights)
    tensors = tf.data.Dataset.from_tensors(columns).cache()
    n = len(targets)
    order = tf.data.Dataset.range(n)
    if seed is not None:
        order = order.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    order = order.batch(batch)

    def gather(index: tf.Tensor, data: dict[str, Any]) -> tuple:
        picked = tf.nest.map_structure(lambda t: tf.gather(t, index), data)
        x = picked["x"] if len(picked["x"]) > 1 else next(iter(picked["x"].values()))
        return (x, picked["y"], picked["w"]) if "w" in picked else (x, picked["y"])

    data = tf.data.Dataset.zip(order, tensors.repeat())
    return data.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def trained_through(frame: pd.DataFrame) -> pd.Timestamp:
    return pd.to_datetime(frame[CREATED_AT], utc=True).max()


def new_rows_fraction(frame: pd.DataFrame, through: str | None) -> float | None:
    """Share of rows newer than `through` (the production model's newest training row)."""
    if not through:
        return None
    times = pd.to_datetime(frame[CREATED_AT], utc=True)
    return float((times > pd.Timestamp(through)).mean())
