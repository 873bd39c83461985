"""What a rollout leaves behind: a `deployments` row per change, and the Markdown promotion record."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from feedback_loop import storage
from feedback_loop.deploy.rollout import (
    DEFAULT_BAKE_HOURS,
    DEFAULT_STEPS,
    RolloutState,
    Transition,
    bake_ends_at,
    format_hours,
    format_time,
    traffic,
)
from feedback_loop.layout import EVIDENCE_DIR, EVIDENCE_FILES


def record_deployments(dsn: str | None, model_name: str, transitions: list[Transition], state: RolloutState | None = None) -> int:
    """Writes the transitions that changed something to the feedback database at `dsn`; none without one.

    The caller reads the DSN (DATABASE_URL) at the edge; "" or None means no database.

    Returns:
        How many rows were written (0 without a database).
    """
    changed = [t for t in transitions if t.changed]
    if not dsn or not changed:
        return 0
    from feedback_loop.feedback import store  # the feedback stage's client, only when a database is in use

    details = {
        "stable": state.stable.version if state and state.stable else None,
        "canary": state.canary.version if state and state.canary else None,
        "steps": state.steps if state else None,
        "bake_hours": state.bake_hours if state else None,
    }
    conn = store.connect(dsn)
    try:
        for t in changed:
            analysis = {"analysis": t.analysis.to_dict()} if t.analysis else {}
            store.record_deployment(
                conn, model_name=model_name, version=t.version, action=t.action,
                traffic_percent=t.traffic, reason=t.reason, details={"at": t.at, **details, **analysis},
            )
    finally:
        conn.close()
    return len(changed)


def write_record(
    path: Path | str,
    model_name: str,
    transitions: list[Transition],
    state: RolloutState | None,
    target: object,
    evidence_uris: Sequence[str] = (),
) -> None:
    """A Markdown record of what happened and what serves now: the promotion record.

    It holds each transition and its reason, the analysis behind it, the rollout's history,
    and the evidence published with the versions in `evidence_uris` (drift report and
    evaluation verdict, from `deploy_canary`).
    """
    lines = [
        f"# Rollout of `{model_name}`",
        "",
        f"Target: {_cell(target)}",
        "",
        "| time (UTC) | action | version | traffic | reason |",
        "|---|---|---|---:|---|",
        *(f"| {t.at} | {t.action} | {_cell(t.version)} | {t.traffic} % | {_cell(t.reason)} |" for t in transitions),
        "",
        "## Serving now",
        "",
    ]
    if state is None or state.stable is None:
        lines.append("Nothing is deployed yet.")
    else:
        share = traffic(state)
        lines.append(f"- stable: `{state.stable.version}` at {100 - share} % ({state.stable.uri})")
        if state.canary is not None:
            step = f"step {state.step_index + 1} of {len(state.steps)}"
            lines.append(f"- canary: `{state.canary.version}` at {share} % ({state.canary.uri}), {step}")
            began = state.serving_since or state.step_started_at
            lines.append(f"- step written {state.step_started_at or '-'}, serving since {began or '-'} (the bake counts from then)")
            due = bake_ends_at(state)
            lines.append(f"- next step due: {format_time(due) if due else 'now'}")
    lines += [
        "",
        "Steps: " + " → ".join(f"{s} %" for s in (state.steps if state else DEFAULT_STEPS))
        + "; bake: " + ", ".join(format_hours(h) for h in (state.bake_hours if state else DEFAULT_BAKE_HOURS)),
        "",
    ]
    analysed = [t for t in transitions if t.analysis is not None]
    if analysed:
        lines += ["## Analysis", "", "| version | check | verdict | canary | stable | detail |", "|---|---|---|---:|---:|---|"]
        for t in analysed:
            for c in t.analysis.checks:
                lines.append(
                    f"| {_cell(t.version)} | {c.name} | {c.verdict} | {_cell(_num(c.canary))} | {_cell(_num(c.stable))} | {_cell(c.detail)} |"
                )
        lines.append("")
    if state is not None and state.history:
        lines += ["## History", "", "| time (UTC) | action | version | traffic | reason |", "|---|---|---|---:|---|"]
        lines += [f"| {h['at']} | {h['action']} | {_cell(h['version'])} | {h['traffic']} % | {_cell(h['reason'])} |" for h in state.history]
        lines.append("")
    for version_uri in evidence_uris or []:
        for name in EVIDENCE_FILES:
            uri = storage.join(version_uri, EVIDENCE_DIR, name)
            if storage.exists(uri):
                lines += [f"## Evidence of `{version_uri.rsplit('/', 1)[-1]}`: {name}", "", storage.read_bytes(uri).decode().strip(), ""]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines))


def evidence_for(transitions: list[Transition], state: RolloutState | None, before: RolloutState | None) -> list[str]:
    """The version directories whose evidence belongs in the record: the canary that moved."""
    uris = []
    for candidate in (before.canary if before else None, state.canary if state else None):
        if candidate is not None and candidate.uri not in uris and any(t.changed and t.version == candidate.version for t in transitions):
            uris.append(candidate.uri)
    return uris


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|") or "-"
