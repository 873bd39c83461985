"""Decide whether to retrain: each rule says whether it is enabled, whether it fired and why.

Retrain when any enabled rule fires, or when the operator forces it; never while a canary
rollout is in progress (it finishes, or rolls back, first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from feedback_loop.errors import SettingsError

# Every rule the policy knows, in the order the decision lists them. `force` is no rule: an
# operator's explicit request cannot be switched off by configuration.
RULES = ("user_feedback", "error_rate", "latency", "keywords", "new_data", "input_drift", "model_age")


@dataclass(frozen=True)
class Policy:
    min_feedback: int = 100
    min_negative: int = 20
    min_positive_rate: float = 0.70
    max_error_rate: float = 0.05
    max_recent_latency_ratio: float = 1.5
    max_keyword_hits: int = 10
    min_new_data_share: float = 0.20
    max_model_age_days: float = 90.0
    rules: tuple[str, ...] = RULES  # the enabled ones

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> "Policy":
        """The policy from settings or parameters of the same names (extra names are ignored)."""
        picked = {f.name: values[f.name] for f in fields(cls) if f.name in values}
        if "rules" in picked:
            picked["rules"] = tuple(picked["rules"])
        return cls(**picked)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.rules) - set(RULES))
        if unknown:
            raise SettingsError(f"unknown retrain rule(s) {', '.join(unknown)}: choose among {', '.join(RULES)}")


@dataclass(frozen=True)
class Signals:
    """What the earlier stages measured (names as in the feedback stage's metrics)."""

    feedback_count: int
    negative_count: int
    satisfaction_rate: float
    is_drift: bool
    rollout_in_progress: bool = False
    force: bool = False
    error_rate: float = 0.0
    error_rate_feedback: int = 0
    latency_ratio: float = 0.0  # 0.0: unknown
    recent_latency_ms: float = 0.0
    baseline_latency_ms: float = 0.0
    keyword_hits: int = 0
    new_rows: int = 0
    new_data_share: float = 0.0
    days_since_training: float = -1.0  # -1: no model trained yet

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float], *, is_drift: bool, rollout_in_progress: bool = False, force: bool = False) -> "Signals":
        """Builds the signals from the feedback stage's metrics (missing figures take their defaults)."""
        values: dict = {"is_drift": is_drift, "rollout_in_progress": rollout_in_progress, "force": force}
        for f in fields(cls):
            if f.name in values or f.name not in metrics:
                continue
            values[f.name] = int(metrics[f.name]) if f.type == "int" else float(metrics[f.name])
        for name in ("feedback_count", "negative_count"):
            values.setdefault(name, 0)
        values.setdefault("satisfaction_rate", 0.0)
        return cls(**values)


@dataclass(frozen=True)
class Rule:
    name: str
    fired: bool
    detail: str
    enabled: bool = True


@dataclass(frozen=True)
class Decision:
    retrain: bool
    rules: list[Rule] = field(default_factory=list)
    blocked_by: str = ""

    @property
    def fired(self) -> list[Rule]:
        return [r for r in self.rules if r.fired]

    @property
    def reasons(self) -> list[str]:
        """Why it retrains (the rules that fired), or why not (blocker, else every enabled rule)."""
        if self.blocked_by:
            return [self.blocked_by]
        fired = [f"{r.name}: {r.detail}" for r in self.fired]
        return fired or [f"{r.name}: {r.detail}" for r in self.rules if r.enabled]

    def to_dict(self) -> dict:
        return {
            "retrain": self.retrain,
            "reasons": self.reasons,
            "fired": [r.name for r in self.fired],
            "blocked_by": self.blocked_by,
            "rules": [asdict(r) for r in self.rules],
        }

    def to_markdown(self) -> str:
        verdict = "**Retrain**" if self.retrain else "**No retrain**"
        lines = [f"# Retrain decision: {verdict}", ""]
        if self.blocked_by:
            lines += [f"Blocked: {self.blocked_by}", ""]
        if self.fired:
            lines += ["Rules that fired:", ""] + [f"- **{r.name}**: {r.detail}" for r in self.fired] + [""]
        else:
            lines += ["No rule fired.", ""]
        lines += ["| rule | enabled | fired | figures |", "|---|---|---|---|"]
        for r in self.rules:
            lines.append(f"| {r.name} | {'yes' if r.enabled else 'no'} | {'yes' if r.fired else 'no'} | {_cell(r.detail)} |")
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _cmp(ok: bool, yes: str, no: str) -> str:
    return yes if ok else no


