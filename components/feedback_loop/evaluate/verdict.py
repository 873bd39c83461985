"""The verdict: the blessing, gate by gate, as a dataclass, JSON, Markdown and flat metrics."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from feedback_loop.evaluate.gates import GateResult
from feedback_loop.train.core import CLASSIFICATION, REGRESSION

# Where the no-regression gate's rows came from; the same set is handed on as `guard`.
GUARD_CARRIED, GUARD_HOLDOUT, GUARD_REPLACED = "carried", "holdout", "replaced"


@dataclass(frozen=True)
class Verdict:
    blessed: bool
    primary_metric: str
    candidate: dict[str, float]
    production: dict[str, float] | None
    relative_improvement: float | None  # None without a production model (or one scoring 0)
    reasons: list[str]
    classes: list[str]
    confusion_matrix: list[list[int]]  # the candidate's, in `classes` order
    holdout_rows: int
    candidate_version: str | None = None
    production_version: str | None = None
    production_classes: list[str] | None = None
    production_confusion_matrix: list[list[int]] | None = None
    gates: dict[str, Any] = field(default_factory=dict)
    task: str = CLASSIFICATION
    gate_results: list[GateResult] = field(default_factory=list)
    test_rows: int | None = None  # rows of the guard set the candidate was judged on
    candidate_test: dict[str, float] | None = None
    production_test: dict[str, float] | None = None
    improvement_ci: list[float] | None = None  # relative, at `gates.confidence_level`
    latency_ms: dict[str, float] | None = None
    # carried: production's guard set; holdout: this holdout (none was carried);
    # replaced: the carried guard was retired and this holdout replaced it.
    guard_source: str = GUARD_HOLDOUT
    guard: dict[str, Any] | None = None  # the retirement test's figures (guard.GuardCheck)
    retired_guard: dict[str, dict[str, float]] | None = None  # {"candidate", "production"} metrics on it, for the record

    @property
    def guard_retired(self) -> bool:
        return self.guard_source == GUARD_REPLACED

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: undefined metrics (NaN) become None."""
        return _json_safe(asdict(self) | {"guard_retired": self.guard_retired})

    def metrics(self) -> dict[str, float]:
        """Flat metrics for KFP: every figure, per gate its figure, threshold, interval and size; never NaN."""
        scored = {
            "candidate": self.candidate,
            "production": self.production or {},
            "test.candidate": self.candidate_test or {},
            "test.production": self.production_test or {},
            "latency": self.latency_ms or {},
        }
        out = {f"{prefix}.{name}": value for prefix, values in scored.items() for name, value in values.items()}
        if self.relative_improvement is not None:
            out["relative_improvement"] = self.relative_improvement
        if self.improvement_ci is not None:
            out["relative_improvement.ci_low"], out["relative_improvement.ci_high"] = self.improvement_ci
        for gate in self.gate_results:
            out |= {f"gate.{gate.name}.{key}": value for key, value in gate.as_metrics().items()}
        if self.guard is not None:
            for key in ("on_guard", "on_holdout", "increase", "low", "margin", "guard_units", "holdout_units"):
                out[f"guard.{key}"] = self.guard[key]
        if any(gate.name == "latency" for gate in self.gate_results):
            out["gate.latency.margin_ms"] = self.gates.get("latency_margin_ms")
        out["guard.retired"] = float(self.guard_retired)
        out["guard.rows"] = float(self.test_rows or 0)
        out["holdout_rows"] = float(self.holdout_rows)
        out["blessed"] = float(self.blessed)
        return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}

    def to_markdown(self) -> str:
        title = "Blessed" if self.blessed else "Not blessed"
        against = (
            f"production {self.production_version or '(unknown version)'}" if self.production else "no production model"
        )
        guard = {
            GUARD_CARRIED: f"{self.test_rows} rows of the guard set carried from production",
            GUARD_HOLDOUT: "the holdout as guard set (none carried yet)",
            GUARD_REPLACED: "the holdout as guard set (the carried guard was retired: the concept moved)",
        }[self.guard_source]
        lines = [
            f"## {title}: candidate {self.candidate_version or '(unknown version)'} vs {against}",
            "",
            f"Scored on the same {self.holdout_rows} holdout rows and {guard}; task: {self.task}; "
            f"primary metric: {self.primary_metric}.",
            "",
            "| gate | result | figure | threshold | interval | n | why |",
            "|---|---|---:|---:|---|---:|---|",
        ]
        for gate in self.gate_results:
            result = ("pass" if gate.passed else "FAIL") if gate.enforced else "reported"
            figure, threshold, interval = _gate_figures(gate, self.task, self.gates)
            n = "–" if gate.n is None else str(gate.n)
            lines.append(f"| {gate.name} | {result} | {figure} | {threshold} | {interval} | {n} | {gate.detail} |")
        if notes := [r for r in self.reasons if r not in {g.detail for g in self.gate_results}]:
            lines += ["", *(f"- {note}" for note in notes)]
        lines += ["", _metrics_markdown("Holdout", self.candidate, self.production)]
        if self.candidate_test is not None and self.guard_source == GUARD_CARRIED:
            lines += ["", _metrics_markdown("Guard set", self.candidate_test, self.production_test)]
        if self.retired_guard is not None:
            rows = self.retired_guard
            lines += ["", _metrics_markdown("Retired guard set (not gating)", rows["candidate"], rows.get("production"))]
        if self.classes:
            lines += ["", _matrix_markdown("Candidate confusion matrix", self.classes, self.confusion_matrix)]
        if self.production_confusion_matrix is not None and self.production_classes:
            lines += [
                "",
                _matrix_markdown(
                    "Production confusion matrix", self.production_classes, self.production_confusion_matrix
                ),
            ]
        return "\n".join(lines) + "\n"


