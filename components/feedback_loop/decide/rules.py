"""The retrain rules: one registered function each, in the order the decision lists them.

A rule reads the signals and the policy's thresholds and says whether it fired, with the
figures behind it. A new rule is one function here with `@rule("name")` (and, when it needs
a threshold, one setting of the same name in settings.py): the settings' choices, the
component's default and the README read `NAMES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from feedback_loop.decide import evidence as ev
from feedback_loop.decide.signals import Signals
from feedback_loop.errors import SettingsError

Check = Callable[[Signals, "Policy"], tuple[bool, str]]
REGISTRY: dict[str, Check] = {}


def rule(name: str) -> Callable[[Check], Check]:
    """Registers a rule under `name`; the registration order is the listing order."""

    def register(check: Check) -> Check:
        REGISTRY[name] = check
        return check

    return register


@dataclass(frozen=True)
class Policy:
    """The rules' thresholds and which rules are enabled (defaults: the settings', see core.policy)."""

    min_feedback: int
    min_negative: int
    min_positive_rate: float
    max_error_rate: float
    max_recent_latency_ratio: float
    max_keyword_hits: int
    min_new_data_share: float
    max_model_age_days: float
    rules: tuple[str, ...]  # the enabled ones
    performance_margin: float
    performance_alpha: float

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> "Policy":
        """The policy from settings or parameters of the same names (extra names are ignored)."""
        picked = {f.name: values[f.name] for f in fields(cls)}
        return cls(**{**picked, "rules": tuple(picked["rules"])})

    def __post_init__(self) -> None:
        unknown = sorted(set(self.rules) - set(REGISTRY))
        if unknown:
            raise SettingsError(f"unknown retrain rule(s) {', '.join(unknown)}: choose among {', '.join(REGISTRY)}")


def _cmp(ok: bool, yes: str, no: str) -> str:
    return yes if ok else no


@rule("performance")
def performance(s: Signals, p: Policy) -> tuple[bool, str]:
    """The default trigger: production's error on fresh feedback is worse than its baseline (its
    validated error, pooled with its first days of service) by more than the margin, by a one-sided test (see decide/evidence.py). After an attempt that
    blessed nothing, it judges only the answers given since, once there are twice as many as its
    test fired on, or fires when they are significantly worse than what that attempt saw."""
    e = s.evidence
    if e is None or e.baseline is None:
        return False, f"cannot judge: {e.reason if e else 'no evidence gathered (no feedback extract)'}"
    b, metric = e.baseline, e.baseline.metric
    base = f"baseline {ev.label(metric)} {ev.describe(metric, b.sample, p.performance_alpha)} ({b.source})"
    judged = e.judged
    since = ""
    if e.attempt:
        since = f" since attempt {e.attempt.run_name or '?'} ({e.attempt.started_at}) blessed nothing"
    n = judged.rows if judged else 0
    # After a fruitless attempt, ask for twice the answers its test fired on: the evidence
    # doubles between attempts, so a concept the training data cannot yet teach costs a few
    # trainings, not one a run.
    needed = max(p.min_feedback, 2 * e.attempt.tested_rows) if e.attempt else p.min_feedback
    best = ev.scan(e, p.performance_margin, p.performance_alpha, needed, p.min_feedback)
    if best is None:
        fired = False
        detail = f"not enough fresh {'answers' if metric == 'error_rate' else 'corrected values'}{since}: {n} < {needed}; {base}"
    else:
        t = best.test
        fired = t.fired
        detail = (
            f"fresh {ev.label(metric)} {ev.describe(metric, best.sample, p.performance_alpha)} ({best.window}){since} vs {base}; "
            f"H0 fresh ≤ {ev.fmt(metric, t.threshold)} (+{p.performance_margin:.0%}): one-sided {t.name} = {t.statistic:.2f}, "
            f"p = {t.p_value:.3g} ({_cmp(t.fired, '<', '≥')} {p.performance_alpha:g} / {best.windows_tested} windows)"
        )
    if judged is not None and e.attempt and e.attempt.sample and not fired and n >= ev.MIN_TEST_ROWS:
        # New evidence of another kind: clearly worse than when the last attempt was made.
        again = ev.worse_than(judged, e.attempt.sample, 0.0, p.performance_alpha, metric)
        fired = again.fired
        detail += (
            f"; vs the attempt's {ev.fmt(metric, e.attempt.sample.mean)} on {e.attempt.sample.rows}: "
            f"p = {again.p_value:.3g} ({_cmp(again.fired, '<', '≥')} {p.performance_alpha:g})"
        )
    return fired, detail


@rule("first_model")
def first_model(s: Signals, p: Policy) -> tuple[bool, str]:
    """Bootstraps the loop: no model serves yet, and enough labelled rows to train one."""
    if s.has_production:
        return False, "a model serves"
    fired = s.new_rows >= p.min_feedback
    return fired, f"no model serves; {s.new_rows} labelled rows ({_cmp(fired, '≥', '<')} {p.min_feedback}){_since(s)}"


def _since(s: Signals) -> str:
    a = s.evidence.attempt if s.evidence else None
    return f" since attempt {a.run_name or '?'} ({a.started_at}) blessed nothing" if a else ""


@rule("user_feedback")
def user_feedback(s: Signals, p: Policy) -> tuple[bool, str]:
    """The first users' rule: enough answers, enough of them negative, and satisfaction low, together."""
    enough = s.feedback_count >= p.min_feedback
    if not enough:
        return False, f"not enough feedback: {s.feedback_count} < {p.min_feedback}"
    detail = (
        f"{s.feedback_count} feedbacks (≥ {p.min_feedback}), {s.negative_count} negative "
        f"({_cmp(s.negative_count >= p.min_negative, '≥', '<')} {p.min_negative}), satisfaction "
        f"{s.satisfaction_rate:.1%} ({_cmp(s.satisfaction_rate < p.min_positive_rate, '<', '≥')} {p.min_positive_rate:.0%})"
    )
    return s.negative_count >= p.min_negative and s.satisfaction_rate < p.min_positive_rate, detail


