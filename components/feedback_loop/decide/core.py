"""Decide whether to retrain: each rule says whether it is enabled, whether it fired and why.

Retrain when any enabled rule fires, or when the operator forces it; never while a canary
rollout is in progress (it finishes, or rolls back, first).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from feedback_loop.decide import evidence as ev
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
    evidence: dict[str, Any] = field(default_factory=dict)  # the payoff's figures (evidence.summary)

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

    @property
    def holdout_from(self) -> str:
        """Where the answers the performance rule found worse begin (ISO; "" when it did not fire):
        the candidate is judged on them, not on days from before a change."""
        if not any(r.name == "performance" for r in self.fired):
            return ""
        test = self.evidence.get("test") or {}
        if test.get("significant"):
            return str(test.get("window_start") or "")
        return str((self.evidence.get("remembered_attempt") or {}).get("evidence_through") or "")  # worse than at the attempt

    def to_dict(self) -> dict:
        return {
            "retrain": self.retrain,
            "holdout_from": self.holdout_from,
            "reasons": self.reasons,
            "fired": [r.name for r in self.fired],
            "blocked_by": self.blocked_by,
            "rules": [asdict(r) for r in self.rules],
            "evidence": self.evidence,
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
        lines += _evidence_lines(self.evidence)
        lines += ["| rule | enabled | fired | figures |", "|---|---|---|---|"]
        for r in self.rules:
            lines.append(f"| {r.name} | {'yes' if r.enabled else 'no'} | {'yes' if r.fired else 'no'} | {_cell(r.detail)} |")
        return "\n".join(lines) + "\n"


def _evidence_lines(e: dict[str, Any]) -> list[str]:
    """The payoff: production's baseline error vs its fresh error, interval, sizes and the test."""
    if not e:
        return []
    lines = ["## Evidence for the payoff", ""]
    if a := e.get("remembered_attempt"):
        seen = f" on {a['error']:.4g} error over {a['rows']} answers" if a.get("error") is not None else ""
        lines += [f"Remembered attempt: run {a['run_name'] or '?'} at {a['started_at']} trained and blessed nothing{seen}; "
                  f"only answers after {a['evidence_through']} count as new evidence.", ""]
    b = e.get("baseline")
    if not b:
        return lines + [f"No baseline: {e.get('reason') or 'unknown'}.", ""]
    def fmt(value: float) -> str:
        return ev.fmt(b["metric"], value)

    lines += ["| | " + ev.label(b["metric"]) + " | interval | rows |", "|---|---|---|---|",
              f"| production, baseline ({b['source']}) | {fmt(b['value'])} | | {b['rows']} |"]
    for key, name in (("fresh", "fresh feedback (window)"), ("since_attempt", "fresh feedback since the attempt")):
        if f := e.get(key):
            lo, hi = f["interval"]
            lines.append(f"| {name} | {fmt(f['value'])} | [{fmt(lo)}, {fmt(hi)}] ({f['level']:.0%}) | {f['rows']} |")
    lines.append("")
    if t := e.get("test"):
        lines += [f"One-sided {t['name']} of H0 fresh ≤ {fmt(t['threshold'])} (baseline + {t['margin']:.0%}) on {t['rows']} rows: "
                  f"statistic {t['statistic']:.3g}, p = {t['p_value']:.3g} ({'<' if t['significant'] else '≥'} {t['alpha']:g}).", ""]
    return lines


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
    evidence = ev.summary(signals.evidence, policy.performance_margin, policy.performance_alpha, policy.min_feedback) if signals.evidence else {}
    # A second rollout must not start while one is being analysed, even when forced.
    if wants and signals.rollout_in_progress:
        return Decision(False, rules, "a canary rollout is in progress: it finishes (or rolls back) first", evidence)
    return Decision(wants, rules, evidence=evidence)


def record(dsn: str, model_name: str, run_name: str, signals: Signals, decision: Decision) -> None:
    """Appends the decision to `retrain_runs`, through the feedback store."""
    from feedback_loop.feedback import store

    conn = store.connect(dsn)
    try:
        # The payoff's figures too: a later run sizes the new evidence it asks for on this test's.
        stats = asdict(signals) | {"payoff": decision.to_dict().get("evidence") or {}}
        store.record_run(conn, model_name=model_name, run_name=run_name, retrain=decision.retrain, reasons=decision.reasons, stats=stats)
    finally:
        conn.close()