def decide(signals: Signals, policy: Policy) -> Decision:
    s, p = signals, policy
    enabled = set(p.rules)
    checks: list[tuple[str, bool, str]] = []

    # The first users' rule: enough answers, enough of them negative, and satisfaction low, together.
    enough = s.feedback_count >= p.min_feedback
    if not enough:
        detail = f"not enough feedback: {s.feedback_count} < {p.min_feedback}"
    else:
        detail = (
            f"{s.feedback_count} feedbacks (≥ {p.min_feedback}), {s.negative_count} negative "
            f"({_cmp(s.negative_count >= p.min_negative, '≥', '<')} {p.min_negative}), satisfaction "
            f"{s.satisfaction_rate:.1%} ({_cmp(s.satisfaction_rate < p.min_positive_rate, '<', '≥')} {p.min_positive_rate:.0%})"
        )
    checks.append(("user_feedback", enough and s.negative_count >= p.min_negative and s.satisfaction_rate < p.min_positive_rate, detail))

    # Error rate over the recent days, on as many answers as the feedback rule asks for.
    if s.error_rate_feedback < p.min_feedback:
        detail = f"not enough recent feedback: {s.error_rate_feedback} < {p.min_feedback}"
        fired = False
    else:
        fired = s.error_rate > p.max_error_rate
        detail = f"error rate {s.error_rate:.1%} over {s.error_rate_feedback} recent feedbacks ({_cmp(fired, '>', '≤')} {p.max_error_rate:.1%})"
    checks.append(("error_rate", fired, detail))

    if s.latency_ratio <= 0:
        fired, detail = False, "latency unknown (too few timed predictions or no baseline)"
    else:
        fired = s.latency_ratio > p.max_recent_latency_ratio
        detail = (
            f"recent latency {s.recent_latency_ms:.1f} ms is {s.latency_ratio:.0%} of the baseline "
            f"{s.baseline_latency_ms:.1f} ms ({_cmp(fired, '>', '≤')} {p.max_recent_latency_ratio:.0%})"
        )
    checks.append(("latency", fired, detail))

    fired = s.keyword_hits > p.max_keyword_hits
    checks.append(("keywords", fired, f"{s.keyword_hits} negative comments name a keyword ({_cmp(fired, '>', '≤')} {p.max_keyword_hits})"))

    if s.new_rows < p.min_feedback:
        fired, detail = False, f"not enough new labelled rows: {s.new_rows} < {p.min_feedback}"
    else:
        fired = s.new_data_share >= p.min_new_data_share
        detail = f"{s.new_rows} new labelled rows, {s.new_data_share:.0%} of the training data ({_cmp(fired, '≥', '<')} {p.min_new_data_share:.0%})"
    checks.append(("new_data", fired, detail))

    checks.append(("input_drift", s.is_drift, "drift detected" if s.is_drift else "no drift detected"))

    if s.days_since_training < 0:
        fired, detail = False, "no model trained yet"
    else:
        fired = s.days_since_training > p.max_model_age_days
        detail = f"model trained {s.days_since_training:.1f} days ago ({_cmp(fired, '>', '≤')} {p.max_model_age_days:g})"
    checks.append(("model_age", fired, detail))

    rules = [Rule(name, fired and name in enabled, detail, name in enabled) for name, fired, detail in checks]
    rules.append(Rule("force", s.force, "forced by the operator" if s.force else "not forced"))
    wants = any(r.fired for r in rules)
    # A second rollout must not start while one is being analysed, even when forced.
    if wants and s.rollout_in_progress:
        return Decision(False, rules, "a canary rollout is in progress: it finishes (or rolls back) first")
    return Decision(wants, rules)


def record(dsn: str, model_name: str, run_name: str, signals: Signals, decision: Decision) -> None:
    """Appends the decision to `retrain_runs`, through the feedback store."""
    from feedback_loop.feedback import store

    conn = store.connect(dsn)
    try:
        store.record_run(conn, model_name=model_name, run_name=run_name, retrain=decision.retrain, reasons=decision.reasons, stats=asdict(signals))
    finally:
        conn.close()
