"""Input drift: does the data the model sees now differ from the data it was trained on?

Each feature column common to both datasets is tested on its own: numeric features with
the two-sample Kolmogorov-Smirnov test, categorical ones (strings, booleans, or columns
declared so) with the chi-squared test on the category counts. The per-feature p-values
are corrected for the number of features tested (Bonferroni or Benjamini-Hochberg), as
alibi-detect does for a batch. The dataset has drifted when the share of drifted
features is above `share_threshold` (0 by default: any drifted feature).

Beside the verdict the result carries what a person needs to act on it:

- data quality against the reference (missing-value rates, missing or extra columns,
  type changes, values outside the reference range, NaN and infinity), over every row;
- prediction drift (predicted labels and confidences now vs the production model's
  predictions on its validation rows, `reference_predictions.parquet`) and residual
  drift (error rate on the labelled current rows vs on those validation rows).

Both files are read in batches; above `max_rows` rows a side is tested on a seeded
uniform sample, and the report says so. Two engines run the tests: alibi-detect
(`KSDrift`, `ChiSquareDrift`) and SciPy, called the way alibi-detect calls it
(see `engines`). alibi-detect >= 0.11.5 is under the Business Source License; the SciPy
engine gives the same verdicts without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feedback_loop import dataset, storage
from feedback_loop.drift import engines
from feedback_loop.drift.reading import ColumnCounts, Sample, read_sample
from feedback_loop.errors import DataError

logger = logging.getLogger(__name__)

ENGINES = engines.ENGINES
CORRECTIONS = ("bonferroni", "fdr")
FEATURE_TYPES = ("numeric", "categorical", "ignore")
REFERENCE_PREDICTIONS_FILE = "reference_predictions.parquet"
PREDICTION_COLUMNS = ("predicted_label", "confidence", "label", "model_version")
DEFAULT_MAX_ROWS = 1_000_000
N_BINS = 20
MAX_CATEGORIES_SHOWN = 20  # beyond this, the rarest categories are pooled in charts and summaries
MAX_UNSEEN_LISTED = 50
HISTOGRAM_SAMPLE = 10_000
MISSING_RISE = 0.01  # a rise in the missing-value share this large (absolute) is a quality issue
OUT_OF_RANGE_SHARE = 0.01  # so is this share of current values outside the reference's range

Kind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class Histogram:
    """Counts per bin on both sides. Numeric bins share `edges` (len(labels) + 1 values)."""

    labels: list[str]
    reference: list[int]
    current: list[int]
    edges: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    kind: Kind
    test: str
    statistic: float  # KS distance, or the chi-squared statistic
    p_value: float  # raw, before the correction for the number of features
    drifted: bool  # after the correction
    n_reference: int  # finite, non-null values tested
    n_current: int
    reference: dict[str, float]  # mean and std, or category shares
    current: dict[str, float]
    histogram: Histogram
    unseen: list[str] = field(default_factory=list)  # categories absent from the reference, most frequent first
    n_unseen: int = 0


@dataclass(frozen=True)
class ColumnQuality:
    """One feature column on both sides, counted over every row."""

    name: str
    reference_type: str
    current_type: str
    reference_missing: float  # share of rows that are null or NaN
    current_missing: float
    reference_nan: int = 0
    current_nan: int = 0
    reference_inf: int = 0
    current_inf: int = 0
    reference_min: float | None = None  # finite values; None for non-numeric columns
    reference_max: float | None = None
    current_min: float | None = None
    current_max: float | None = None
    below_range: int = 0  # current finite values under the reference minimum
    above_range: int = 0
    current_rows: int = 0

    @property
    def out_of_range(self) -> float:
        """Share of current rows outside the reference's [min, max]."""
        return (self.below_range + self.above_range) / self.current_rows if self.current_rows else 0.0

    def issues(self) -> list[str]:
        found = []
        if self.current_missing - self.reference_missing >= MISSING_RISE:
            found.append(f"missing values rose from {_share(self.reference_missing)} to {_share(self.current_missing)}")
        if self.current_nan:
            found.append(f"{self.current_nan:,} NaN in the current data (reference: {self.reference_nan:,})")
        if self.current_inf:
            found.append(f"{self.current_inf:,} infinite values in the current data (reference: {self.reference_inf:,})")
        if self.out_of_range > OUT_OF_RANGE_SHARE:
            found.append(
                f"{_share(self.out_of_range)} of current values outside the reference range "
                f"[{self.reference_min:.4g}, {self.reference_max:.4g}] ({self.below_range:,} below, {self.above_range:,} above)"
            )
        return found


