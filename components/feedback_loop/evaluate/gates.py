"""The blessing's gates: each one a figure, a threshold, an interval and a sample size.

    improvement   the primary metric improves on production by ≥ `min_improvement` (relative)
    significance  the paired bootstrap confidence interval of that improvement lies above 0
                  (enforced with `require_significant`, the default; else reported)
    no_regression on the guard set the guard metric (accuracy, R², precision@k) loses at most
                  `max_test_regression` points against production
    latency       the candidate is slower than production by more than `max_latency_ratio`
                  *and* by more than `latency_margin_ms`, timed interleaved (see `latency`)
    floor         with no production model, the guard metric reaches an absolute floor
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from feedback_loop.evaluate.latency import LatencyComparison
from feedback_loop.evaluate.scoring import Score, paired_bootstrap
from feedback_loop.train.core import CLASSIFICATION, RANKING, REGRESSION

PRIMARY_METRIC = "accuracy"  # of classifiers; see `Task` for the others


@dataclass(frozen=True)
class Gates:
    min_improvement: float = 0.02  # relative gain of the primary metric over production
    max_test_regression: float = 0.01  # points of the guard metric lost on the guard set
    max_latency_ratio: float = 1.5  # candidate / production latency; 0 turns the gate off
    latency_margin_ms: float = 2.0  # ...and slower by more than this: a ratio on a tiny model is noise
    require_significant: bool = True  # the bootstrap CI's lower bound must be above 0
    confidence_level: float = 0.95
    guard_retire_alpha: float = 0.05  # level of the one-sided test that production fell on fresh data
    guard_retire_margin: float = 0.02  # ...by more than this (points of error; share of the guard MSE)
    bootstrap_samples: int = 1000
    top_k: int = 10
    latency_rounds: int = 100
    min_accuracy_without_production: float = 0.6  # absolute floors for the first model
    min_r2_without_production: float = 0.0
    min_precision_at_k_without_production: float = 0.05
    seed: int = 0


@dataclass(frozen=True)
class Task:
    """How one task is judged: the primary metric, its direction, the guard and floor metric."""

    name: str
    primary: str
    higher_is_better: bool
    guard: str  # compared in points on the guard set, and against the floor

    @classmethod
    def of(cls, task: str, gates: Gates) -> Task:
        if task == REGRESSION:
            return cls(task, "mse", False, "r2")
        if task == RANKING:
            metric = f"precision_at_{gates.top_k}"
            return cls(task, metric, True, metric)
        return cls(CLASSIFICATION, PRIMARY_METRIC, True, PRIMARY_METRIC)

    def floor(self, gates: Gates) -> float:
        return {
            CLASSIFICATION: gates.min_accuracy_without_production,
            REGRESSION: gates.min_r2_without_production,
            RANKING: gates.min_precision_at_k_without_production,
        }[self.name]

    def guard_units(self, score: Score) -> np.ndarray:
        """Per-unit terms of the guard metric, higher is better (for R², up to the label variance)."""
        return -score.units if self.name == REGRESSION else score.units


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    detail: str
    enforced: bool = True  # a reported-only gate never blocks the blessing
    figure: float | None = None  # what was measured, in the unit the threshold uses
    threshold: float | None = None
    interval: list[float] | None = None  # confidence interval of `figure`
    n: int | None = None  # rows (users for rankers, rounds for latency) behind the figure

    def as_metrics(self) -> dict[str, float]:
        values: dict[str, Any] = {"figure": self.figure, "threshold": self.threshold, "n": self.n}
        if self.interval is not None:
            values |= {"ci_low": self.interval[0], "ci_high": self.interval[1]}
        values["passed"] = float(self.passed)
        return {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}


def floor_gate(task: Task, candidate: Score, gates: Gates) -> GateResult:
    value, floor = candidate.metrics[task.guard], task.floor(gates)
    passed = bool(value >= floor)
    interval = _mean_interval(task, candidate, gates)
    detail = (
        f"no production model: {task.guard} {value:.3f}{_ci(interval)} {'≥' if passed else '<'} {floor:.3f} "
        f"required for a first model ({len(candidate.units)} {_units(task)})"
    )
    return GateResult("floor", passed, detail, True, value, floor, interval, len(candidate.units))


def improvement_interval(task: Task, candidate: Score, production: Score, gates: Gates) -> list[float] | None:
    """Paired bootstrap interval of the relative improvement (of the absolute gain when production scores 0)."""
    if len(candidate.units) != len(production.units) or len(candidate.units) < 2:
        return None
    sign = 1.0 if task.higher_is_better else -1.0
    low, high = paired_bootstrap(
        sign * candidate.units, sign * production.units, gates.bootstrap_samples, gates.confidence_level, gates.seed
    )
    prod = production.metrics[task.primary]
    scale = prod if prod > 0 else 1.0
    return [low / scale, high / scale]


def improvement_gate(
    task: Task, candidate: Score, production: Score, gates: Gates, interval: list[float] | None
) -> tuple[float | None, GateResult]:
    cand, prod = candidate.metrics[task.primary], production.metrics[task.primary]
    n = len(candidate.units)
    required = f"{gates.min_improvement * 100:g} % required"
    gain = _gain(task, cand, prod)
    if prod > 0:
        relative = gain / prod
        passed = bool(relative >= gates.min_improvement)
        detail = (
            f"{task.primary} {cand:.3f} vs production {prod:.3f}: {relative * 100:+.1f} %{_ci(interval, percent=True)} "
            f"{'≥' if passed else '<'} {required} ({n} {_units(task)})"
        )
        return relative, GateResult("improvement", passed, detail, True, relative, gates.min_improvement, interval, n)
    # A relative gain over zero is undefined: any gain passes.
    passed = bool(gain > 0)
    detail = f"{task.primary} {cand:.3f} vs production {prod:.3f}: {'any gain passes' if passed else 'no gain'} ({required})"
    return None, GateResult("improvement", passed, detail, True, gain, 0.0, interval, n)


def significance_gate(task: Task, interval: list[float] | None, n: int, gates: Gates) -> GateResult:
    enforced = gates.require_significant
    if interval is None:
        return GateResult("significance", not enforced, "too few rows for a bootstrap", enforced, n=n)
    passed = bool(interval[0] > 0) if enforced else True
    level = f"{gates.confidence_level:.0%}"
    detail = (
        f"paired bootstrap {level} CI of the {task.primary} improvement: [{interval[0] * 100:+.1f} %, "
        f"{interval[1] * 100:+.1f} %] over {n} {_units(task)}"
        + ((": lower bound > 0" if passed else ": lower bound ≤ 0") if enforced else " (reported)")
    )
    return GateResult("significance", passed, detail, enforced, interval[0], 0.0, interval, n)


def regression_gate(task: Task, candidate: Score, production: Score, gates: Gates, where: str) -> GateResult:
    """At most `max_test_regression` points of the guard metric lost on the guard set (`where` names it)."""
    cand, prod = candidate.metrics[task.guard], production.metrics[task.guard]
    lost = prod - cand  # every guard metric is higher-is-better
    n = len(candidate.units)
    interval = None
    if n >= 2 and len(production.units) == n:
        # Points lost = mean(production - candidate) of the guard's units (R²: scaled by the label variance).
        low, high = paired_bootstrap(
            task.guard_units(production), task.guard_units(candidate),
            gates.bootstrap_samples, gates.confidence_level, gates.seed,
        )
        scale = candidate.label_variance if task.name == REGRESSION else 1.0
        interval = [low / scale, high / scale] if scale > 0 else None
    passed = bool(lost <= gates.max_test_regression + 1e-12)
    detail = (
        f"{where}: {task.guard} {cand:.3f} vs production {prod:.3f}: {max(lost, 0.0) * 100:.1f} points lost "
        f"{'≤' if passed else '>'} {gates.max_test_regression * 100:g} allowed ({n} {_units(task)}"
        + (f"; interval of the loss{_ci(interval, points=True)})" if interval else ")")
    )
    return GateResult("no_regression", passed, detail, True, lost, gates.max_test_regression, interval, n)


def latency_gate(measured: LatencyComparison, gates: Gates) -> GateResult:
    """Fails only when the candidate is slower by both the ratio and the absolute margin."""
    slower_ratio = measured.ratio > gates.max_latency_ratio
    slower_ms = measured.difference_ms > gates.latency_margin_ms
    passed = not (slower_ratio and slower_ms)
    why = (
        "slower by both"
        if not passed
        else ("within the ratio" if not slower_ratio else f"only {measured.difference_ms:+.2f} ms: within the margin")
    )
    detail = (
        f"single request, {measured.rounds} interleaved rounds: candidate {measured.candidate_ms:.2f} ms vs production "
        f"{measured.production_ms:.2f} ms, {measured.ratio:.2f}x [{measured.ratio_low:.2f}, {measured.ratio_high:.2f}] "
        f"{'>' if slower_ratio else '≤'} {gates.max_latency_ratio:g}x allowed, {measured.difference_ms:+.2f} ms "
        f"{'>' if slower_ms else '≤'} {gates.latency_margin_ms:g} ms allowed: {why}"
    )
    interval = [measured.ratio_low, measured.ratio_high]
    return GateResult("latency", passed, detail, True, measured.ratio, gates.max_latency_ratio, interval, measured.rounds)


def _mean_interval(task: Task, score: Score, gates: Gates) -> list[float] | None:
    """Bootstrap interval of the guard metric alone (the floor gate's figure)."""
    if len(score.units) < 2:
        return None
    zeros = np.zeros_like(score.units)  # paired with zeros: the interval of the mean alone
    low, high = paired_bootstrap(score.units, zeros, gates.bootstrap_samples, gates.confidence_level, gates.seed)
    if task.name != REGRESSION:
        return [low, high]
    if score.label_variance <= 0:
        return None
    return [1 - high / score.label_variance, 1 - low / score.label_variance]  # R² = 1 - MSE / Var(y)


def _gain(task: Task, candidate: float, production: float) -> float:
    return candidate - production if task.higher_is_better else production - candidate


def _units(task: Task) -> str:
    return "users" if task.name == RANKING else "rows"


def _ci(interval: list[float] | None, percent: bool = False, points: bool = False) -> str:
    if interval is None:
        return ""
    if percent:
        return f" [{interval[0] * 100:+.1f}, {interval[1] * 100:+.1f}] %"
    if points:
        return f" [{interval[0] * 100:+.1f}, {interval[1] * 100:+.1f}]"
    return f" [{interval[0]:.3f}, {interval[1]:.3f}]"
