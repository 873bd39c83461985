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
        return False, f"not enough new labelled rows: {s.new_rows} < {p.min_feedback}"
    fired = s.new_data_share >= p.min_new_data_share
    return fired, f"{s.new_rows} new labelled rows, {s.new_data_share:.0%} of the training data ({_cmp(fired, '≥', '<')} {p.min_new_data_share:.0%})"


@rule("input_drift")
def input_drift(s: Signals, p: Policy) -> tuple[bool, str]:
    return s.is_drift, "drift detected" if s.is_drift else "no drift detected"


@rule("model_age")
def model_age(s: Signals, p: Policy) -> tuple[bool, str]:
    if s.days_since_training < 0:
        return False, "no model trained yet"
    fired = s.days_since_training > p.max_model_age_days
    return fired, f"model trained {s.days_since_training:.1f} days ago ({_cmp(fired, '>', '≤')} {p.max_model_age_days:g})"


NAMES: tuple[str, ...] = tuple(REGISTRY)
