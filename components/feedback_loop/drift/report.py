"""The drift result for people (one self-contained HTML page, Markdown for the KFP UI)
and for machines (JSON).

The HTML page has no script and no external style or image: KFP shows it in a sandboxed
frame, and a copy mailed around still renders. Charts are inline SVG.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from feedback_loop.drift.result import DriftResult, FeatureDrift, Histogram, PredictionDrift, Quality

e = html.escape


def verdict(result: DriftResult) -> str:
    """One line: drift or not, in how many features, at which threshold."""
    if not result.tested:
        return f"Drift not tested: {result.reason}"
    n, k = len(result.features), len(result.drifted)
    bar = f"{result.correction} correction, per-feature p < {_p(result.threshold)} and effect > {result.effect_threshold:g}"
    if result.share_threshold > 0:
        rule = f"share above {_pct(result.share_threshold)}"
        if result.is_drift:
            return f"Drift detected in {k} of {n} features ({_pct(result.share_drifted)}, {rule}; {bar})"
        if k:
            return f"No dataset drift: {k} of {n} features drifted ({_pct(result.share_drifted)}, not {rule}; {bar})"
        return f"No drift in {n} features ({bar})"
    if result.is_drift:
        return f"Drift detected in {k} of {n} features ({bar})"
    return f"No drift in {n} features ({bar})"


def prediction_line(p: PredictionDrift) -> str:
    """One line on the model's outputs: prediction and residual drift."""
    if not p.tested:
        return f"Prediction drift not tested: {p.reason}"
    moved = [t.name for t in p.tests if t.drifted] + (["error rate"] if p.residual and p.residual.drifted else [])
    head = f"Prediction drift in {', '.join(moved)}" if moved else "No prediction drift"
    parts = [f"{t.name} p={_p(t.p_value)} effect={t.effect:.3g}" for t in p.tests]
    if p.residual:
        r = p.residual
        parts.append(f"error rate {_pct(r.reference_rate)} → {_pct(r.current_rate)} p={_p(r.p_value)}")
    return f"{head} ({'; '.join(parts)}; per-test p < {_p(p.threshold)})"


def sample_line(result: DriftResult) -> str:
    """Rows read and rows tested, with the cap when it applied."""
    line = f"{result.n_reference:,} reference rows · {result.n_current:,} current rows"
    if result.capped:
        line += (
            f" · tested on a seeded uniform sample of at most {result.max_rows:,} rows per side "
            f"({result.sampled_reference:,} reference, {result.sampled_current:,} current; seed {result.seed}); "
            "data quality counts every row"
        )
    return line