def _gate_figures(gate: GateResult, task: str, gates: dict[str, Any]) -> tuple[str, str, str]:
    """(figure, threshold, interval) of one gate, each in its gate's unit."""

    def percent(v: float) -> str:
        return f"{v * 100:+.1f} %"

    def points(v: float) -> str:
        return f"{v * 100:+.2f} pt" if task != REGRESSION or gate.name == "no_regression" else f"{v:+.4g}"

    def ratio(v: float) -> str:
        return f"{v:.2f}x"

    def plain(v: float) -> str:
        return f"{v:.3f}"

    shape, prefix = {
        "improvement": (percent, "≥ "),
        "significance": (percent, "> "),
        "no_regression": (points, "≤ "),
        "latency": (ratio, "≤ "),
        "guard": (points, "retire > "),
        "floor": (plain, "≥ "),
    }.get(gate.name, (plain, ""))
    figure = "–" if gate.figure is None or math.isnan(gate.figure) else shape(gate.figure)
    threshold = "–" if gate.threshold is None else prefix + shape(gate.threshold).lstrip("+")
    if gate.name == "latency":
        threshold += f" or ≤ +{gates.get('latency_margin_ms', 0):g} ms"
    interval = "–" if gate.interval is None else f"[{shape(gate.interval[0])}, {shape(gate.interval[1])}]"
    return figure, threshold, interval


def _fmt(value: float | None) -> str:
    return "–" if value is None else ("n/a" if math.isnan(value) else f"{value:.4f}")


def _metrics_markdown(title: str, candidate: dict[str, float], production: dict[str, float] | None) -> str:
    lines = [f"**{title}**", "", "| metric | candidate | production |", "|---|---:|---:|"]
    for name, value in candidate.items():
        other = production.get(name) if production else None
        lines.append(f"| {name} | {_fmt(value)} | {_fmt(other)} |")
    return "\n".join(lines)


def _matrix_markdown(title: str, classes: list[str], matrix: list[list[int]]) -> str:
    lines = [f"**{title}** (rows: true class, columns: predicted)", "", "| | " + " | ".join(classes) + " |"]
    lines.append("|---|" + "---:|" * len(classes))
    lines += [
        f"| **{name}** | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(classes, matrix, strict=True)
    ]
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value