@dataclass(frozen=True)
class Quality:
    """The current data's feature columns against the reference's. Reported, never fatal."""

    columns: list[ColumnQuality] = field(default_factory=list)  # features in both datasets
    missing_columns: list[str] = field(default_factory=list)  # features of the reference absent now
    extra_columns: list[str] = field(default_factory=list)  # features only the current data has
    type_changes: dict[str, str] = field(default_factory=dict)  # feature -> "double → string"

    def issues(self) -> list[str]:
        """One line per problem found, most structural first."""
        lines = [f"{name}: in the reference but missing from the current data" for name in self.missing_columns]
        lines += [f"{name}: new in the current data (not in the reference, not tested)" for name in self.extra_columns]
        lines += [f"{name}: type changed {change}" for name, change in self.type_changes.items()]
        lines += [f"{c.name}: {issue}" for c in self.columns for issue in c.issues()]
        return lines


@dataclass(frozen=True)
class ErrorRate:
    """Residual drift: the error rate on current labelled rows vs on the reference predictions."""

    reference_errors: int
    reference_rows: int
    current_errors: int
    current_rows: int
    statistic: float  # two-proportion z; positive when the current error rate is higher
    p_value: float
    drifted: bool

    @property
    def reference_rate(self) -> float:
        return self.reference_errors / self.reference_rows

    @property
    def current_rate(self) -> float:
        return self.current_errors / self.current_rows


@dataclass(frozen=True)
class PredictionDrift:
    """The production model's outputs now vs on its own validation rows."""

    tests: list[FeatureDrift] = field(default_factory=list)  # predicted_label (chi²), confidence (KS)
    residual: ErrorRate | None = None
    threshold: float = 0.0  # per-test p-value bar, corrected across the tests here
    n_reference: int = 0
    n_current: int = 0
    model_version: str = ""  # current rows restricted to this version, when the data says which
    reason: str = ""  # why prediction drift was not tested; empty when it was
    residual_reason: str = ""  # why residual drift was not tested

    @property
    def tested(self) -> bool:
        return not self.reason

    @property
    def is_drift(self) -> bool:
        return any(t.drifted for t in self.tests) or bool(self.residual and self.residual.drifted)


