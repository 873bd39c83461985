"""What the model server captures of one request: the rows for the `predictions` table.

Built in the capture's writer thread from what the request left in the queue, never on the
request path. `features` are what the drift stage compares: the tabular columns as sent,
and for images four summary statistics (never the pixels). A user id is stored only as its
HMAC under the deployment's key (`FEEDBACK_HMAC_KEY`); without a key it is not stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from feedback_loop.feedback.capture import PredictionRow

CLASSIFICATION, REGRESSION, RANKING = "classification", "regression", "ranking"
# Inputs that name a person: never stored as a feature.
PERSONAL_INPUTS = frozenset({"user"})


def image_summary(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """brightness, contrast, sharpness, ink of images [N, H, W] (or [N, H, W, 1]) of values 0..255.

    The same statistics as `demo.images.summary_features` (sharpness: the mean absolute
    Laplacian with reflected edges, as scipy.ndimage's), in numpy alone: the serve image has no scipy.
    """
    x = np.asarray(pixels, dtype=np.float32).reshape(len(pixels), *np.shape(pixels)[1:3]) / 255.0
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="symmetric")
    centre = padded[:, 1:-1, 1:-1]
    lap = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:] - 4 * centre
    return {
        "brightness": x.mean(axis=(1, 2)),
        "contrast": x.std(axis=(1, 2)),
        "sharpness": np.abs(lap).mean(axis=(1, 2)),
        "ink": (x > 0.5).mean(axis=(1, 2)),
    }


@dataclass
class Answered:
    """One request as the request path left it: references to its arrays, nothing copied or converted."""

    created_at: datetime
    ids: list[str]
    model_name: str
    model_version: str
    task: str
    inputs: Any  # np.ndarray (one input) or {input name: np.ndarray}
    columns: dict[str, list[str]]  # input name -> column names, for inputs that are columns
    image: bool
    outputs: np.ndarray  # probabilities [N, classes] or values [N]
    classes: list[str]
    latency_ms: float
    user_id: str | None
    consent: bool


def _number(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (np.floating, float)):
        return _number(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _pixels(answered: Answered) -> np.ndarray:
    pixels = answered.inputs if not isinstance(answered.inputs, dict) else next(iter(answered.inputs.values()))
    pixels = np.asarray(pixels)
    return pixels.reshape(len(pixels), *pixels.shape[1:3])


def image_features(batch: list[Answered]) -> list[list[dict[str, Any]]]:
    """The image statistics of several requests' rows, computed once over all of them (numpy's
    cost per call, not per row, dominates small requests)."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, answered in enumerate(batch):
        by_shape.setdefault(_pixels(answered).shape[1:], []).append(i)
    out: list[list[dict[str, Any]]] = [[] for _ in batch]
    for members in by_shape.values():
        summary = image_summary(np.concatenate([_pixels(batch[i]) for i in members]))
        columns = {name: values.tolist() for name, values in summary.items()}
        at = 0
        for i in members:
            n = len(batch[i].ids)
            out[i] = [{name: _number(values[at + j]) for name, values in columns.items()} for j in range(n)]
            at += n
    return out


def features(answered: Answered) -> list[dict[str, Any]]:
    """The summary features of each row, as JSON-ready dicts (NaN stored as null)."""
    n = len(answered.ids)
    if answered.image:
        return image_features([answered])[0]
    by_input = answered.inputs if isinstance(answered.inputs, dict) else {"features": answered.inputs}
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for name, values in by_input.items():
        if name in PERSONAL_INPUTS:
            continue
        array = np.asarray(values)
        names = answered.columns.get(name) or []
        if array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1 and not names):
            for row, value in zip(rows, array.reshape(n)):
                row[name] = _plain(value)
        elif names and array.ndim == 2 and array.shape[1] == len(names):
            for row, values_ in zip(rows, array.tolist()):
                row.update({column: _plain(v) for column, v in zip(names, values_)})
        else:  # an input without column names: positional names, e.g. f0, f1, ...
            for row, values_ in zip(rows, array.reshape(n, -1).tolist()):
                row.update({f"{name}_{j}": _plain(v) for j, v in enumerate(values_)})
    return rows


def prediction_rows_many(batch: list[Answered]) -> list[PredictionRow]:
    """The `predictions` rows of several answered requests (what the capture's writer builds at once)."""
    images = [i for i, answered in enumerate(batch) if answered.image]
    summaries = dict(zip(images, image_features([batch[i] for i in images]))) if images else {}
    return [row for i, answered in enumerate(batch) for row in prediction_rows(answered, summaries.get(i))]


def prediction_rows(answered: Answered, summaries: list[dict[str, Any]] | None = None) -> list[PredictionRow]:
    """The `predictions` rows of one answered request."""
    summaries = summaries if summaries is not None else features(answered)
    if answered.task == CLASSIFICATION:
        best = answered.outputs.argmax(axis=1)
        labels = [answered.classes[i] for i in best.tolist()]
        confidences = answered.outputs.max(axis=1).tolist()
        values: list[float | None] = [None] * len(labels)
    else:
        labels = [None] * len(answered.ids)
        values = answered.outputs.reshape(len(answered.ids)).tolist()
        # A recommender's score is its confidence that the user takes the item.
        confidences = values if answered.task == RANKING else [None] * len(labels)
    return [
        PredictionRow(
            id=prediction_id, created_at=answered.created_at, model_name=answered.model_name,
            model_version=answered.model_version, features=summary, predicted_label=label,
            predicted_value=None if value is None else _number(value),
            confidence=None if confidence is None else _number(confidence),
            latency_ms=answered.latency_ms, user_id=answered.user_id, consent=answered.consent,
        )
        for prediction_id, summary, label, value, confidence in zip(answered.ids, summaries, labels, values, confidences)
    ]
