"""What the model server captures of one request: the rows for the `predictions` table.

Built in the capture's writer thread from what the request left in the queue, never on the
request path. `features` are what the drift stage compares: the tabular columns as sent,
and for images four summary statistics (never the pixels). A user id is stored only as its
HMAC under the deployment's key (`FEEDBACK_HMAC_KEY`); without a key it is not stored.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np

from feedback_loop.feedback.capture import CsvRows, PredictionRow, csv_field, json_text

CLASSIFICATION, REGRESSION, RANKING = "classification", "regression", "ranking"
# Inputs that name a person: never stored as a feature.
PERSONAL_INPUTS = frozenset({"user"})


# Images summarised per numpy call: the writer's batches of 500 images, taken whole, made each
# temporary array 1.6 MB and the summary 2.5x as slow per image (measured, 28x28 images).
SUMMARY_CHUNK = 256


def image_summary(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """brightness, contrast, sharpness, ink of images [N, H, W] (or [N, H, W, 1]) of values 0..255.

    The same statistics as `demo.images.summary_features` (sharpness: the mean absolute
    Laplacian with reflected edges, as scipy.ndimage's), in numpy alone: the serve image has no scipy.
    """
    if len(pixels) > SUMMARY_CHUNK:
        parts = [image_summary(pixels[at:at + SUMMARY_CHUNK]) for at in range(0, len(pixels), SUMMARY_CHUNK)]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    n, (h, w) = len(pixels), np.shape(pixels)[1:3]
    x = np.asarray(pixels, dtype=np.float32).reshape(n, h, w) / np.float32(255)
    flat = x.reshape(n, h * w)  # reductions over one contiguous axis: ~2x as fast as over axes (1, 2)
    # The Laplacian's four neighbours added in place, an edge pixel standing in for the one beyond
    # it (reflected edges), in np.pad's order, so that the sums are the same to the last bit.
    lap = np.empty_like(x)
    lap[:, 1:], lap[:, 0] = x[:, :-1], x[:, 0]
    lap[:, :-1] += x[:, 1:]
    lap[:, -1] += x[:, -1]
    lap[:, :, 1:] += x[:, :, :-1]
    lap[:, :, 0] += x[:, :, 0]
    lap[:, :, :-1] += x[:, :, 1:]
    lap[:, :, -1] += x[:, :, -1]
    lap -= 4 * x
    np.abs(lap, out=lap)
    return {
        "brightness": flat.mean(axis=1),
        "contrast": flat.std(axis=1),
        "sharpness": lap.reshape(n, h * w).mean(axis=1),
        "ink": np.count_nonzero(flat > 0.5, axis=1) / (h * w),
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


@dataclass
class Packed:
    """Consecutive requests alike in all but their rows (model, version, task, classes, column
    names, input shapes), as a few lists and arrays: what the writer hands the row builder
    process. Packing and one pickle of these cost the server's GIL half what one pickle per
    request does (5 against 11 us per batch-1 image request, measured); `unpack` gives the
    requests back."""

    first: Answered  # the fields they share; its own rows' fields are not used
    created_at: list[datetime]
    ids: list[list[str]]
    latency_ms: list[float]
    user_id: list[str | None]
    consent: list[bool]
    inputs: Any  # their inputs concatenated (per input name for several)
    outputs: np.ndarray


def pack(batch: list[Answered]) -> list[Packed | Answered]:
    """`batch` with each run of alike requests packed (a request of arrays it cannot stack stays as it is)."""
    runs: list[list[Answered]] = []
    last: tuple | None = None
    for answered in batch:
        key = _alike(answered)
        if key is None or key != last:
            runs.append([])
        runs[-1].append(answered)
        last = key
    out: list[Packed | Answered] = []
    for run in runs:
        if len(run) == 1:
            out.append(run[0])
            continue
        first = run[0]
        inputs = ({name: np.concatenate([a.inputs[name] for a in run]) for name in first.inputs}
                  if isinstance(first.inputs, dict) else np.concatenate([a.inputs for a in run]))
        out.append(Packed(replace(first, ids=[], inputs=None, outputs=None), [a.created_at for a in run], [a.ids for a in run],
                          [a.latency_ms for a in run], [a.user_id for a in run], [a.consent for a in run],
                          inputs, np.concatenate([a.outputs for a in run])))
    return out


def unpack(items: list[Packed | Answered]) -> list[Answered]:
    """The requests `pack` packed, in their order."""
    out: list[Answered] = []
    for item in items:
        if isinstance(item, Answered):
            out.append(item)
            continue
        at = 0
        for created_at, ids, latency_ms, user_id, consent in zip(item.created_at, item.ids, item.latency_ms, item.user_id, item.consent):
            rows = slice(at, at + len(ids))
            inputs = {name: values[rows] for name, values in item.inputs.items()} if isinstance(item.inputs, dict) else item.inputs[rows]
            out.append(replace(item.first, created_at=created_at, ids=ids, inputs=inputs, outputs=item.outputs[rows],
                               latency_ms=latency_ms, user_id=user_id, consent=consent))
            at += len(ids)
    return out


def packed_prediction_csv(items: list[Packed | Answered]) -> CsvRows:
    """prediction_csv of packed requests: what the row builder process runs."""
    return prediction_csv(unpack(items))


def _alike(answered: Answered) -> tuple | None:
    """What requests must share to be packed together; None for inputs that are not arrays of rows."""
    inputs, outputs = answered.inputs, answered.outputs
    arrays = list(inputs.values()) if isinstance(inputs, dict) else [inputs]
    if not all(isinstance(a, np.ndarray) and a.ndim >= 1 and len(a) == len(answered.ids) for a in [*arrays, outputs]):
        return None
    shapes = tuple((a.shape[1:], a.dtype.str) for a in arrays)
    names = tuple(inputs) if isinstance(inputs, dict) else None
    # The same column names and classes objects (the model's own, for every request): compared by identity, not by value.
    return (answered.model_name, answered.model_version, answered.task, answered.image, id(answered.columns),
            id(answered.classes), names, shapes, outputs.shape[1:], outputs.dtype.str)


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


IMAGE_STATISTICS = ("brightness", "contrast", "sharpness", "ink")  # image_summary's, in its order


def image_rows(batch: list[Answered]) -> list[list[tuple[float, ...]]]:
    """The image statistics (IMAGE_STATISTICS) of each request's rows, computed once over all of
    them (numpy's cost per call, not per row, dominates small requests)."""
    pixels = [_pixels(answered) for answered in batch]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, images in enumerate(pixels):
        by_shape.setdefault(images.shape[1:], []).append(i)
    out: list[list[tuple[float, ...]]] = [[] for _ in batch]
    for members in by_shape.values():
        summary = image_summary(np.concatenate([pixels[i] for i in members]))
        rows = list(zip(*(summary[name].tolist() for name in IMAGE_STATISTICS)))
        at = 0
        for i in members:
            out[i] = rows[at:at + len(pixels[i])]
            at += len(pixels[i])
    return out


def image_features(batch: list[Answered]) -> list[list[dict[str, Any]]]:
    """The image statistics of several requests' rows, a dict per row."""
    return [[{name: _number(value) for name, value in zip(IMAGE_STATISTICS, row)} for row in rows] for rows in image_rows(batch)]


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


def prediction_csv(batch: list[Answered]) -> CsvRows:
    """The `predictions` rows of several answered requests as COPY's CSV text: the text
    `predictions_csv(prediction_rows_many(batch))` makes, built without a row object or a
    JSON encoder call per row, and with numpy called once per batch, not per request (the
    writer shares the server's CPU and GIL with the requests: what it spends per request is
    what capture costs a saturated server).
    """
    images = [i for i, answered in enumerate(batch) if answered.image]
    summaries = dict(zip(images, image_rows([batch[i] for i in images]))) if images else {}
    outputs = _output_fields(batch)
    models: dict[tuple[str, str], str] = {}  # (model, version) -> their CSV fields
    lines: list[str] = []
    for i, answered in enumerate(batch):
        names, rows = (IMAGE_STATISTICS, summaries[i]) if i in summaries else _numeric_rows(answered)
        if names is None:  # text among the features, or no column names: JSON as the row path writes it
            texts = [csv_field(json_text(row)) for row in features(answered)]
        else:  # one %-format per row; a row holding NaN or infinity writes null for it
            template, keys = _json_template(names)
            texts = [template % row if all(map(math.isfinite, row)) else '"{' + ",".join(k + _json_number(v) for k, v in zip(keys, row)) + '}"'
                     for row in rows]
        model = (answered.model_name, answered.model_version)
        if model not in models:
            models[model] = f"{csv_field(model[0])},{csv_field(model[1])}"
        # The request's own fields, formatted once: created_at, model, version; latency, user, consent.
        # csv_field's text, its type known (its checks cost ~1/3 of a batch-1 image row): an ISO time
        # holds no quote; a latency is a float; consent a bool.
        middle = f'"{answered.created_at.isoformat()}",{models[model]}'
        tail = f"{float(answered.latency_ms)!r},{csv_field(answered.user_id)},{'true' if answered.consent else 'false'}"
        lines += [f"{csv_field(pid)},{middle},{text},{out},{tail}\n" for pid, text, out in zip(answered.ids, texts, outputs[i])]
    return CsvRows("".join(lines), len(lines))


@functools.lru_cache(maxsize=64)
def _json_template(names: tuple[str, ...]) -> tuple[str, list[str]]:
    """A %-format of a JSON object of numbers inside a CSV field (its quotes doubled), and each
    name as such a key."""
    keys = [json_text(name).replace('"', '""') + ":" for name in names]
    return '"{' + ",".join(key.replace("%", "%%") + "%r" for key in keys) + '}"', keys


def _numeric_rows(answered: Answered) -> tuple[tuple[str, ...] | None, list[tuple[float, ...]]]:
    """A one-input tabular request's column names and rows, when they are all named numbers."""
    names = answered.columns.get("features") or []
    if answered.image or isinstance(answered.inputs, dict) or not names:
        return None, []
    array = np.asarray(answered.inputs)
    if array.ndim != 2 or array.shape[1] != len(names) or array.dtype.kind != "f":
        return None, []
    if len(set(names)) < len(names):  # a name twice: a JSON object keeps the last value
        return None, []
    return tuple(names), [tuple(row) for row in array.tolist()]


def _json_number(value: float) -> str:
    return repr(value) if math.isfinite(value) else "null"


def _csv_number(value: float) -> str:
    return repr(value) if math.isfinite(value) else ""


@functools.lru_cache(maxsize=64)
def _csv_labels(classes: tuple[str, ...]) -> list[str]:
    return [csv_field(label) for label in classes]


def _output_fields(batch: list[Answered]) -> list[list[str]]:
    """predicted_label, predicted_value, confidence of each request's rows, as CSV fields; the
    classifiers' argmax and max taken once over all their rows (per class count)."""
    out: list[list[str]] = [[] for _ in batch]
    by_width: dict[int, list[int]] = {}
    for i, answered in enumerate(batch):
        if answered.task == CLASSIFICATION:
            by_width.setdefault(answered.outputs.shape[1], []).append(i)
        else:
            values = answered.outputs.reshape(len(answered.ids)).tolist()
            # A recommender's score is its confidence that the user takes the item.
            out[i] = [f",{_csv_number(v)},{_csv_number(v)}" for v in values] if answered.task == RANKING else \
                [f",{_csv_number(v)}," for v in values]
    for members in by_width.values():
        probabilities = np.concatenate([batch[i].outputs for i in members])
        best, confidence = probabilities.argmax(axis=1).tolist(), probabilities.max(axis=1).tolist()
        at = 0
        for i in members:
            labels = _csv_labels(tuple(batch[i].classes))
            n = len(batch[i].ids)
            out[i] = [f"{labels[b]},,{_csv_number(c)}" for b, c in zip(best[at:at + n], confidence[at:at + n])]
            at += n
    return out