@dataclass(frozen=True)
class DriftResult:
    features: list[FeatureDrift]
    is_drift: bool
    p_value: float  # significance level before the correction
    correction: str
    engine: str
    n_reference: int  # rows in the files
    n_current: int
    threshold: float = 0.0  # per-feature p-value below which a feature counts as drifted
    skipped: dict[str, str] = field(default_factory=dict)  # feature -> why it was not tested
    reason: str = ""  # why nothing was tested; empty when the test ran
    share_threshold: float = 0.0  # dataset drift when the share of drifted features is above it
    max_rows: int = DEFAULT_MAX_ROWS
    seed: int = 0
    sampled_reference: int = 0  # rows the tests used (== n_reference unless capped)
    sampled_current: int = 0
    feature_types: dict[str, str] = field(default_factory=dict)  # as declared
    quality: Quality = field(default_factory=Quality)
    predictions: PredictionDrift = field(default_factory=lambda: PredictionDrift(reason="the drift test did not run"))

    @property
    def tested(self) -> bool:
        return not self.reason

    @property
    def drifted(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.drifted]

    @property
    def share_drifted(self) -> float:
        return len(self.drifted) / len(self.features) if self.features else 0.0

    @property
    def has_details(self) -> bool:
        """Whether anything beyond the verdict line was measured (quality, predictions)."""
        return self.tested or bool(self.quality.columns) or self.predictions.tested

    @property
    def capped(self) -> bool:
        return self.sampled_reference < self.n_reference or self.sampled_current < self.n_current

    def ranked(self) -> list[FeatureDrift]:
        """Drifted features first, each group by rising p-value."""
        return sorted(self.features, key=lambda f: (not f.drifted, f.p_value, f.name))

    def metrics(self) -> dict[str, float]:
        """Flat numbers for KFP's Metrics: the verdict, each feature, quality and predictions."""
        p = self.predictions
        values = {
            "tested": float(self.tested),
            "is_drift": float(self.is_drift),
            "n_features": float(len(self.features)),
            "n_drifted": float(len(self.drifted)),
            "share_drifted": self.share_drifted,
            "share_threshold": self.share_threshold,
            "threshold": self.threshold,
            "n_reference": float(self.n_reference),
            "n_current": float(self.n_current),
            "sampled_reference": float(self.sampled_reference),
            "sampled_current": float(self.sampled_current),
            "max_rows": float(self.max_rows),
            "quality.issues": float(len(self.quality.issues())),
            "quality.missing_columns": float(len(self.quality.missing_columns)),
            "quality.extra_columns": float(len(self.quality.extra_columns)),
            "quality.type_changes": float(len(self.quality.type_changes)),
            "prediction.tested": float(p.tested),
            "prediction.is_drift": float(p.is_drift),
        }
        for feature in self.features:
            values[f"p_value.{feature.name}"] = feature.p_value
            values[f"statistic.{feature.name}"] = feature.statistic
        for column in self.quality.columns:
            values[f"quality.missing.{column.name}"] = column.current_missing
            if column.reference_min is not None:
                values[f"quality.out_of_range.{column.name}"] = column.out_of_range
        for test in p.tests:
            values[f"prediction.p_value.{test.name}"] = test.p_value
            values[f"prediction.statistic.{test.name}"] = test.statistic
        if p.residual:
            values["residual.error_rate.reference"] = p.residual.reference_rate
            values["residual.error_rate.current"] = p.residual.current_rate
            values["residual.p_value"] = p.residual.p_value
            values["residual.is_drift"] = float(p.residual.drifted)
        return values

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-able, with the derived figures a machine would otherwise recompute."""
        return {
            **dataclasses.asdict(self),
            "tested": self.tested,
            "share_drifted": self.share_drifted,
            "capped": self.capped,
            "drifted_features": [f.name for f in self.ranked() if f.drifted],
            "quality_issues": self.quality.issues(),
            "prediction_drift": {"tested": self.predictions.tested, "is_drift": self.predictions.is_drift},
        }


def not_tested(
    reason: str,
    *,
    n_reference: int = 0,
    n_current: int = 0,
    p_value: float = 0.05,
    correction: str = "bonferroni",
    engine: str = "alibi",
    skipped: dict[str, str] | None = None,
    **extra: Any,
) -> DriftResult:
    """A result that reports no drift because the test could not run, and says why."""
    return DriftResult(
        features=[],
        is_drift=False,
        p_value=p_value,
        correction=correction,
        engine=engine,
        n_reference=n_reference,
        n_current=n_current,
        skipped=skipped or {},
        reason=reason,
        **extra,
    )


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
    ref_schema, n_reference = _schema_and_rows(reference, "reference")
    cur_schema, n_current = _schema_and_rows(current, "current")
    options = dict(
        n_reference=n_reference, n_current=n_current, p_value=p_value, correction=correction, engine=engine,
        share_threshold=share_threshold, max_rows=max_rows, seed=seed, feature_types=declared,
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
        predictions = _prediction_drift(
            served.table if served else pa.table({}), reference_predictions, engine=engine, p_value=p_value,
            correction=correction, max_rows=max_rows, seed=seed, model_version=model_version, min_labelled=min_labelled,
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
        kind, why = _kind(ref_type, cur_type, declared.get(name))
        if kind is None:
            skipped[name] = why
        else:
            kinds[name] = kind

    numbers = {n for n in common if _family(ref_schema.field(n).type) == "number"}
    cur_numbers = {n for n in common if _family(cur_schema.field(n).type) == "number"}
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
    quality = _quality(ref_schema, cur_schema, ref_features, cur_features, common, ref_sample, cur_sample, bounds)
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
        feature = _test(name, kind, ref_sample.table.column(name), cur_sample.table.column(name), engine)
        if isinstance(feature, str):
            skipped[name] = feature
        else:
            raw.append(feature)

    predictions = _prediction_drift(
        cur_sample.table, reference_predictions, engine=engine, p_value=p_value, correction=correction,
        max_rows=max_rows, seed=seed, model_version=model_version, min_labelled=min_labelled,
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

    threshold = _threshold(np.array([f.p_value for f in raw]), p_value, correction)
    features = [dataclasses.replace(f, drifted=f.p_value < threshold) for f in raw]
    share = sum(f.drifted for f in features) / len(features)
    result = DriftResult(
        features=features, is_drift=share > share_threshold, threshold=threshold, skipped=skipped, **options
    )
    logger.info("%s", verdict(result))
    return result


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
        max_rows=max_rows, seed=seed, feature_types=dict(feature_types or {}),
    )
    if not reference_uri:
        result = not_tested("no production model yet", **options)
        logger.info("%s", verdict(result))
        return result
    _, n_current = _schema_and_rows(Path(current), "current")
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


def _schema_and_rows(path: Path, role: str) -> tuple[pa.Schema, int]:
    try:
        metadata = pq.read_metadata(path)
    except FileNotFoundError:
        raise DataError(f"{role} dataset {path} does not exist: check the path or URI given for it") from None
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(
            f"{role} dataset {path} is not a readable Parquet file ({err}): write it with feedback_loop.dataset"
        ) from None
    return metadata.schema.to_arrow_schema(), metadata.num_rows


def _family(type_: pa.DataType) -> str:
    """number, text, boolean, or the type itself: what a column holds, whatever its width."""
    t = pa.types
    if t.is_dictionary(type_):
        type_ = type_.value_type
    if t.is_integer(type_) or t.is_floating(type_) or t.is_decimal(type_):
        return "number"
    if t.is_string(type_) or t.is_large_string(type_) or t.is_string_view(type_):
        return "text"
    if t.is_boolean(type_):
        return "boolean"
    return str(type_)


def _kind(ref_type: pa.DataType, cur_type: pa.DataType, declared: str | None) -> tuple[Kind | None, str]:
    """The test a feature gets, or None and why it gets none."""
    ref, cur = _family(ref_type), _family(cur_type)
    if declared == "numeric":
        if ref == cur == "number":
            return "numeric", ""
        return None, f"declared numeric but holds {ref_type} in reference and {cur_type} in current"
    if declared == "categorical":
        if ref in ("number", "text", "boolean") and cur in ("number", "text", "boolean"):
            return "categorical", ""
        return None, f"declared categorical but holds {ref_type} in reference and {cur_type} in current"
    inferred = {"number": "numeric", "text": "categorical", "boolean": "categorical"}
    if ref not in inferred:
        return None, f"type {ref_type} is neither numeric nor text"
    if cur not in inferred:
        return None, f"type {cur_type} is neither numeric nor text"
    if inferred[ref] != inferred[cur]:
        return None, f"{inferred[ref]} ({ref_type}) in reference but {inferred[cur]} ({cur_type}) in current"
    return inferred[ref], ""  # type: ignore[return-value]


def _test(name: str, kind: Kind, ref: pa.ChunkedArray, cur: pa.ChunkedArray, engine: str) -> FeatureDrift | str:
    """The feature's test, or why it cannot run."""
    if kind == "numeric":
        ref_values, cur_values = _finite(ref), _finite(cur)
    else:
        ref_values, cur_values = _strings(ref), _strings(cur)
    if not len(ref_values) or not len(cur_values):
        return f"no values in the {'reference' if not len(ref_values) else 'current'} data"
    if kind == "numeric":
        return _test_numeric(name, ref_values, cur_values, engine=engine)
    return _test_categorical(name, ref_values, cur_values, engine=engine)


