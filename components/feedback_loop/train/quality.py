"""What a trained model is worth on rows it did not fit: reference answers, the validated
metric recorded in the lineage, and permutation feature importance.

The validated metric (`lineage.json` key `validation`) is the model's own baseline, read
by the retrain rule: computed on exactly the rows of `reference_predictions.parquet`
(the validation rows, or the newest fit rows when there are too few to hold any out):

    classifiers   error_rate: share of rows whose most probable class is not the label
    regressors    mse: mean squared error in the label's unit
    recommenders  error_rate: share of rows whose 0.5-threshold answer (score >= 0.5 means
                  an interaction) disagrees with the label (label > 0 means an interaction)
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pandas as pd

from feedback_loop.dataset import ID, LABEL
from feedback_loop.train import families
from feedback_loop.train.families import CLASSIFICATION, RANKING, REGRESSION, call_inputs
from feedback_loop.train.model_io import PREDICT_BATCH

ERROR_RATE, MSE = "error_rate", "mse"
_IMPORTANCE_ROWS = 2000
_IMPORTANCE_REPEATS = 3


def reference_predictions(
    model: keras.Model, family: families.Family, spec: dict[str, Any], rows: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(id, label, predicted_label, confidence per row, the validated metric) on rows it did not fit."""
    out = family.predict(model, rows, spec, batch=PREDICT_BATCH)
    if family.task == CLASSIFICATION:
        predicted = np.asarray(spec["classes"], dtype=object)[out.argmax(axis=1)]
        confidence = out.max(axis=1)
    elif family.task == RANKING:
        predicted, confidence = np.where(out >= 0.5, "1", "0"), out
    else:  # a value has no confidence
        predicted, confidence = np.array([f"{v:.6g}" for v in out], dtype=object), np.full(len(out), np.nan)
    frame = pd.DataFrame(
        {
            ID: rows[ID].astype(str).to_numpy() if ID in rows.columns else np.arange(len(rows)).astype(str),
            LABEL: rows[LABEL].astype(str).to_numpy(),
            "predicted_label": predicted.astype(str),
            "confidence": confidence.astype(np.float64),
        }
    )
    return frame, validation_metric(family, spec, rows, out)


def validation_metric(family: families.Family, spec: dict[str, Any], rows: pd.DataFrame, out: np.ndarray) -> dict[str, Any]:
    """{"metric", "value", "rows"}: the model's error on `rows`, given its outputs `out` (see the module docstring)."""
    if family.task == REGRESSION:
        errors = (np.asarray(out, np.float64) - family.targets(rows, spec).astype(np.float64)) ** 2
        return {"metric": MSE, "value": float(errors.mean()), "rows": len(rows)}
    if family.task == CLASSIFICATION:
        wrong = out.argmax(axis=1) != family.targets(rows, spec)
    else:
        wrong = (out >= 0.5) != (family.targets(rows, spec) > 0)
    return {"metric": ERROR_RATE, "value": float(np.mean(wrong)), "rows": len(rows)}


def permutation_importance(
    model: keras.Model, family: families.Family, spec: dict[str, Any], rows: pd.DataFrame, seed: int
) -> dict[str, float] | None:
    """Tabular families: the score lost when one feature column is shuffled (mean of a few shuffles).

    Accuracy points for classifiers, mean squared error gained for regressors; None for
    families without feature columns of their own (images, interactions). A categorical
    column is shuffled like a numeric one: its raw values trade rows.
    """
    names = {t.name for t in model.inputs}
    numeric, categorical = families.columns.numeric_columns(spec), families.columns.categorical_columns(spec)
    if family.task not in (CLASSIFICATION, REGRESSION) or not (numeric or categorical) or not names <= {
        families.columns.FEATURES,
        families.columns.CATEGORIES,
    }:
        return None
    rows = rows.iloc[-_IMPORTANCE_ROWS:]
    data = family.inputs(rows, spec)
    y = family.targets(rows, spec)
    where = [(families.columns.FEATURES, j, c) for j, c in enumerate(numeric)]
    where += [(families.columns.CATEGORIES, j, c) for j, c in enumerate(categorical)]

    def quality(values: dict[str, np.ndarray]) -> float:
        out = np.asarray(model.predict(call_inputs(values), batch_size=PREDICT_BATCH, verbose=0))
        if family.task == CLASSIFICATION:
            return float((out.argmax(axis=1) == y).mean())
        return -float(np.mean((out.reshape(-1) - y) ** 2))

    rng = np.random.default_rng(seed)
    baseline = quality(data)
    importance = {}
    for input_name, j, column in where:
        drops = []
        for _ in range(_IMPORTANCE_REPEATS):
            shuffled = data[input_name].copy()
            shuffled[:, j] = rng.permutation(shuffled[:, j])
            drops.append(baseline - quality({**data, input_name: shuffled}))
        importance[column] = float(np.mean(drops))
    return importance
