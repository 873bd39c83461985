"""Prediction and residual drift: the production model's outputs now against its own
predictions on its validation rows (`reference_predictions.parquet`, written beside its
training data).

The predicted labels get the categorical test and the confidences the numeric one, as
input features do (significant and large: the same effect-size threshold); the error rate on the labelled current rows is compared with the
validation error rate by a two-proportion z-test (residual drift). The tests here are
corrected across themselves, apart from the input features.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from feedback_loop.drift.features import compare_column, corrected_threshold, matters
from feedback_loop.drift.reading import read_sample, schema_and_rows
from feedback_loop.drift.result import ErrorRate, FeatureDrift, Kind, PredictionDrift
from feedback_loop.layout import REFERENCE_PREDICTIONS_FILE

PREDICTION_COLUMNS = ("predicted_label", "confidence", "label", "model_version")


def detect_prediction_drift(
    current: pa.Table,
    reference_predictions: Path | str | None,
    *,
    engine: str,
    p_value: float,
    correction: str,
    max_rows: int,
    seed: int,
    model_version: str,
    min_labelled: int,
    effect_threshold: float = 0.1,
) -> PredictionDrift:
    """The production model's outputs in `current` against `reference_predictions`, or why they are not compared."""
    if reference_predictions is None:
        return PredictionDrift(
            reason=f"no {REFERENCE_PREDICTIONS_FILE} next to the production model's training data "
            "(models trained before it was written have none)"
        )
    path = Path(reference_predictions)
    schema, rows = schema_and_rows(path, "reference predictions")
    wanted = [c for c in ("label", "predicted_label", "confidence") if c in schema.names]
    outputs = [c for c in ("predicted_label", "confidence") if c in wanted and c in current.column_names]
    if not outputs:
        return PredictionDrift(
            reason="neither predicted_label nor confidence is in both the current data and the reference predictions"
        )
    if rows == 0:
        return PredictionDrift(reason=f"{REFERENCE_PREDICTIONS_FILE} has no rows")
    reference = read_sample(path, wanted, max_rows=max_rows, seed=seed + 2, numeric=set()).table

    served = ""
    if model_version and "model_version" in current.column_names:
        mine = pc.equal(current.column("model_version"), model_version)
        if pc.any(mine).as_py():  # during a canary, the canary's predictions are not the production model's
            current, served = current.filter(mine), model_version

    tests: list[FeatureDrift] = []
    for name in outputs:
        kind: Kind = "categorical" if name == "predicted_label" else "numeric"
        test = compare_column(name, kind, reference.column(name), current.column(name), engine)
        if not isinstance(test, str):
            tests.append(test)

    residual, residual_reason = None, ""
    if "label" not in wanted or "predicted_label" not in wanted:
        residual_reason = f"{REFERENCE_PREDICTIONS_FILE} lacks label or predicted_label"
    elif "label" not in current.column_names or "predicted_label" not in current.column_names:
        residual_reason = "the current data has no label or predicted_label column"
    else:
        ref_errors, ref_n = _errors(reference)
        cur_errors, cur_n = _errors(current)
        if min(ref_n, cur_n) < min_labelled:
            residual_reason = (
                f"{cur_n} labelled current rows and {ref_n} reference rows; at least {min_labelled} needed on each side"
            )
        else:
            z, p = two_proportions(ref_errors, ref_n, cur_errors, cur_n)
            residual = ErrorRate(ref_errors, ref_n, cur_errors, cur_n, statistic=z, p_value=p, drifted=False)

    p_values = [t.p_value for t in tests] + ([residual.p_value] if residual else [])
    if not p_values:
        return PredictionDrift(reason="no predictions to compare on one side", residual_reason=residual_reason)
    threshold = corrected_threshold(np.array(p_values), p_value, correction)
    return PredictionDrift(
        tests=[dataclasses.replace(t, drifted=matters(t, threshold, effect_threshold)) for t in tests],
        residual=residual and dataclasses.replace(residual, drifted=residual.p_value < threshold),
        threshold=threshold,
        effect_threshold=effect_threshold,
        n_reference=reference.num_rows,
        n_current=current.num_rows,
        model_version=served,
        residual_reason=residual_reason,
    )


def _errors(table: pa.Table) -> tuple[int, int]:
    """Rows with both a label and a prediction, and how many of them are wrong."""
    label, predicted = table.column("label"), table.column("predicted_label")
    both = pc.and_(pc.is_valid(label), pc.is_valid(predicted))
    wrong = pc.and_(both, pc.not_equal(label.cast(pa.string()), predicted.cast(pa.string())))
    return int(pc.sum(wrong).as_py() or 0), int(pc.sum(both).as_py() or 0)


def two_proportions(errors_a: int, n_a: int, errors_b: int, n_b: int) -> tuple[float, float]:
    """Pooled two-proportion z-test, two-sided: z (positive when b's rate is higher) and p-value."""
    pooled = (errors_a + errors_b) / (n_a + n_b)
    spread = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if spread == 0:
        return 0.0, 1.0  # all right or all wrong on both sides: the rates cannot differ
    z = (errors_b / n_b - errors_a / n_a) / spread
    return float(z), float(2 * stats.norm.sf(abs(z)))