def write_json(result: DriftResult, path: Path | str) -> Path:
    """The whole result for machines: strict JSON (no NaN or Infinity), keys sorted."""
    return _write(path, json.dumps(_strict(result.to_dict()), indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def write_markdown(result: DriftResult, path: Path | str, top: int = 10) -> Path:
    """The verdict, the most significant drifted features, predictions and quality, for the KFP UI."""
    lines = [f"**{verdict(result)}**", ""]
    if result.has_details:
        lines += [f"{sample_line(result)}; engine {result.engine}, significance {result.p_value:g}.", ""]
    drifted = sorted(result.drifted, key=lambda f: f.p_value)
    if drifted:
        lines += ["| feature | kind | test | statistic | p-value | effect size |", "|---|---|---|---|---|---|"]
        for f in drifted[:top]:
            name = f.name.replace("|", "\\|")
            lines.append(f"| {name} | {f.kind} | {f.test} | {f.statistic:.4g} | {_p(f.p_value)} | {f.effect_text} |")
        if len(drifted) > top:
            lines += ["", f"…and {len(drifted) - top} more drifted features in the HTML report."]
        lines.append("")
    for f in (f for f in result.ranked() if f.n_unseen):
        unseen = _count(f.n_unseen, "category", "categories")
        lines.append(f"- `{f.name}`: {unseen} unseen in the reference ({', '.join(f.unseen[:5])})")
    if result.has_details:
        lines += ["", f"**{prediction_line(result.predictions)}**"]
        if result.predictions.tested and result.predictions.residual_reason:
            lines.append(f"Residual drift not tested: {result.predictions.residual_reason}.")
    issues = result.quality.issues()
    if issues:
        lines += ["", f"**Data quality: {_count(len(issues), 'issue', 'issues')}** (reported, not fatal)"]
        lines += [f"- {issue}" for issue in issues[:top]]
        if len(issues) > top:
            lines.append(f"- …and {len(issues) - top} more in the HTML report")
    if result.skipped:
        lines.append("")
        lines.append("Not tested: " + "; ".join(f"`{k}` ({v})" for k, v in result.skipped.items()))
    return _write(path, "\n".join(lines).rstrip() + "\n")


def write_html(result: DriftResult, path: Path | str) -> Path:
    """One self-contained page: verdict, overview, feature table, data quality,
    prediction drift, and per-feature charts (inline SVG), drifted features first."""
    state = "skip" if not result.tested else ("drift" if result.is_drift else "ok")
    body = [f'<header class="verdict {state}"><h1>{e(verdict(result))}</h1>']
    if result.has_details:
        rule = f"engine {result.engine} · significance {result.p_value:g} · {result.correction} correction"
        if result.tested:
            rule += f" → per-feature threshold {_p(result.threshold)} and effect size > {result.effect_threshold:g}"
        if result.share_threshold:
            rule += f" · dataset drift when more than {_pct(result.share_threshold)} of features drift"
        body.append(f'<p class="sub">{e(sample_line(result))}<br>{e(rule)}</p>')
    body.append("</header>")
    if result.has_details:
        body.append(_overview(result))

    ranked = result.ranked()
    if ranked:
        rows = []
        for i, f in enumerate(ranked):
            badge = '<span class="badge drift">drifted</span>' if f.drifted else '<span class="badge ok">no</span>'
            rows.append(
                f'<tr{" class=drift" if f.drifted else ""}><td><a href="#f{i}">{e(f.name)}</a></td><td>{f.kind}</td>'
                f'<td>{e(f.test)}</td><td class="num">{f.statistic:.4g}</td><td class="num">{e(_p(f.p_value))}</td><td class="num">{e(f.effect_text)}</td>'
                f"<td>{_change(f)}</td><td>{badge}</td></tr>"
            )
        body.append(
            "<section><h2>Input features</h2><table><thead><tr><th>Feature</th><th>Kind</th><th>Test</th>"
            '<th class="num">Statistic</th><th class="num">p-value</th><th class="num">Effect size</th><th>Reference → current</th><th>Drifted</th>'
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
        )
    if result.skipped:
        items = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in result.skipped.items())
        body.append(f'<section><h2>Not tested</h2><ul class="plain">{items}</ul></section>')
    if result.has_details:
        body.append(_predictions_section(result.predictions))
        body.append(_quality_section(result.quality))
    if ranked:
        cards = [_card(i, f) for i, f in enumerate(ranked)]
        body.append(
            "<section><h2>Distributions</h2>"
            f'<p class="legend">{_LEGEND} · bars are shares of each side\'s rows</p>'
            f'<div class="grid">{"".join(cards)}</div></section>'
        )

    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(verdict(result))}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )
    return _write(path, page)


_SWATCH = '<i style="background:var(--{})"></i>'
_LEGEND = f"{_SWATCH.format('ref')}reference (training data){_SWATCH.format('cur')}current"
_LEGEND_PREDICTIONS = f"{_SWATCH.format('ref')}reference (production model on its validation rows){_SWATCH.format('cur')}current"


def _overview(result: DriftResult) -> str:
    """Four tiles: input drift, prediction drift, residual drift, data quality."""
    p = result.predictions
    tiles = []
    if result.tested:
        k, n = len(result.drifted), len(result.features)
        tiles.append(_tile("Input drift", f"{k} of {n}", "features drifted", "drift" if result.is_drift else "ok"))
    else:
        tiles.append(_tile("Input drift", "not tested", result.reason, "skip"))
    if p.tested:
        moved = [t.name for t in p.tests if t.drifted]
        tiles.append(
            _tile("Prediction drift", ", ".join(moved) if moved else "none",
                  " · ".join(f"{t.name} p={_p(t.p_value)}" for t in p.tests), "drift" if moved else "ok")
        )
    else:
        tiles.append(_tile("Prediction drift", "not tested", p.reason, "skip"))
    if p.residual:
        r = p.residual
        tiles.append(
            _tile("Error rate", f"{_pct(r.reference_rate)} → {_pct(r.current_rate)}",
                  f"{r.current_rows:,} labelled rows · p={_p(r.p_value)}", "drift" if r.drifted else "ok")
        )
    else:
        tiles.append(_tile("Error rate", "not tested", p.residual_reason or p.reason, "skip"))
    issues = result.quality.issues()
    tiles.append(
        _tile("Data quality", _count(len(issues), "issue", "issues") if issues else "clean",
              "reported, not fatal" if issues else f"{len(result.quality.columns)} columns checked",
              "warn" if issues else "ok")
    )
    return f'<div class="tiles">{"".join(tiles)}</div>'


