"""Whether the guard set still describes the task, judged on production itself.

The guard set (the production version's `test_data.parquet`) travels from version to
version so that a candidate cannot win the fresh holdout by forgetting what the old model
knew. Under concept drift the old rows' labels stop describing the task: every candidate
that adapts then "regresses" on them and is refused. The production model tells us: when
it scores significantly worse on the fresh holdout than on the guard, the world moved
(its inputs or its answers), and the guard is retired; the fresh holdout replaces it and
travels with the next blessed version.

The test is one-sided on production's error (classifiers: the share of wrong rows;
rankers: 1 - precision@k per user; regressors: the squared error): retire when the lower
bound at level 1 - `guard_retire_alpha` of (error on holdout - error on guard) is above
`guard_retire_margin` (points of error; for regressors, a share of the guard's MSE). The
bound is a Wald interval of two independent means; for 0/1 errors the variances use the
Agresti-Caffo adjustment (one success and one failure added to each side), so a perfect
score on one side does not make the test certain.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from feedback_loop.evaluate.gates import GateResult, Gates, Task
from feedback_loop.evaluate.scoring import Score
from feedback_loop.train.core import RANKING, REGRESSION

MIN_GUARD_UNITS = 30  # fewer rows (users) on either side: too few to call the concept moved


@dataclass(frozen=True)
class GuardCheck:
    """Production's error on the guard set vs on the fresh holdout, and what became of the guard."""

    retired: bool
    error: str  # what "error" means for this task
    on_guard: float
    on_holdout: float
    increase: float  # on_holdout - on_guard
    low: float  # one-sided lower confidence bound of `increase`, at 1 - alpha
    high: float  # the matching upper bound (together: the two-sided 1 - 2 alpha interval)
    margin: float  # in the unit of `increase`
    alpha: float
    guard_units: int
    holdout_units: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_gate(self) -> GateResult:
        """A reported row of the verdict: it chooses the guard set, it blocks nothing."""
        return GateResult(
            "guard", True, self.reason, False, self.increase, self.margin, [self.low, self.high],
            self.guard_units + self.holdout_units,
        )


def check_guard(task: Task, on_guard: Score, on_holdout: Score, gates: Gates) -> GuardCheck:
    """Retires the guard when production's error on the holdout is significantly above its error on the guard."""
    guard_errors, holdout_errors = _errors(task, on_guard), _errors(task, on_holdout)
    g, h = float(guard_errors.mean()), float(holdout_errors.mean())
    increase = h - g
    margin = gates.guard_retire_margin * (g if task.name == REGRESSION else 1.0)
    se = math.sqrt(_variance_of_mean(guard_errors) + _variance_of_mean(holdout_errors))
    z = NormalDist().inv_cdf(1 - gates.guard_retire_alpha)
    low, high = increase - z * se, increase + z * se
    enough = min(len(guard_errors), len(holdout_errors)) >= MIN_GUARD_UNITS
    retired = bool(enough and low > margin)
    error = _error_name(task)
    unit = "" if task.name == REGRESSION else " points"
    scale = 1.0 if task.name == REGRESSION else 100.0
    figures = (
        f"production's {error} {_fmt(g, task)} on the guard ({len(guard_errors)} {_units(task)}) vs {_fmt(h, task)} on "
        f"the fresh holdout ({len(holdout_errors)}): {increase * scale:+.2f}{unit}, one-sided "
        f"{1 - gates.guard_retire_alpha:.0%} lower bound {low * scale:+.2f}{unit}"
    )
    limit = f"margin {margin * scale:.2f}{unit}" + (
        f" ({gates.guard_retire_margin:.0%} of the guard's MSE)" if task.name == REGRESSION else ""
    )
    if retired:
        reason = (
            f"guard RETIRED: {figures} > {limit}: the concept moved, the old rows no longer describe the task; "
            "the fresh holdout replaces the guard and travels with the next blessed version"
        )
    elif not enough:
        reason = f"guard kept: {figures}; fewer than {MIN_GUARD_UNITS} {_units(task)} on one side, too few to retire it"
    else:
        reason = f"guard kept: {figures} ≤ {limit}: production holds up on fresh data, the guard still describes the task"
    return GuardCheck(
        retired, error, g, h, increase, low, high, margin, gates.guard_retire_alpha,
        len(guard_errors), len(holdout_errors), reason,
    )


def same_rows_check(task: Task, on_holdout: Score, gates: Gates) -> GuardCheck:
    """The guard is this holdout (the first retrain): nothing to compare, nothing to retire."""
    h = float(_errors(task, on_holdout).mean())
    n = len(on_holdout.units)
    reason = f"the guard set is this holdout ({n} {_units(task)}): nothing carried yet to retire"
    return GuardCheck(
        False, _error_name(task), h, h, 0.0, 0.0, 0.0, gates.guard_retire_margin, gates.guard_retire_alpha, n, n, reason
    )


def _errors(task: Task, score: Score) -> np.ndarray:
    units = np.asarray(score.units, np.float64)
    return units if not task.higher_is_better else 1.0 - units


def _variance_of_mean(values: np.ndarray) -> float:
    n = len(values)
    if n == 0:
        return 0.0
    if np.isin(values, (0.0, 1.0)).all():
        p = (values.sum() + 1) / (n + 2)  # Agresti-Caffo
        return float(p * (1 - p) / (n + 2))
    return float(values.var(ddof=1) / n) if n > 1 else 0.0


def _error_name(task: Task) -> str:
    return {REGRESSION: "MSE"}.get(task.name, "error rate" if task.guard == "accuracy" else f"1 - {task.guard}")


def _fmt(value: float, task: Task) -> str:
    return f"{value:.4g}" if task.name == REGRESSION else f"{value * 100:.1f} %"


def _units(task: Task) -> str:
    return "users" if task.name == RANKING else "rows"
