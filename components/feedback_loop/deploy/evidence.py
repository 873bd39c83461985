"""The statistics behind a canary's verdict: an always-valid interval and a label-free guard.

Every scheduled run looks at the same canary step again, with more data each time. A
fixed-sample test looked at daily would reject an equal canary far more often than its
level says, so the difference canary - stable is bounded by an *always-valid confidence
sequence*: a normal-mixture boundary (Robbins' mixture; Howard et al. 2021, Waudby-Smith
et al. 2024 for its asymptotic form). With the plug-in variance V of the difference and
its information I = 1/V, the half-width is

    w = sqrt((I + rho) * ln((I + rho) / (rho * alpha**2))) / I

and P(the true difference leaves [d - w, d + w] at ANY look) <= alpha, however many looks
are made. `RHO` tunes where the boundary is tightest (see there). Each side holds at
alpha / 2, so an equal canary is called worse at a step in at most alpha / 2 of rollouts,
and a canary worse than the margin is called non-inferior in at most alpha / 2.

The guard compares what the two versions answered over the same time, without labels:
one label for nearly every answer (with a binomial tail below `COLLAPSE_P_VALUE` under
stable's share of that label), the Jensen-Shannon distance of the label mixes, and the
Wasserstein distance of the confidences (classifiers) or of the predicted values in
stable's standard deviations (regressors). Distances are effect sizes with documented
thresholds, not tests: with a minimum number of predictions their noise stays far below
them (measured by `./build.sh bench canary`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

HEALTHY, UNHEALTHY, INCONCLUSIVE = "healthy", "unhealthy", "inconclusive"

# Prior precision of the normal mixture. Tightest near an information of ~rho / 0.13
# (~600 answers per version at 85 % satisfaction); at 40 000 answers it is ~10 % wider than
# a boundary tuned there, and it still rolls back a 30-point drop after 80 answers.
RHO = 300.0
# A canary answering one label nearly always is a collapse when, had it answered like
# stable, that many answers of that label would happen less than once in a thousand looks.
COLLAPSE_P_VALUE = 1e-3
# A numeric predicted_label with more distinct values than this is a regressor's value.
REGRESSOR_MIN_DISTINCT = 20


@dataclass(frozen=True)
class Interval:
    """An always-valid interval of a difference (canary - stable) and what it rests on."""

    estimate: float
    low: float
    high: float
    alpha: float

    def shown(self, scale: float = 100.0, unit: str = " pts") -> str:
        level = f"{100 * (1 - self.alpha):g}%"
        return (f"difference {self.estimate * scale:+.2f}{unit}, {level} always-valid interval "
                f"[{self.low * scale:+.2f}, {self.high * scale:+.2f}]{unit}")


def difference_interval(hits_c: float, n_c: float, hits_s: float, n_s: float, alpha: float, rho: float = RHO) -> Interval:
    """Confidence sequence of p_canary - p_stable; valid simultaneously over every look."""
    if not (0 < n_c and 0 < n_s and 0 <= hits_c <= n_c and 0 <= hits_s <= n_s):
        raise ValueError(f"counts must satisfy 0 <= hits <= n, n > 0: {hits_c}/{n_c}, {hits_s}/{n_s}")
    rate_c, rate_s = hits_c / n_c, hits_s / n_s
    # Variance with one pseudo-success and failure each: an error rate of 0 is not certainty.
    smooth_c, smooth_s = (hits_c + 1) / (n_c + 2), (hits_s + 1) / (n_s + 2)
    variance = smooth_c * (1 - smooth_c) / n_c + smooth_s * (1 - smooth_s) / n_s
    info = 1.0 / variance
    half = math.sqrt((info + rho) * math.log((info + rho) / (rho * alpha**2))) / info
    estimate = rate_c - rate_s
    return Interval(estimate, estimate - half, estimate + half, alpha)


def non_inferiority(interval: Interval, margin: float, higher_is_better: bool = True) -> str:
    """Worse for sure: unhealthy; within the margin for sure: healthy; else inconclusive."""
    if higher_is_better:
        if interval.high < 0:
            return UNHEALTHY
        return HEALTHY if interval.low > -margin else INCONCLUSIVE
    if interval.low > 0:
        return UNHEALTHY
    return HEALTHY if interval.high < margin else INCONCLUSIVE


class PredictionSummary(Protocol):
    """What the guard reads of one version's predictions (feedback.by_version.VersionPredictions)."""

    count: int
    labels: Mapping[str, int]
    numeric: bool
    distinct: int
    confidence_quantiles: Sequence[float]
    value_quantiles: Sequence[float]


@dataclass(frozen=True)
class GuardLimits:
    min_predictions: int = 30
    collapse_share: float = 0.95
    max_label_distance: float = 0.3
    max_confidence_distance: float = 0.2
    max_value_distance: float = 0.5


@dataclass(frozen=True)
class GuardResult:
    verdict: str
    detail: str
    canary: float | None = None
    stable: float | None = None