def _tile(title: str, value: str, note: str, state: str) -> str:
    return (
        f'<div class="tile {state}"><div class="t">{e(title)}</div><div class="v">{e(value)}</div>'
        f'<div class="n">{e(note)}</div></div>'
    )


def _change(f: FeatureDrift) -> str:
    if f.kind == "numeric":
        return (
            f"mean {_num(f.reference['mean'])} → {_num(f.current['mean'])}"
            f'<span class="muted"> · std {_num(f.reference["std"])} → {_num(f.current["std"])}</span>'
        )
    # The category whose share moved most says more than the statistic.
    names = set(f.reference) | set(f.current)
    top = max(names, key=lambda c: abs(f.current.get(c, 0.0) - f.reference.get(c, 0.0)), default=None)
    if top is None:
        return ""
    text = f"{e(_short(top))} {_pct(f.reference.get(top, 0.0))} → {_pct(f.current.get(top, 0.0))}"
    if f.n_unseen:
        text += f' <span class="new">· {_count(f.n_unseen, "new category", "new categories")}</span>'
    return text


def _predictions_section(p: PredictionDrift) -> str:
    if not p.tested:
        return f'<section><h2>Prediction drift</h2><p class="note">Not tested: {e(p.reason)}.</p></section>'
    rows = []
    for t in p.tests:
        badge = '<span class="badge drift">drifted</span>' if t.drifted else '<span class="badge ok">no</span>'
        rows.append(
            f"<tr><td>{e(t.name)}</td><td>{e(t.test)}</td><td class=num>{t.statistic:.4g}</td>"
            f"<td class=num>{e(_p(t.p_value))}</td><td class=num>{e(t.effect_text)}</td><td>{_change(t)}</td><td>{badge}</td></tr>"
        )
    if p.residual:
        r = p.residual
        badge = '<span class="badge drift">drifted</span>' if r.drifted else '<span class="badge ok">no</span>'
        rows.append(
            f"<tr><td>error rate (label ≠ predicted_label)</td><td>two-proportion z</td><td class=num>{r.statistic:.4g}</td>"
            f"<td class=num>{e(_p(r.p_value))}</td><td class=num>–</td><td>{_pct(r.reference_rate)} of {r.reference_rows:,} → "
            f"{_pct(r.current_rate)} of {r.current_rows:,}</td><td>{badge}</td></tr>"
        )
    notes = [
        f"The production model's outputs now ({p.n_current:,} rows"
        + (f" served by {e(p.model_version)}" if p.model_version else "")
        + f") against its predictions on its own validation rows ({p.n_reference:,}); "
        f"per-test threshold {e(_p(p.threshold))}."
    ]
    if p.residual:
        notes.append("Current labels come from user feedback, so the labelled rows are the ones users chose to rate.")
    elif p.residual_reason:
        notes.append(f"Error rate not tested: {e(p.residual_reason)}.")
    charts = "".join(_card(f"p{i}", t) for i, t in enumerate(p.tests))
    return (
        f'<section><h2>Prediction drift</h2><p class="note">{" ".join(notes)}</p>'
        "<table><thead><tr><th>Output</th><th>Test</th><th class=num>Statistic</th><th class=num>p-value</th><th class=num>Effect size</th>"
        f"<th>Reference → current</th><th>Drifted</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'<p class="legend" style="margin-top:12px">{_LEGEND_PREDICTIONS}</p><div class="grid">{charts}</div></section>'
    )


