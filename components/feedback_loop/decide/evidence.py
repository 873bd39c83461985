"""The evidence behind the performance rule: production's validated error, its error on fresh
feedback, what the last fruitless attempt saw, and the one-sided test between them.

Plain numbers and dataclasses, no I/O (`gather` reads the model store, the feedback extract and
the run history). Two losses: `error_rate` (classifiers: the share of answers saying "wrong")
and `mse` (regressors: the mean squared error of the corrected values).

The test. H0: fresh ≤ baseline × (1 + margin); fire when rejected at level alpha, one-sided.
- error_rate: a Wald z on the difference of two proportions with Agresti-Caffo's adjustment
  (one success and one failure added to each sample), so a perfect validation (0 errors) or an
  all-wrong window still has a variance; the baseline's own sampling error counts
  (its `rows`), scaled by (1 + margin).
- mse: Welch's t on the squared errors. When only the validated value and its row count are
  known, the baseline's variance of squared errors is taken as 2·mse² (Gaussian residuals:
  e²/σ² is χ² with one degree of freedom).
The interval shown for the fresh error is the two-sided (1 − 2·alpha) one (Wilson for rates,
Student's t for mse): its lower end is the one-sided bound the test uses.
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from dataclasses import dataclass, field
from typing import Any

METRICS = ("error_rate", "mse")
# Fewest new answers for "significantly worse than at the last attempt" (a normal approximation).
MIN_TEST_ROWS = 30


@dataclass(frozen=True)
class Sample:
    """A loss over `rows` rows: its mean (an error rate or an mse) and its per-row variance."""

    mean: float
    variance: float
    rows: int

    @classmethod
    def rate(cls, errors: int, rows: int) -> "Sample":
        p = errors / rows if rows else 0.0
        return cls(p, p * (1 - p), rows)

    @classmethod
    def squared(cls, total: float, total_sq: float, rows: int) -> "Sample":
        """From the sum of squared errors and the sum of their squares."""
        if rows == 0:
            return cls(0.0, 0.0, 0)
        mean = total / rows
        variance = max(total_sq / rows - mean * mean, 0.0) * (rows / (rows - 1) if rows > 1 else 1.0)
        return cls(mean, variance, rows)

    @classmethod
    def of(cls, values: dict[str, Any] | None) -> "Sample | None":
        if not values:
            return None
        return cls(float(values["mean"]), float(values["variance"]), int(values["rows"]))

    def pooled(self, other: "Sample") -> "Sample":
        """Both samples as one: the mean over all rows, the variance about that mean."""
        rows = self.rows + other.rows
        if rows == 0:
            return self
        mean = (self.mean * self.rows + other.mean * other.rows) / rows
        second = ((self.variance + self.mean**2) * self.rows + (other.variance + other.mean**2) * other.rows) / rows
        return Sample(mean, max(second - mean * mean, 0.0), rows)

    def interval(self, metric: str, level: float) -> tuple[float, float]:
        """Two-sided interval of the mean at `level`; (0, 0) without rows."""
        from scipy import stats  # here: settings import the rules, and need no scipy

        if self.rows == 0:
            return 0.0, 0.0
        if metric == "error_rate":  # Wilson's score interval: sound near 0 and 1
            z = float(stats.norm.ppf(0.5 + level / 2))
            n, p = self.rows, self.mean
            centre = (p + z * z / (2 * n)) / (1 + z * z / n)
            half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
            return max(centre - half, 0.0), min(centre + half, 1.0)
        t = float(stats.t.ppf(0.5 + level / 2, max(self.rows - 1, 1)))
        half = t * math.sqrt(self.variance / self.rows)
        return max(self.mean - half, 0.0), self.mean + half


@dataclass(frozen=True)
class Baseline:
    """Production's validated error (from its lineage, or recomputed from its validation predictions),
    possibly pooled with its answers over its first days of service (`validated` keeps the former)."""

    metric: str  # "error_rate" or "mse"
    sample: Sample
    source: str  # "lineage.json" or "reference_predictions.parquet" (+ its first days of service)
    version: str = ""
    validated: Sample | None = None  # the validation alone, when `sample` pools the first days of service


@dataclass(frozen=True)
class Attempt:
    """The last run that trained but blessed nothing, and the fresh error it judged on."""

    run_name: str
    started_at: str
    evidence_through: str  # newest answer it saw: later answers are new evidence
    sample: Sample | None = None
    tested_rows: int = 0  # answers of the window its performance test fired on


@dataclass(frozen=True)
class Evidence:
    """What the performance, new_data and first_model rules judge on."""

    baseline: Baseline | None
    reason: str = ""  # why there is no baseline (the rule cannot judge)
    fresh: Sample | None = None  # every answer of the window
    attempt: Attempt | None = None
    since_attempt: Sample | None = None  # answers newer than the attempt's evidence
    labelled_since_attempt: int = 0
    unjudged: int = 0  # negatives the loss cannot use (a regressor's "wrong" without a value)
    evidence_through: str = ""  # newest answer in the window
    recent: list[tuple[int, Sample]] = field(default_factory=list)  # (days, answers) of the judged ones' last days

    @property
    def judged(self) -> Sample | None:
        """The sample the test runs on: the answers since the attempt, when one is remembered."""
        return self.since_attempt if self.attempt else self.fresh


@dataclass(frozen=True)
class Test:
    """fresh vs reference × (1 + margin), one-sided."""

    threshold: float  # reference mean × (1 + margin)
    statistic: float
    p_value: float
    fired: bool
    name: str  # "z (Agresti-Caffo)" or "Welch t"


def worse_than(fresh: Sample, reference: Sample, margin: float, alpha: float, metric: str) -> Test:
    """Whether `fresh` is worse than `reference` × (1 + margin), by a one-sided test at `alpha`."""
    from scipy import stats

    scale = 1.0 + margin
    threshold = reference.mean * scale
    if metric == "error_rate":
        f = (fresh.mean * fresh.rows + 1) / (fresh.rows + 2)
        r = (reference.mean * reference.rows + 1) / (reference.rows + 2)
        se = math.sqrt(f * (1 - f) / (fresh.rows + 2) + scale * scale * r * (1 - r) / (reference.rows + 2))
        statistic = (f - scale * r) / se
        p = float(stats.norm.sf(statistic))
        name = "z (Agresti-Caffo)"
    else:
        a = fresh.variance / max(fresh.rows, 1)
        b = scale * scale * reference.variance / max(reference.rows, 1)
        diff = fresh.mean - threshold
        if a + b <= 0:  # every squared error equal on both sides: the difference is exact
            statistic, p = 0.0, (0.0 if diff > 0 else 1.0)
        else:
            df = (a + b) ** 2 / (a * a / max(fresh.rows - 1, 1) + b * b / max(reference.rows - 1, 1))
            statistic = diff / math.sqrt(a + b)
            p = float(stats.t.sf(statistic, df))
        name = "Welch t"
    return Test(threshold, float(statistic), p, p < alpha, name)


@dataclass(frozen=True)
class Finding:
    """The most significant window of the performance test: its name, first answer time, answers and test."""

    window: str
    start: str  # ISO time of its first answer's day or the attempt's evidence ("" = the whole extract)
    sample: Sample
    test: Test
    windows_tested: int


def scan(e: Evidence, margin: float, alpha: float, needed: int, min_rows: int) -> Finding | None:
    """The judged answers (at least `needed`) and their recent windows (last 1, 2, 4, ... days,
    at least `min_rows` answers each), each tested at alpha / (number of windows), Bonferroni:
    the most significant, or None.

    The whole window alone would let weeks of answers from before a change dilute the days
    after it; the recent ones alone would forget a slow drift. Testing both keeps the level.
    """
    judged = e.judged
    if e.baseline is None or judged is None or judged.rows < max(needed, 1):
        return None
    whole = ("since " + ("the attempt" if e.attempt else "production's training"), e.attempt.evidence_through if e.attempt else "")
    windows = [(*whole, judged)]
    last = e.evidence_through[:10]
    for days, s in e.recent:
        if min_rows <= s.rows < judged.rows and last:
            first = date.fromisoformat(last) - timedelta(days=days - 1)
            windows.append((f"last {days} day{'s' if days > 1 else ''}", f"{first.isoformat()}T00:00:00+00:00", s))
    each = alpha / len(windows)
    tests = [Finding(name, start, s, worse_than(s, e.baseline.sample, margin, each, e.baseline.metric), len(windows))
             for name, start, s in windows]
    return min(tests, key=lambda f: f.test.p_value)


def describe(metric: str, sample: Sample, alpha: float) -> str:
    """"23.0% [19.1%, 27.4%] on 400 answers" (or the mse), with the (1 − 2·alpha) interval."""
    lo, hi = sample.interval(metric, 1 - 2 * alpha)
    what = "answers" if metric == "error_rate" else "corrected values"
    return f"{fmt(metric, sample.mean)} [{fmt(metric, lo)}, {fmt(metric, hi)}] on {sample.rows} {what}"


def fmt(metric: str, value: float) -> str:
    """An error rate as a percentage, an mse with four significant digits."""
    return f"{value:.1%}" if metric == "error_rate" else f"{value:.4g}"


def label(metric: str) -> str:
    return "error rate" if metric == "error_rate" else "mse"


def summary(e: Evidence, margin: float, alpha: float, min_rows: int = 1) -> dict[str, Any]:
    """The payoff's figures for to_dict and the Markdown: baseline, fresh, interval, sizes, test
    (over the windows the rule tests: recent ones of at least `min_rows` answers)."""
    out: dict[str, Any] = {"baseline": None, "reason": e.reason}
    if e.attempt:
        out["remembered_attempt"] = {
            "run_name": e.attempt.run_name, "started_at": e.attempt.started_at,
            "evidence_through": e.attempt.evidence_through,
            "error": e.attempt.sample.mean if e.attempt.sample else None,
            "rows": e.attempt.sample.rows if e.attempt.sample else 0,
        }
    b = e.baseline
    if b is None:
        return out
    level = 1 - 2 * alpha
    out["baseline"] = {"metric": b.metric, "value": b.sample.mean, "rows": b.sample.rows, "source": b.source, "version": b.version}
    if b.validated is not None:
        out["baseline"]["validated"] = {"value": b.validated.mean, "rows": b.validated.rows}
    for name, sample in (("fresh", e.fresh), ("since_attempt", e.since_attempt if e.attempt else None)):
        if sample is not None:
            lo, hi = sample.interval(b.metric, level)
            out[name] = {"value": sample.mean, "rows": sample.rows, "interval": [lo, hi], "level": level}
    best = scan(e, margin, alpha, 1, min_rows)
    if best is not None:
        t = best.test
        out["test"] = {"name": t.name, "window": best.window, "window_start": best.start, "windows_tested": best.windows_tested,
                       "threshold": t.threshold, "statistic": t.statistic, "p_value": t.p_value, "alpha": alpha,
                       "margin": margin, "significant": t.fired, "rows": best.sample.rows}
    return out