def guard(canary: PredictionSummary, stable: PredictionSummary, limits: GuardLimits) -> GuardResult:
    """Compares what the canary answered with what stable answered over the same time."""
    sizes = f"{canary.count} canary vs {stable.count} stable predictions"
    if min(canary.count, stable.count) < limits.min_predictions:
        return GuardResult(INCONCLUSIVE, f"guard: {sizes}, fewer than {limits.min_predictions} to compare")
    top_label, top_count = max(canary.labels.items(), key=lambda kv: (kv[1], kv[0]), default=("", 0))
    share = top_count / canary.count
    stable_share = stable.labels.get(top_label, 0) / stable.count
    if share >= limits.collapse_share:
        p_value = _binomial_tail(top_count, canary.count, (stable.labels.get(top_label, 0) + 0.5) / (stable.count + 1))
        if p_value < COLLAPSE_P_VALUE:
            return GuardResult(
                UNHEALTHY,
                f"guard: collapse, {100 * share:.1f}% of {canary.count} canary answers are {top_label!r}"
                f" (stable {100 * stable_share:.1f}% of {stable.count}; binomial p={p_value:.2g} < {COLLAPSE_P_VALUE:g})",
                share, stable_share,
            )
    if canary.numeric and stable.numeric and max(canary.distinct, stable.distinct) > REGRESSOR_MIN_DISTINCT:
        spread = quantile_std(stable.value_quantiles)
        distance = wasserstein(canary.value_quantiles, stable.value_quantiles) / spread if spread > 0 else 0.0
        return _within(distance, limits.max_value_distance, "predicted values' Wasserstein distance in stable SDs", sizes)
    label_distance = js_distance(_with_rest(canary.labels, canary.count), _with_rest(stable.labels, stable.count))
    if label_distance > limits.max_label_distance:
        return _within(label_distance, limits.max_label_distance, "label mix Jensen-Shannon distance", sizes)
    if canary.confidence_quantiles and stable.confidence_quantiles:
        distance = wasserstein(canary.confidence_quantiles, stable.confidence_quantiles)
        if distance > limits.max_confidence_distance:
            return _within(distance, limits.max_confidence_distance, "confidence Wasserstein distance", sizes)
        return GuardResult(
            HEALTHY, f"guard: label mix JS distance {label_distance:.3f} <= {limits.max_label_distance:g}, confidence"
            f" Wasserstein {distance:.3f} <= {limits.max_confidence_distance:g} ({sizes})", label_distance, 0.0,
        )
    return _within(label_distance, limits.max_label_distance, "label mix Jensen-Shannon distance", sizes)


def _within(distance: float, limit: float, what: str, sizes: str) -> GuardResult:
    if distance > limit:
        return GuardResult(UNHEALTHY, f"guard: {what} {distance:.3f} > {limit:g} ({sizes})", distance, 0.0)
    return GuardResult(HEALTHY, f"guard: {what} {distance:.3f} <= {limit:g} ({sizes})", distance, 0.0)


def js_distance(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Jensen-Shannon distance (base 2: 0 same mix, 1 disjoint) of two count tables."""
    total_a, total_b = sum(a.values()), sum(b.values())
    if total_a <= 0 or total_b <= 0:
        return 0.0
    divergence = 0.0
    for key in set(a) | set(b):
        p, q = a.get(key, 0) / total_a, b.get(key, 0) / total_b
        m = (p + q) / 2
        divergence += (p * math.log2(p / m) if p > 0 else 0.0) + (q * math.log2(q / m) if q > 0 else 0.0)
    return math.sqrt(max(0.0, divergence / 2))


def wasserstein(qa: Sequence[float], qb: Sequence[float]) -> float:
    """W1 of two distributions given by quantiles on the same evenly spaced grid (0..1)."""
    if len(qa) != len(qb) or len(qa) < 2:
        return 0.0
    gaps = [abs(x - y) for x, y in zip(qa, qb)]
    # Trapezoids over the grid: the integral of |F_a^-1(u) - F_b^-1(u)| du.
    return sum((gaps[i] + gaps[i + 1]) / 2 for i in range(len(gaps) - 1)) / (len(gaps) - 1)


def quantile_std(quantiles: Sequence[float]) -> float:
    """Standard deviation of a distribution given by its quantiles on an even grid."""
    if len(quantiles) < 2:
        return 0.0
    mids = [(quantiles[i] + quantiles[i + 1]) / 2 for i in range(len(quantiles) - 1)]
    mean = sum(mids) / len(mids)
    return math.sqrt(sum((x - mean) ** 2 for x in mids) / len(mids))


def _with_rest(labels: Mapping[str, int], count: int) -> dict[str, float]:
    """The listed labels plus the predictions of unlisted ones (a query returns the most frequent)."""
    rest = count - sum(labels.values())
    return {**labels, "\0rest": rest} if rest > 0 else dict(labels)


def _binomial_tail(k: int, n: int, p: float) -> float:
    from scipy.stats import binom

    return float(binom.sf(k - 1, n, min(max(p, 0.0), 1.0)))
