"""Decide whether to retrain: each rule says whether it fired and with which figures."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Policy:
    min_feedback: int = 100
    min_negative: int = 20
    min_positive_rate: float = 0.70
    retrain_on_drift: bool = True


@dataclass(frozen=True)
class Signals:
    """What the earlier stages measured."""

    feedback_count: int
    negative_count: int
    satisfaction_rate: float
    is_drift: bool
    rollout_in_progress: bool = False
    force: bool = False


@dataclass(frozen=True)
class Rule:
    name: str
    fired: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    retrain: bool
    rules: list[Rule] = field(default_factory=list)
    blocked_by: str = ""

    @property
    def reasons(self) -> list[str]:
        """Why it retrains (the rules that fired), or why not (blocker, else every rule)."""
        if self.blocked_by:
            return [self.blocked_by]
        fired = [f"{r.name}: {r.detail}" for r in self.rules if r.fired]
        return fired or [f"{r.name}: {r.detail}" for r in self.rules]

    def to_dict(self) -> dict:
        return {"retrain": self.retrain, "reasons": self.reasons, "blocked_by": self.blocked_by, "rules": [asdict(r) for r in self.rules]}

    def to_markdown(self) -> str:
        verdict = "**Retrain**" if self.retrain else "**No retrain**"
        lines = [f"# Retrain decision: {verdict}", ""]
        if self.blocked_by:
            lines += [f"Blocked: {self.blocked_by}", ""]
        lines += ["| rule | fired | figures |", "|---|---|---|"]
        lines += [f"| {r.name} | {'yes' if r.fired else 'no'} | {r.detail} |" for r in self.rules]
        return "\n".join(lines) + "\n"


def decide(signals: Signals, policy: Policy) -> Decision:
    s, p = signals, policy
    enough = s.feedback_count >= p.min_feedback and s.negative_count >= p.min_negative
    unhappy = enough and s.satisfaction_rate < p.min_positive_rate
    if s.feedback_count < p.min_feedback:
        feedback_detail = f"not enough feedback: {s.feedback_count} < {p.min_feedback}"
    else:
        feedback_detail = (
            f"{s.feedback_count} feedbacks (≥ {p.min_feedback}), {s.negative_count} negative "
            f"({'≥' if s.negative_count >= p.min_negative else '<'} {p.min_negative}), satisfaction "
            f"{s.satisfaction_rate:.1%} ({'<' if s.satisfaction_rate < p.min_positive_rate else '≥'} {p.min_positive_rate:.0%})"
        )
    rules = [
        Rule("user_feedback", unhappy, feedback_detail),
        Rule("input_drift", p.retrain_on_drift and s.is_drift, "drift detected" if s.is_drift else "no drift detected"),
        Rule("force", s.force, "forced by the operator" if s.force else "not forced"),
    ]
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
