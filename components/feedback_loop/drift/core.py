"""Input drift: does the data the model sees now differ from the data it was trained on?

Each feature column common to both datasets is tested on its own: numeric features with
the two-sample Kolmogorov-Smirnov test, categorical ones (strings, booleans, or columns
declared so) with the chi-squared test on the category counts, the defaults of the
`stattests` registry. The per-feature p-values are corrected for the number of features
tested (Bonferroni or Benjamini-Hochberg), as alibi-detect does for a batch. A feature
drifts when its corrected p-value is significant AND its effect size is above
`effect_threshold` (normalized Wasserstein for numbers, Jensen-Shannon distance for
categories; 0.1 by default): with many rows every feature is "significant". The dataset
has drifted when the share of drifted features is above `share_threshold` (0 by default:
any drifted feature).

Beside the verdict the result carries what a person needs to act on it:

- data quality against the reference (missing-value rates, missing or extra columns,
  type changes, values outside the reference range, NaN and infinity), over every row;
- prediction drift (predicted labels and confidences now vs the production model's
  predictions on its validation rows, `reference_predictions.parquet`) and residual
  drift (error rate on the labelled current rows vs on those validation rows).

Both files are read in batches; above `max_rows` rows a side is tested on a seeded
uniform sample, and the report says so. Two engines run the tests: alibi-detect
(`KSDrift`, `ChiSquareDrift`) and SciPy, called the way alibi-detect calls it
(see `stattests`). alibi-detect >= 0.11.5 is under the Business Source License; the SciPy
engine gives the same verdicts without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from feedback_loop import dataset, storage
from feedback_loop.drift.features import CORRECTIONS, compare_column, corrected_threshold, family, kind_of, matters
from feedback_loop.drift.predictions import PREDICTION_COLUMNS, detect_prediction_drift
from feedback_loop.drift.quality import measure_quality
from feedback_loop.drift.reading import read_sample, schema_and_rows
from feedback_loop.drift.report import verdict
from feedback_loop.drift.result import DEFAULT_MAX_ROWS, DriftResult, FeatureDrift, Kind, not_tested
from feedback_loop.drift.stattests import ENGINES
from feedback_loop.errors import DataError
from feedback_loop.layout import REFERENCE_PREDICTIONS_FILE

logger = logging.getLogger(__name__)

FEATURE_TYPES = ("numeric", "categorical", "ignore")


def detect(
    reference: Path | str,
    current: Path | str,
    *,
    p_value: float = 0.05,
    correction: str = "bonferroni",
    engine: str = "alibi",
    share_threshold: float = 0.0,
    max_rows: int = DEFAULT_MAX_ROWS,
    seed: int = 0,
    feature_types: Mapping[str, str] | None = None,
    effect_threshold: float = 0.1,
    reference_predictions: Path | str | None = None,
    model_version: str = "",
    min_labelled: int = 30,
) -> DriftResult:
    """Tests every feature column common to `reference` and `current` (Parquet files).

    Args:
        reference: The production model's training data.
        current: The recent predictions (the feedback extract).
        p_value: Significance level before the correction for the number of features.
        correction: "bonferroni" or "fdr" (Benjamini-Hochberg).
        engine: "alibi" (alibi-detect) or "scipy"; the same tests either way.
        share_threshold: The dataset has drifted when the share of drifted features is
            above this; 0 means any drifted feature.
        max_rows: Largest number of rows tested per side; above it a seeded uniform sample.
        seed: Seed of that sample.
        feature_types: Declared types, name -> "numeric", "categorical" or "ignore";
            other features are typed from the reference (numbers numeric; strings and
            booleans categorical).
        effect_threshold: Smallest effect size (a distance) of a drifted feature.
        reference_predictions: The production model's predictions on its validation rows
            (columns label, predicted_label, confidence), or None when there are none.
        model_version: The production version: prediction drift uses only the current
            rows it served, when the data has a `model_version` column naming it.
        min_labelled: Fewest labelled rows on each side worth a residual-drift test.

    Returns:
        The verdict, per-feature tests, data quality and prediction drift.

    Raises:
        DataError: a dataset has no rows, or the two share no feature column.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, not {correction!r}")
    declared = dict(feature_types or {})
    if bad := {k: v for k, v in declared.items() if v not in FEATURE_TYPES}:
        raise DataError(f"feature types must be one of {FEATURE_TYPES}, got {bad}: fix drift_feature_types")
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, not {max_rows}")
    reference, current = Path(reference), Path(current)
    ref_schema, n_reference = schema_and_rows(reference, "reference")
    cur_schema, n_current = schema_and_rows(current, "current")
    options = dict(
        n_reference=n_reference, n_current=n_current, p_value=p_value, correction=correction, engine=engine,
        share_threshold=share_threshold, max_rows=max_rows, seed=seed, feature_types=declared,
        effect_threshold=effect_threshold,
    )
    if n_reference == 0:
        raise DataError(
            f"reference dataset {reference} has no rows: the production model's training data is empty; "
            "retrain from non-empty data or point the reference at another model version"
        )
    if n_current == 0:
        raise DataError(
            f"current dataset {current} has no rows: widen the feedback window (days_back) or wait for traffic"
        )
    ignored = {name for name, kind in declared.items() if kind == "ignore"}
    ref_features = [n for n in dataset.feature_columns(ref_schema) if n not in ignored]
    cur_features = [n for n in dataset.feature_columns(cur_schema) if n not in ignored]
    if not ref_features and not cur_features:
        # The image family carries only `pixels`: nothing tabular to test, which is no mismatch.
        # The model's outputs can still be compared, and are then the only early signal.
        outputs = [c for c in PREDICTION_COLUMNS if c in cur_schema.names]
        served = read_sample(current, outputs, max_rows=max_rows, seed=seed + 1, numeric=set()) if outputs else None
        predictions = detect_prediction_drift(
            served.table if served else pa.table({}), reference_predictions, engine=engine, p_value=p_value,
            correction=correction, max_rows=max_rows, seed=seed, model_version=model_version, min_labelled=min_labelled,
            effect_threshold=effect_threshold,
        )
        result = not_tested(
            "neither dataset has a tabular feature column (raw image inputs are not tested for drift)",
            predictions=predictions, **options,
        )
        logger.info("%s", verdict(result))
        return result
    in_current, in_reference = set(cur_features), set(ref_features)
    common = [name for name in ref_features if name in in_current]
    if not common:
        raise DataError(
            f"reference and current share no feature column: reference has {ref_features}, "
            f"current has {cur_features}; make the app log the same features the model was trained on"
        )
    for name in sorted(set(declared) - in_reference - ignored):
        logger.warning("feature type declared for %s, which the reference data does not have", name)

    # Kinds come from the reference (or the declaration); the current side must match.
    kinds: dict[str, Kind] = {}
    skipped: dict[str, str] = {}
    for name in common:
        ref_type, cur_type = ref_schema.field(name).type, cur_schema.field(name).type
        kind, why = kind_of(ref_type, cur_type, declared.get(name))
        if kind is None:
            skipped[name] = why
        else:
            kinds[name] = kind

    numbers = {n for n in common if family(ref_schema.field(n).type) == "number"}
    # Current columns read as numbers: number columns, and those the reference's type makes numeric.
    cur_numbers = {n for n in common if family(cur_schema.field(n).type) == "number" or kinds.get(n) == "numeric"}
    logger.info(
        "reading %d features of %d reference and %d current rows (at most %d per side)",
        len(common), n_reference, n_current, max_rows,
    )
    ref_sample = read_sample(reference, common, max_rows=max_rows, seed=seed, numeric=numbers)
    bounds = {
        n: (ref_sample.counts[n].minimum, ref_sample.counts[n].maximum)
        for n in numbers & cur_numbers
        if ref_sample.counts[n].has_range
    }
    cur_columns = common + [c for c in PREDICTION_COLUMNS if c in cur_schema.names and c not in common]
    cur_sample = read_sample(
        current, cur_columns, max_rows=max_rows, seed=seed + 1, numeric=cur_numbers, bounds=bounds
    )
    quality = measure_quality(ref_schema, cur_schema, ref_features, cur_features, common, ref_sample, cur_sample, bounds)
    options.update(
        sampled_reference=ref_sample.table.num_rows, sampled_current=cur_sample.table.num_rows, quality=quality
    )
    if ref_sample.capped or cur_sample.capped:
        logger.info(
            "testing a seeded sample: %d of %d reference rows, %d of %d current rows",
            ref_sample.table.num_rows, n_reference, cur_sample.table.num_rows, n_current,
        )

    logger.info("testing %d features (engine %s, %s correction)", len(kinds), engine, correction)
    raw: list[FeatureDrift] = []
    for name, kind in kinds.items():
        feature = compare_column(name, kind, ref_sample.table.column(name), cur_sample.table.column(name), engine)
        if isinstance(feature, str):
            skipped[name] = feature
        else:
            raw.append(feature)

    predictions = detect_prediction_drift(
        cur_sample.table, reference_predictions, engine=engine, p_value=p_value, correction=correction,
        max_rows=max_rows, seed=seed, model_version=model_version, min_labelled=min_labelled,
        effect_threshold=effect_threshold,
    )
    options["predictions"] = predictions
    for name, why in skipped.items():
        logger.warning("feature %s not tested: %s", name, why)
    for issue in quality.issues():
        logger.warning("data quality: %s", issue)
    if not raw:
        result = not_tested(
            "no feature could be tested: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()),
            skipped=skipped, **options,
        )
        logger.info("%s", verdict(result))
        return result

    threshold = corrected_threshold(np.array([f.p_value for f in raw]), p_value, correction)
    features = [dataclasses.replace(f, drifted=matters(f, threshold, effect_threshold)) for f in raw]
    share = sum(f.drifted for f in features) / len(features)
    result = DriftResult(
        features=features, is_drift=share > share_threshold, threshold=threshold, skipped=skipped, **options
    )
    logger.info("%s", verdict(result))
    return result


