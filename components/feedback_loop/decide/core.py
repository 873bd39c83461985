"""Decide whether to retrain: each rule says whether it is enabled, whether it fired and why.

Retrain when any enabled rule fires, or when the operator forces it; never while a canary
rollout is in progress (it finishes, or rolls back, first).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from feedback_loop.decide.rules import REGISTRY, Policy
from feedback_loop.decide.signals import Signals
from feedback_loop.settings import default_of

__all__ = ["Decision", "Policy", "Rule", "Signals", "decide", "policy", "record"]


def policy(**changes: Any) -> Policy:
    """The policy of the settings' defaults, with `changes`."""
    return Policy.of({**{f.name: default_of(f.name) for f in fields(Policy)}, **changes})


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


def decide(signals: Signals, policy: Policy) -> Decision:
    """Runs every registered rule; retrains when an enabled one fires, or when forced."""
    enabled = set(policy.rules)
    rules = []
    for name, check in REGISTRY.items():
        fired, detail = check(signals, policy)
        rules.append(Rule(name, fired and name in enabled, detail, name in enabled))
    # `force` is no rule: an operator's explicit request cannot be switched off by configuration.
    rules.append(Rule("force", signals.force, "forced by the operator" if signals.force else "not forced"))
    wants = any(r.fired for r in rules)
    # A second rollout must not start while one is being analysed, even when forced.
    if wants and signals.rollout_in_progress:
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
