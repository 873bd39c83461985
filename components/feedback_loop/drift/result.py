"""What the drift stage finds, as plain dataclasses: per-feature tests, data quality,
prediction and residual drift, and the verdict that gathers them.

Nothing here reads data or runs a test, so the reports and the callers can import it
without the statistics (`stattests`) or the readers (`reading`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_MAX_ROWS = 1_000_000
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
    effect: float = 0.0  # effect size: normalized Wasserstein (numbers), Jensen-Shannon distance (categories)
    effect_test: str = ""  # the distance test that measured it; "" when none did

    @property
    def effect_text(self) -> str:
        return f"{self.effect:.3g} ({self.effect_test})" if self.effect_test else "–"


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
    current_non_numeric: int = 0  # values of a number feature that are no number (text, booleans): missing
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
        if self.current_non_numeric:
            found.append(f"{self.current_non_numeric:,} values that are no number in the current data, counted as missing")
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
    effect_threshold: float = 0.1  # and the effect size an output's test must exceed
    n_reference: int = 0
    n_current: int = 0
    model_version: str = ""  # current rows restricted to this version, when the data says which
    reason: str = ""  # why prediction drift was not tested; empty when it was
    residual_reason: str = ""  # why residual drift was not tested

    @property
    def tested(self) -> bool:
        return not self.reason

    @property
    def outputs_drift(self) -> bool:
        """Whether predicted labels or confidences drifted (residual drift aside)."""
        return any(t.drifted for t in self.tests)

    @property
    def is_drift(self) -> bool:
        return self.outputs_drift or bool(self.residual and self.residual.drifted)


@dataclass(frozen=True)
class DriftResult:
    features: list[FeatureDrift]
    is_drift: bool
    p_value: float  # significance level before the correction
    correction: str
    engine: str
    n_reference: int  # rows in the files
    n_current: int
    threshold: float = 0.0  # per-feature p-value below which a feature counts as drifted ...
    effect_threshold: float = 0.1  # ... when its effect size is also above this
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
            "effect_threshold": self.effect_threshold,
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
            "prediction.outputs_drift": float(p.outputs_drift),
        }
        for feature in self.features:
            values[f"p_value.{feature.name}"] = feature.p_value
            values[f"statistic.{feature.name}"] = feature.statistic
            values[f"effect.{feature.name}"] = feature.effect
        for column in self.quality.columns:
            values[f"quality.missing.{column.name}"] = column.current_missing
            if column.reference_min is not None:
                values[f"quality.out_of_range.{column.name}"] = column.out_of_range
        for test in p.tests:
            values[f"prediction.p_value.{test.name}"] = test.p_value
            values[f"prediction.statistic.{test.name}"] = test.statistic
            values[f"prediction.effect.{test.name}"] = test.effect
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


def _share(value: float) -> str:
    return f"{value:.1%}" if value >= 0.001 or value == 0 else f"{value:.2%}"