def _quality_section(q: Quality) -> str:
    issues = q.issues()
    head = (
        f'<p class="note warn">{_count(len(issues), "issue", "issues")} (reported, not fatal; the tests use the '
        "finite, non-missing values):</p>" + '<ul class="plain">' + "".join(f"<li>{e(i)}</li>" for i in issues) + "</ul>"
        if issues
        else '<p class="note">No issue: same columns and types, no rise in missing values, no NaN or infinity, '
        "values within the reference range.</p>"
    )
    rows = []
    for c in sorted(q.columns, key=lambda c: (not c.issues(), c.name)):
        bad = bool(c.issues())
        rng = f"{_num(c.reference_min)} … {_num(c.reference_max)}" if c.reference_min is not None else "—"
        cur_rng = f"{_num(c.current_min)} … {_num(c.current_max)}" if c.current_min is not None else "—"
        out = f"{_pct(c.out_of_range)}" if c.reference_min is not None else "—"
        type_ = e(c.reference_type) if c.reference_type == c.current_type else f"{e(c.reference_type)} → {e(c.current_type)}"
        rows.append(
            f'<tr{" class=warn" if bad else ""}><td>{e(c.name)}</td><td>{type_}</td>'
            f"<td class=num>{_pct(c.reference_missing)} → {_pct(c.current_missing)}</td>"
            f"<td class=num>{c.current_nan:,}</td><td class=num>{c.current_inf:,}</td>"
            f"<td class=num>{rng}</td><td class=num>{cur_rng}</td><td class=num>{out}</td></tr>"
        )
    table = (
        "<table><thead><tr><th>Column</th><th>Type</th><th class=num>Missing</th><th class=num>NaN now</th>"
        "<th class=num>Inf now</th><th class=num>Reference range</th><th class=num>Current range</th>"
        f"<th class=num>Outside</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else ""
    )
    return f"<section><h2>Data quality</h2>{head}{table}</section>"


def _card(index: int | str, f: FeatureDrift) -> str:
    if f.kind == "numeric":
        line = (
            f"reference mean {_num(f.reference['mean'])}, std {_num(f.reference['std'])} (n={f.n_reference:,}) → "
            f"current mean {_num(f.current['mean'])}, std {_num(f.current['std'])} (n={f.n_current:,})"
        )
        chart = _svg_histogram(f.histogram)
    else:
        line = f"reference n={f.n_reference:,} → current n={f.n_current:,}"
        if f.n_unseen:
            unseen = _count(f.n_unseen, "category", "categories")
            line += f' · <span class="new">{unseen} unseen in the reference: {e(", ".join(f.unseen[:5]))}</span>'
        chart = _svg_bars(f.histogram, set(f.unseen))
    badge = '<span class="badge drift">drifted</span>' if f.drifted else '<span class="badge ok">no drift</span>'
    return (
        f'<article class="card{" drift" if f.drifted else ""}" id="f{index}">'
        f"<h3><span>{e(f.name)}</span>{badge}</h3>"
        f'<p class="stats">{e(f.test)} statistic {f.statistic:.4g} · p-value {e(_p(f.p_value))} · effect size {e(f.effect_text)}<br>{line}</p>'
        f"{chart}</article>"
    )