# The settings' names of run()'s options (settings.py prefixes them: "p_value" alone says little there).
SETTINGS = {
    "drift_p_value": "p_value",
    "min_drift_rows": "min_rows",
    "drift_correction": "correction",
    "drift_engine": "engine",
    "drift_share_threshold": "share_threshold",
    "drift_effect_threshold": "effect_threshold",
    "drift_max_rows": "max_rows",
    "seed": "seed",
    "drift_feature_types": "feature_types",
}


def options_of(values: Mapping[str, Any]) -> dict[str, Any]:
    """run()'s options from settings, or parameters of the settings' names."""
    return {option: values[setting] for setting, option in SETTINGS.items()}


def run(
    current: Path | str,
    reference_uri: str,
    *,
    p_value: float = 0.05,
    min_rows: int = 30,
    correction: str = "bonferroni",
    engine: str = "alibi",
    share_threshold: float = 0.0,
    max_rows: int = DEFAULT_MAX_ROWS,
    seed: int = 0,
    feature_types: Mapping[str, str] | None = None,
    effect_threshold: float = 0.1,
) -> DriftResult:
    """Tests `current` against the production model's training data at `reference_uri`.

    `reference_uri` is a model-store URI (`file://` or `gs://`) of the production model's
    `training_data.parquet`, or "" when no model is in production yet. The production
    model's predictions on its validation rows are read from `reference_predictions.parquet`
    in the same folder when it exists. Too few current rows, or no reference, give a
    not-tested result. The other arguments are those of `detect`.
    """
    options = dict(
        p_value=p_value, correction=correction, engine=engine, share_threshold=share_threshold,
        max_rows=max_rows, seed=seed, feature_types=dict(feature_types or {}), effect_threshold=effect_threshold,
    )
    if not reference_uri:
        result = not_tested("no production model yet", **options)
        logger.info("%s", verdict(result))
        return result
    _, n_current = schema_and_rows(Path(current), "current")
    if n_current < min_rows:
        result = not_tested(
            f"only {n_current} rows since the last training; at least {min_rows} needed", n_current=n_current, **options
        )
        logger.info("%s", verdict(result))
        return result
    version_uri = reference_uri.rstrip("/").rsplit("/", 1)[0]
    predictions_uri = storage.join(version_uri, REFERENCE_PREDICTIONS_FILE)
    with contextlib.ExitStack() as stack:
        reference = stack.enter_context(_local_copy(reference_uri))
        predictions = stack.enter_context(_local_copy(predictions_uri)) if storage.exists(predictions_uri) else None
        return detect(
            reference, Path(current), reference_predictions=predictions, min_labelled=min_rows,
            model_version=version_uri.rsplit("/", 1)[-1], **options,
        )


@contextlib.contextmanager
def _local_copy(uri: str) -> Iterator[Path]:
    if not uri.startswith("gs://"):
        yield storage.local_path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="drift-reference-") as tmp:
        path = Path(tmp) / uri.rsplit("/", 1)[-1]
        path.write_bytes(storage.read_bytes(uri))
        yield path