def _finite(column: pa.ChunkedArray) -> np.ndarray:
    # NaN and infinities are counted in the data-quality section; the test takes the finite values.
    values = pc.drop_null(column).cast(pa.float64()).to_numpy()
    finite = np.isfinite(values)
    return values if finite.all() else values[finite]


def _strings(column: pa.ChunkedArray) -> pa.Array:
    values = pc.drop_null(column)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    return pa.concat_arrays(values.cast(pa.string()).chunks) if values.num_chunks else pa.array([], pa.string())


def _test_numeric(name: str, ref: np.ndarray, cur: np.ndarray, *, engine: str) -> FeatureDrift:
    statistic, p = engines.ks(ref, cur, engine)
    return FeatureDrift(
        name=name,
        kind="numeric",
        test="KS",
        statistic=statistic,
        p_value=p,
        drifted=False,  # set once all features are tested
        n_reference=len(ref),
        n_current=len(cur),
        reference={"mean": float(np.mean(ref)), "std": float(np.std(ref))},
        current={"mean": float(np.mean(cur)), "std": float(np.std(cur))},
        histogram=_numeric_histogram(ref, cur),
    )


def _test_categorical(name: str, ref: pa.Array, cur: pa.Array, *, engine: str) -> FeatureDrift:
    # One dictionary for both sides, so a category new in `current` gets its own code.
    encoded = pa.concat_arrays([ref, cur]).dictionary_encode()
    categories = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    codes = encoded.indices.to_numpy()
    statistic, p, ref_counts, cur_counts = engines.chi_squared(
        codes[: len(ref)], codes[len(ref) :], len(categories), engine
    )
    new = np.flatnonzero(ref_counts == 0)
    new = new[np.argsort(-cur_counts[new], kind="stable")]
    return FeatureDrift(
        name=name,
        kind="categorical",
        test="chi-squared",
        statistic=statistic,
        p_value=p,
        drifted=False,  # set once all features are tested
        n_reference=len(ref),
        n_current=len(cur),
        reference=_shares(categories, ref_counts, order=ref_counts + cur_counts),
        current=_shares(categories, cur_counts, order=ref_counts + cur_counts),
        histogram=_categorical_histogram(categories, ref_counts, cur_counts),
        unseen=[str(c) for c in categories[new[:MAX_UNSEEN_LISTED]]],
        n_unseen=len(new),
    )


