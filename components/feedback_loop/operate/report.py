"""The loop at a glance: one self-contained HTML page (inline SVG, no script, no server)
from the run and deployment history in the feedback database.

- over time: users' satisfaction, the error rate they report, and drift (the share of
  drifted features when the run recorded it, else 1 for a drift verdict and 0 for none),
  with each retrain and each rollback marked;
- the retrain decisions and their reasons;
- each model version, the traffic steps it went through, and how its rollout ended;
- the rollbacks and why.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

ROLLBACK = "rolled_back"
WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 760, 200, 48, 16, 16, 28


@dataclass(frozen=True)
class History:
    """What the report is drawn from.

    Attributes:
        model_name: The served model.
        runs: `retrain_runs` rows, oldest first (started_at, run_name, retrain, reasons, stats).
        deployments: `deployments` rows, oldest first (at, version, action, traffic_percent, reason).
        since: Start of the period shown.
    """

    model_name: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    since: datetime | None = None


def load(conn: Any, model_name: str, days: int = 90, now: datetime | None = None) -> History:
    """Reads the last `days` of decisions and deployments of `model_name`."""
    since = (now or datetime.now(timezone.utc)) - timedelta(days=days)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT started_at, run_name, retrain, reasons, stats FROM retrain_runs"
            " WHERE model_name = %s AND started_at >= %s ORDER BY started_at, id",
            (model_name, since),
        )
        runs = [dict(zip([c.name for c in cur.description], row)) for row in cur.fetchall()]
        cur.execute(
            "SELECT at, version, action, traffic_percent, reason FROM deployments"
            " WHERE model_name = %s AND at >= %s ORDER BY at, id",
            (model_name, since),
        )
        deployments = [dict(zip([c.name for c in cur.description], row)) for row in cur.fetchall()]
    conn.rollback()
    return History(model_name, runs, deployments, since)


# --- figures ----------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def series(history: History) -> dict[str, list[tuple[datetime, float]]]:
    """Satisfaction, error rate and drift per run, where the run recorded them."""
    out: dict[str, list[tuple[datetime, float]]] = {"satisfaction": [], "error rate": [], "drift": []}
    for run in history.runs:
        stats, at = run.get("stats") or {}, run["started_at"]
        count, negative = _number(stats.get("feedback_count")), _number(stats.get("negative_count"))
        satisfaction = _number(stats.get("satisfaction_rate"))
        if count:  # no feedback: no rate to show
            if satisfaction is not None:
                out["satisfaction"].append((at, satisfaction))
            if negative is not None:
                out["error rate"].append((at, negative / count))
        share = _number(stats.get("drift_share", stats.get("share_drifted")))
        if share is None and isinstance(stats.get("is_drift"), bool):
            share = 1.0 if stats["is_drift"] else 0.0
        if share is not None:
            out["drift"].append((at, share))
    return out


def versions(history: History) -> list[dict[str, Any]]:
    """Each version's rollout: when it started, the traffic steps, how it ended (newest first)."""
    by_version: dict[str, dict[str, Any]] = {}
    for row in history.deployments:
        entry = by_version.setdefault(row["version"], {"version": row["version"], "first": row["at"], "steps": [], "outcome": "in progress"})
        entry["steps"].append((row["at"], row["action"], row["traffic_percent"]))
        if row["action"] in ("deployed", "promoted"):
            entry["outcome"] = "serves 100 %"
        elif row["action"] == ROLLBACK:
            entry["outcome"] = f"rolled back: {row['reason']}"
    # A version that served 100 % and was later replaced by a promotion is history.
    ordered = sorted(by_version.values(), key=lambda e: e["first"])
    serving = [e for e in ordered if e["outcome"] == "serves 100 %"]
    for entry in serving[:-1]:
        entry["outcome"] = "replaced"
    return list(reversed(ordered))


# --- SVG --------------------------------------------------------------------------------


def line_chart(title: str, points: Sequence[tuple[datetime, float]], start: datetime, end: datetime,
               marks: Sequence[tuple[datetime, str, str]] = (), color: str = "#2563eb") -> str:
    """A 0-100 % line chart over [start, end]; `marks` are vertical lines (time, colour, label)."""
    span = max((end - start).total_seconds(), 1.0)
    x = lambda t: PAD_L + (WIDTH - PAD_L - PAD_R) * min(max((t - start).total_seconds() / span, 0.0), 1.0)  # noqa: E731
    y = lambda v: PAD_T + (HEIGHT - PAD_T - PAD_B) * (1.0 - min(max(v, 0.0), 1.0))  # noqa: E731
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(title)}">']
    for level in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{PAD_L}" x2="{WIDTH - PAD_R}" y1="{y(level):.1f}" y2="{y(level):.1f}" class="grid"/>')
        parts.append(f'<text x="{PAD_L - 6}" y="{y(level) + 4:.1f}" class="axis" text-anchor="end">{level:.0%}</text>')
    for fraction in (0.0, 0.5, 1.0):
        moment = start + timedelta(seconds=span * fraction)
        anchor = {0.0: "start", 0.5: "middle", 1.0: "end"}[fraction]
        parts.append(f'<text x="{x(moment):.1f}" y="{HEIGHT - 8}" class="axis" text-anchor="{anchor}">{moment:%Y-%m-%d}</text>')
    for at, mark_color, label in marks:
        parts.append(
            f'<line x1="{x(at):.1f}" x2="{x(at):.1f}" y1="{PAD_T}" y2="{HEIGHT - PAD_B}" stroke="{mark_color}" class="mark">'
            f"<title>{html.escape(label)}</title></line>"
        )
    if points:
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        for t, v in points:
            parts.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="3" fill="{color}"><title>{t:%Y-%m-%d %H:%M}: {v:.1%}</title></circle>')
    else:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" class="axis" text-anchor="middle">no data in this period</text>')
    parts.append("</svg>")
    return "".join(parts)