@rule("error_rate")
def error_rate(s: Signals, p: Policy) -> tuple[bool, str]:
    """The error rate over the recent days, on as many answers as the feedback rule asks for."""
    if s.error_rate_feedback < p.min_feedback:
        return False, f"not enough recent feedback: {s.error_rate_feedback} < {p.min_feedback}"
    fired = s.error_rate > p.max_error_rate
    return fired, f"error rate {s.error_rate:.1%} over {s.error_rate_feedback} recent feedbacks ({_cmp(fired, '>', '≤')} {p.max_error_rate:.1%})"


@rule("latency")
def latency(s: Signals, p: Policy) -> tuple[bool, str]:
    if s.latency_ratio <= 0:
        return False, "latency unknown (too few timed predictions or no baseline)"
    fired = s.latency_ratio > p.max_recent_latency_ratio
    return fired, (
        f"recent latency {s.recent_latency_ms:.1f} ms is {s.latency_ratio:.0%} of the baseline "
        f"{s.baseline_latency_ms:.1f} ms ({_cmp(fired, '>', '≤')} {p.max_recent_latency_ratio:.0%})"
    )


@rule("keywords")
def keywords(s: Signals, p: Policy) -> tuple[bool, str]:
    fired = s.keyword_hits > p.max_keyword_hits
    return fired, f"{s.keyword_hits} negative comments name a keyword ({_cmp(fired, '>', '≤')} {p.max_keyword_hits})"


@rule("new_data")
def new_data(s: Signals, p: Policy) -> tuple[bool, str]:
    if s.new_rows < p.min_feedback:
        return False, f"not enough new labelled rows{_since(s)}: {s.new_rows} < {p.min_feedback}"
    fired = s.new_data_share >= p.min_new_data_share
    return fired, f"{s.new_rows} new labelled rows{_since(s)}, {s.new_data_share:.0%} of the training data ({_cmp(fired, '≥', '<')} {p.min_new_data_share:.0%})"


@rule("input_drift")
def input_drift(s: Signals, p: Policy) -> tuple[bool, str]:
    return s.is_drift, "drift detected" if s.is_drift else "no drift detected"


@rule("model_age")
def model_age(s: Signals, p: Policy) -> tuple[bool, str]:
    if s.days_since_training < 0:
        return False, "no model trained yet"
    fired = s.days_since_training > p.max_model_age_days
    return fired, f"model trained {s.days_since_training:.1f} days ago ({_cmp(fired, '>', '≤')} {p.max_model_age_days:g})"


@rule("prediction_drift")
def prediction_drift(s: Signals, p: Policy) -> tuple[bool, str]:
    """The model's outputs (predicted labels, confidences) moved from its validation predictions,
    significantly and by more than the drift effect threshold."""
    if not s.prediction_tested:
        return False, "prediction drift not tested"
    return s.prediction_drift, "predicted labels or confidences drifted" if s.prediction_drift else "no prediction drift"


@rule("residual_drift")
def residual_drift(s: Signals, p: Policy) -> tuple[bool, str]:
    """The error rate on labelled rows is significantly above the validation error rate (drift stage's z-test)."""
    if s.residual_p_value < 0:
        return False, "residual drift not tested"
    worse = s.residual_drift and s.residual_current_rate > s.residual_reference_rate  # a better model is no reason
    return worse, (
        f"error rate {s.residual_current_rate:.1%} now vs {s.residual_reference_rate:.1%} on the validation rows, "
        f"p = {s.residual_p_value:.3g} ({'drift' if s.residual_drift else 'no drift'})"
    )


NAMES: tuple[str, ...] = tuple(REGISTRY)
# The default policy: retrain when it pays, and train a first model when none serves.
DEFAULT_RULES: tuple[str, ...] = ("performance", "first_model")