def _threshold(p_values: np.ndarray, alpha: float, correction: str) -> float:
    """The per-feature p-value below which a feature has drifted."""
    n = len(p_values)
    if correction == "bonferroni":
        return alpha / n
    # Benjamini-Hochberg, as alibi-detect's fdr(): the largest rank k with p_(k) < alpha * k / n
    # sets the bar; with none, the lowest step alpha / n still separates (nothing passes it).
    steps = alpha * np.arange(1, n + 1) / n
    below = np.flatnonzero(np.sort(p_values) < steps)
    return float(steps[below.max()]) if below.size else alpha / n


# ----------------------------------------------------------------------- data quality


def _quality(
    ref_schema: pa.Schema,
    cur_schema: pa.Schema,
    ref_features: list[str],
    cur_features: list[str],
    common: list[str],
    ref: Sample,
    cur: Sample,
    bounds: dict[str, tuple[float, float]],
) -> Quality:
    in_ref, in_cur = set(ref_features), set(cur_features)
    type_changes = {
        name: f"{ref_schema.field(name).type} → {cur_schema.field(name).type}"
        for name in common
        if _family(ref_schema.field(name).type) != _family(cur_schema.field(name).type)
    }
    columns = []
    for name in common:
        r, c = ref.counts[name], cur.counts[name]
        has_range = name in bounds
        columns.append(
            ColumnQuality(
                name=name,
                reference_type=str(ref_schema.field(name).type),
                current_type=str(cur_schema.field(name).type),
                reference_missing=_missing(r),
                current_missing=_missing(c),
                reference_nan=r.nan,
                current_nan=c.nan,
                reference_inf=r.inf,
                current_inf=c.inf,
                reference_min=r.minimum if has_range else None,
                reference_max=r.maximum if has_range else None,
                current_min=c.minimum if has_range and c.has_range else None,
                current_max=c.maximum if has_range and c.has_range else None,
                below_range=c.below,
                above_range=c.above,
                current_rows=c.rows,
            )
        )
    return Quality(
        columns=columns,
        missing_columns=[n for n in ref_features if n not in in_cur],
        extra_columns=[n for n in cur_features if n not in in_ref],
        type_changes=type_changes,
    )


def _missing(counts: ColumnCounts) -> float:
    return (counts.nulls + counts.nan) / counts.rows if counts.rows else 0.0


# ------------------------------------------------------------------- prediction drift