# --- page -------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:980px;color:#111827;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
.sub{color:#6b7280;margin:0 0 16px}.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{border:1px solid #e5e7eb;border-radius:8px;padding:10px 14px;min-width:150px}.card b{display:block;font-size:20px}
.chart{width:100%;height:auto;max-width:760px;display:block}.grid{stroke:#e5e7eb}.axis{fill:#6b7280;font-size:11px}
.mark{stroke-width:1.5;stroke-dasharray:4 3}.legend span{margin-right:14px}.dot{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:4px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border-bottom:1px solid #f3f4f6;padding:5px 6px;text-align:left;vertical-align:top}
th{color:#374151;background:#f9fafb}.yes{color:#047857;font-weight:600}.no{color:#6b7280}.bad{color:#b91c1c;font-weight:600}
.steps span{display:inline-block;border:1px solid #d1d5db;border-radius:10px;padding:0 7px;margin:1px 2px;font-size:12px}
"""


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def render(history: History, now: datetime | None = None) -> str:
    """The HTML page."""
    now = now or datetime.now(timezone.utc)
    esc = html.escape
    # The axis starts at the first record (the period's start when there is none).
    moments = [r["started_at"] for r in history.runs] + [d["at"] for d in history.deployments]
    start = min(moments) - timedelta(hours=12) if moments else (history.since or now - timedelta(days=1))
    data = series(history)
    retrains = [(r["started_at"], "#059669", f"retrain: {'; '.join(r.get('reasons') or [])}") for r in history.runs if r["retrain"]]
    rollbacks = [d for d in history.deployments if d["action"] == ROLLBACK]
    marks = retrains + [(d["at"], "#dc2626", f"rollback of {d['version']}: {d['reason']}") for d in rollbacks]
    last = lambda name: data[name][-1][1] if data[name] else None  # noqa: E731
    cards = [
        ("runs", str(len(history.runs))),
        ("retrains", str(sum(1 for r in history.runs if r["retrain"]))),
        ("rollbacks", str(len(rollbacks))),
        ("satisfaction (last)", _pct(last("satisfaction"))),
        ("error rate (last)", _pct(last("error rate"))),
    ]
    charts = [("Satisfaction", "satisfaction", "#2563eb"), ("Error rate (negative feedback)", "error rate", "#d97706"),
              ("Drift (share of drifted features; 100 % = drift when only the verdict is known)", "drift", "#7c3aed")]
    body = [
        f"<h1>feedback-loop: {esc(history.model_name)}</h1>",
        f'<p class="sub">{start:%Y-%m-%d} to {now:%Y-%m-%d %H:%M} UTC · from the retrain_runs and deployments tables</p>',
        '<div class="cards">' + "".join(f'<div class="card">{esc(k)}<b>{esc(v)}</b></div>' for k, v in cards) + "</div>",
        "<h2>Over time</h2>",
        '<p class="legend"><span><i class="dot" style="background:#059669"></i>retrain decided</span>'
        '<span><i class="dot" style="background:#dc2626"></i>rollback</span></p>',
    ]
    for title, key, color in charts:
        body += [f"<h3>{esc(title)}</h3>", line_chart(title, data[key], start, now, marks, color)]

    body.append("<h2>Retrain decisions</h2>")
    if history.runs:
        body.append("<table><tr><th>time (UTC)</th><th>run</th><th>decision</th><th>reasons</th></tr>")
        for r in reversed(history.runs):
            decision = '<span class="yes">retrain</span>' if r["retrain"] else '<span class="no">no retrain</span>'
            reasons = "<br>".join(esc(str(x)) for x in (r.get("reasons") or []))
            body.append(f"<tr><td>{r['started_at']:%Y-%m-%d %H:%M}</td><td>{esc(r.get('run_name') or '')}</td><td>{decision}</td><td>{reasons}</td></tr>")
        body.append("</table>")
    else:
        body.append("<p>No run recorded a decision in this period.</p>")

    body.append("<h2>Model versions and their rollout</h2>")
    rows = versions(history)
    if rows:
        body.append("<table><tr><th>version</th><th>first step (UTC)</th><th>steps</th><th>outcome</th></tr>")
        for v in rows:
            steps = "".join(f'<span title="{at:%Y-%m-%d %H:%M}">{esc(action.replace("_", " "))} {pct} %</span>' for at, action, pct in v["steps"])
            outcome_class = "bad" if v["outcome"].startswith("rolled back") else ("yes" if v["outcome"] == "serves 100 %" else "")
            body.append(
                f"<tr><td><code>{esc(v['version'])}</code></td><td>{v['first']:%Y-%m-%d %H:%M}</td>"
                f'<td class="steps">{steps}</td><td class="{outcome_class}">{esc(v["outcome"])}</td></tr>'
            )
        body.append("</table>")
    else:
        body.append("<p>No deployment in this period.</p>")

    body.append("<h2>Rollbacks</h2>")
    if rollbacks:
        body.append("<table><tr><th>time (UTC)</th><th>version</th><th>reason</th></tr>")
        body += [f"<tr><td>{d['at']:%Y-%m-%d %H:%M}</td><td><code>{esc(d['version'])}</code></td><td>{esc(d['reason'])}</td></tr>" for d in reversed(rollbacks)]
        body.append("</table>")
    else:
        body.append("<p>No rollback in this period.</p>")

    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>feedback-loop: {esc(history.model_name)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