def _short(label: str, width: int = 22) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def _svg_histogram(h: Histogram) -> str:
    width, height, left, right, top, bottom = 520, 190, 44, 18, 10, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    ref, cur = _fractions(h.reference), _fractions(h.current)
    peak = max(ref + cur) or 1.0
    step = plot_w / len(ref)
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="histogram">']
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="gridline"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_pct(peak * frac)}</text>')
    bar = max(step / 2 - 1, 0.5)
    for i, (r, c) in enumerate(zip(ref, cur)):
        x = left + i * step
        tip = html.escape(f"{h.labels[i]}: reference {_pct(r)}, current {_pct(c)}")
        for dx, share, side in ((0.5, r, "ref"), (step / 2, c, "cur")):
            bar_h = plot_h * share / peak
            parts.append(
                f'<rect x="{x + dx:.1f}" y="{top + plot_h - bar_h:.1f}" width="{bar:.1f}" height="{bar_h:.1f}" '
                f'class="{side}"><title>{tip}</title></rect>'
            )
    for i in range(0, len(h.edges), max(len(h.edges) // 4, 1)):
        x = left + i * step
        parts.append(f'<text x="{x:.1f}" y="{height - 10}" text-anchor="middle">{h.edges[i]:.3g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_bars(h: Histogram, unseen: set[str]) -> str:
    label_w, value_w, row_h, width = 150, 56, 26, 520
    plot_w = width - label_w - value_w
    ref, cur = _fractions(h.reference), _fractions(h.current)
    peak = max(ref + cur) or 1.0
    height = row_h * len(ref) + 4
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="category shares">']
    for i, (label, r, c) in enumerate(zip(h.labels, ref, cur)):
        y = 2 + i * row_h
        new = label in unseen
        css = ' class="new"' if new else ""
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end"{css}>'
            f"<title>{html.escape(label)}</title>{html.escape(_short(label))}{' (new)' if new else ''}</text>"
        )
        for dy, share, side in ((3, r, "ref"), (13, c, "cur")):
            bar_w = plot_w * share / peak
            parts.append(f'<rect x="{label_w}" y="{y + dy}" width="{bar_w:.1f}" height="9" class="{side}"/>')
            parts.append(f'<text x="{label_w + bar_w + 4:.1f}" y="{y + dy + 8}" class="small">{_pct(share)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _fractions(counts: list[int]) -> list[float]:
    total = sum(counts) or 1
    return [c / total for c in counts]


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _pct(share: float) -> str:
    return f"{share:.0%}" if share >= 0.1 or share == 0 else f"{share:.1%}"


def _num(value: float) -> str:
    return f"{value:.4g}"


def _p(p: float) -> str:
    if p == 0:
        return "≈ 0"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def _write(path: Path | str, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


_CSS = """
:root{--ref:#4c78a8;--cur:#f58518;--bad:#c0392b;--ok:#2e7d32;--warn:#d97706;--muted:#667085;--line:#e4e7ec}
*{box-sizing:border-box}
body{margin:0;background:#f6f7f9;color:#1d2939;
font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 24px 48px}
.verdict{background:#fff;border-left:6px solid var(--muted);border-radius:8px;padding:14px 18px;
box-shadow:0 1px 2px rgba(16,24,40,.06)}
.verdict.drift{border-left-color:var(--bad)}.verdict.ok{border-left-color:var(--ok)}
h1{font-size:21px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 10px}
.sub{color:var(--muted);margin:0}
table{width:100%;border-collapse:collapse;background:#fff;border-radius:8px;overflow:hidden;
box-shadow:0 1px 2px rgba(16,24,40,.06)}
th,td{padding:7px 12px;text-align:left;border-bottom:1px solid var(--line);word-break:break-word}
th{background:#f2f4f7;font-size:12px;font-weight:600;text-transform:uppercase;letter-spacing:.03em;color:#475467}
.num{text-align:right;font-variant-numeric:tabular-nums}
a{color:inherit;text-decoration:none;border-bottom:1px dotted var(--muted)}
.badge{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12px;font-weight:600;white-space:nowrap}
.badge.drift{background:#fdecea;color:var(--bad)}.badge.ok{background:#e8f5e9;color:var(--ok)}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:16px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 16px}
.card.drift{border-top:3px solid var(--bad)}
.card h3{margin:0;font-size:15px;display:flex;justify-content:space-between;gap:8px;word-break:break-word}
.stats{color:var(--muted);font-size:12.5px;margin:2px 0 8px}
.legend{font-size:12px;color:#475467;margin:0 0 4px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 5px 0 12px;vertical-align:-1px}
.legend i:first-child{margin-left:0}
.new{color:var(--bad);font-weight:600}
.plain{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 28px;margin:0}
.note{color:#475467;margin:0 0 8px}.note.warn{color:#8a4b00;font-weight:600}
.muted{color:var(--muted)}
tr.drift td:first-child{box-shadow:inset 3px 0 0 var(--bad)}tr.warn td:first-child{box-shadow:inset 3px 0 0 var(--warn)}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));gap:12px;margin-top:16px}
.tile{background:#fff;border:1px solid var(--line);border-top:4px solid var(--muted);border-radius:8px;padding:10px 14px}
.tile.drift{border-top-color:var(--bad)}.tile.ok{border-top-color:var(--ok)}.tile.warn{border-top-color:var(--warn)}
.tile .t{font-size:12px;font-weight:600;text-transform:uppercase;letter-spacing:.03em;color:#475467}
.tile .v{font-size:20px;font-weight:650;margin:2px 0}.tile.drift .v{color:var(--bad)}
.tile .n{font-size:12px;color:var(--muted);word-break:break-word}
svg{display:block;width:100%;height:auto}
svg text{font-size:11px;fill:#475467}svg text.small{font-size:10px}svg text.new{fill:var(--bad);font-weight:600}
svg .gridline{stroke:var(--line);stroke-width:1}
svg .ref{fill:var(--ref)}svg .cur{fill:var(--cur)}
"""