def _prediction_drift(
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
) -> PredictionDrift:
    if reference_predictions is None:
        return PredictionDrift(
            reason=f"no {REFERENCE_PREDICTIONS_FILE} next to the production model's training data "
            "(models trained before it was written have none)"
        )
    path = Path(reference_predictions)
    schema, rows = _schema_and_rows(path, "reference predictions")
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
        test = _test(name, kind, reference.column(name), current.column(name), engine)
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
            z, p = engines.two_proportions(ref_errors, ref_n, cur_errors, cur_n)
            residual = ErrorRate(ref_errors, ref_n, cur_errors, cur_n, statistic=z, p_value=p, drifted=False)

    p_values = [t.p_value for t in tests] + ([residual.p_value] if residual else [])
    if not p_values:
        return PredictionDrift(reason="no predictions to compare on one side", residual_reason=residual_reason)
    threshold = _threshold(np.array(p_values), p_value, correction)
    return PredictionDrift(
        tests=[dataclasses.replace(t, drifted=t.p_value < threshold) for t in tests],
        residual=residual and dataclasses.replace(residual, drifted=residual.p_value < threshold),
        threshold=threshold,
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


# --------------------------------------------------------------------------- charts


def _numeric_histogram(ref: np.ndarray, cur: np.ndarray) -> Histogram:
    # Tails beyond the 0.5 / 99.5 percentiles fall into the end bins, so one outlier does
    # not squash the whole chart into a single bar. The percentiles only place the bins:
    # an evenly strided subsample of each side (at most HISTOGRAM_SAMPLE values) gives them
    # at a fraction of the cost of the whole columns; the counts use every value.
    sample = np.concatenate([ref[:: max(len(ref) // HISTOGRAM_SAMPLE, 1)], cur[:: max(len(cur) // HISTOGRAM_SAMPLE, 1)]])
    lo, hi = (float(q) for q in np.quantile(sample, [0.005, 0.995]))
    if lo == hi:
        lo, hi = float(min(ref.min(), cur.min())), float(max(ref.max(), cur.max()))
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, N_BINS + 1)
    labels = [f"{a:.4g} – {b:.4g}" for a, b in zip(edges[:-1], edges[1:])]
    return Histogram(labels, _bin_counts(ref, lo, hi).tolist(), _bin_counts(cur, lo, hi).tolist(), edges.tolist())


def _bin_counts(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Counts in N_BINS equal bins over [lo, hi], values outside counted in the end bins."""
    index = (values - lo) * (N_BINS / (hi - lo))
    np.clip(index, 0, N_BINS - 1, out=index)
    return np.bincount(index.astype(np.intp), minlength=N_BINS)


def _categorical_histogram(categories: np.ndarray, ref_counts: np.ndarray, cur_counts: np.ndarray) -> Histogram:
    order = np.argsort(-(ref_counts + cur_counts), kind="stable")
    shown, rest = order[:MAX_CATEGORIES_SHOWN], order[MAX_CATEGORIES_SHOWN:]
    labels = [str(c) for c in categories[shown]]
    ref, cur = ref_counts[shown].tolist(), cur_counts[shown].tolist()
    if rest.size:
        labels.append(f"({rest.size} others)")
        ref.append(int(ref_counts[rest].sum()))
        cur.append(int(cur_counts[rest].sum()))
    return Histogram(labels, [int(v) for v in ref], [int(v) for v in cur])


def _shares(categories: np.ndarray, counts: np.ndarray, order: np.ndarray) -> dict[str, float]:
    total = counts.sum() or 1
    top = np.argsort(-order, kind="stable")[:MAX_CATEGORIES_SHOWN]
    return {str(categories[i]): float(counts[i] / total) for i in top}


def _share(value: float) -> str:
    return f"{value:.1%}" if value >= 0.001 or value == 0 else f"{value:.2%}"


# The reports live in their own module; these names keep `core` the stage's one entry point.
from feedback_loop.drift.report import verdict, write_html, write_json, write_markdown  # noqa: E402

__all__ = [
    "DriftResult", "FeatureDrift", "PredictionDrift", "Quality", "detect", "not_tested", "run",
    "verdict", "write_html", "write_json", "write_markdown",
]
