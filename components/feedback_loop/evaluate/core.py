"""Candidate vs production on the same rows, and the blessing that gates deployment.

Both models are scored on the same fresh holdout and on the guard set that travels with
every model version (production's `test_data.parquet`; the holdout itself the first time).
Before the no-regression gate reads the guard, `guard.check_guard` asks whether it still
describes the task: when production itself is significantly worse on the fresh holdout
than on the guard, the concept moved, the guard is retired and the holdout replaces it.
The guard the candidate was judged on is handed on (`chosen_guard`): `deploy_canary`
publishes it with the blessed version.

    scoring   one model's metrics on one set of rows, the paired bootstrap
    gates     Gates (the thresholds), Task, and each gate: figure, threshold, interval, size
    guard     the retirement test of the guard set
    latency   interleaved paired timing of both models
    verdict   the Verdict, its Markdown and metrics
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from feedback_loop.dataset import ID
from feedback_loop.errors import DataError
from feedback_loop.evaluate import gates as g
from feedback_loop.evaluate.gates import PRIMARY_METRIC, GateResult, Gates, Task
from feedback_loop.evaluate.guard import check_guard, same_rows_check
from feedback_loop.evaluate.latency import compare_models
from feedback_loop.evaluate.scoring import Score, paired_bootstrap, read_holdout, score
from feedback_loop.evaluate.verdict import GUARD_CARRIED, GUARD_HOLDOUT, GUARD_REPLACED, Verdict
from feedback_loop.train.core import RANKING, LoadedModel, load_model

__all__ = [
    "PRIMARY_METRIC", "GateResult", "Gates", "Score", "Task", "Verdict", "chosen_guard", "evaluate",
    "paired_bootstrap", "read_holdout", "score",
]


def evaluate(
    candidate_dir: Path,
    production_dir: Path | None,
    holdout_path: Path,
    gates: Gates,
    test_path: Path | None = None,
) -> Verdict:
    """Scores both models on the same holdout (and guard set) and decides the blessing."""
    holdout = read_holdout(holdout_path)
    carried = read_holdout(test_path, "guard set") if test_path is not None else None
    if carried is not None and _same_rows(carried, holdout):
        carried = None  # the first retrain: prepare_dataset passed this holdout as the guard
    candidate_model = load_model(candidate_dir)
    production_model = load_model(production_dir) if production_dir is not None else None
    task = Task.of(candidate_model.task, gates)
    if production_model is not None and production_model.task != candidate_model.task:
        raise DataError(
            f"candidate {candidate_model.family} ({candidate_model.task}) and production {production_model.family} "
            f"({production_model.task}) do not answer the same question: they cannot be compared"
        )
    catalog = _catalog(candidate_model, production_model) if task.name == RANKING else None

    def scored(model: LoadedModel, rows: pd.DataFrame) -> Score:
        return score(model, rows, gates.top_k, catalog)

    candidate = scored(candidate_model, holdout)
    candidate_guard = scored(candidate_model, carried) if carried is not None else None
    production = production_guard = None
    relative: float | None = None
    ci: list[float] | None = None
    latency: dict[str, float] | None = None
    guard_check = None
    retired: dict[str, dict[str, float]] | None = None
    results: list[GateResult] = []
    notes: list[str] = []
    source = GUARD_CARRIED if carried is not None else GUARD_HOLDOUT

    if production_model is None:
        results.append(g.floor_gate(task, candidate, gates))
    else:
        production = scored(production_model, holdout)
        ci = g.improvement_interval(task, candidate, production, gates)
        relative, gate = g.improvement_gate(task, candidate, production, gates, ci)
        results.append(gate)
        results.append(g.significance_gate(task, ci, len(candidate.units), gates))
        if carried is not None and candidate_guard is not None:
            production_guard = scored(production_model, carried)
            guard_check = check_guard(task, production_guard, production, gates)
            results.append(guard_check.as_gate())
            if guard_check.retired:
                source = GUARD_REPLACED
                retired = {"candidate": candidate_guard.metrics, "production": production_guard.metrics}
        else:
            guard_check = same_rows_check(task, production, gates)
        if source == GUARD_CARRIED:
            assert candidate_guard is not None and production_guard is not None
            results.append(g.regression_gate(task, candidate_guard, production_guard, gates, "guard set"))
        else:
            where = "guard set = this holdout" + (" (the retired guard's replacement)" if source == GUARD_REPLACED else "")
            results.append(g.regression_gate(task, candidate, production, gates, where))
        if gates.max_latency_ratio > 0:
            measured = compare_models(
                candidate_model, production_model, holdout.iloc[:1], gates.latency_rounds, gates.confidence_level
            )
            latency = measured.as_metrics()
            results.append(g.latency_gate(measured, gates))
        if production.classes != candidate.classes:
            notes.append(
                f"note: classes differ (candidate {', '.join(candidate.classes)}; "
                f"production {', '.join(production.classes)}); each was scored on its own classes"
            )

    judged_on = candidate_guard if source == GUARD_CARRIED else candidate
    judged_production = production_guard if source == GUARD_CARRIED else production
    return Verdict(
        blessed=all(r.passed for r in results if r.enforced),
        primary_metric=task.primary,
        candidate=candidate.metrics,
        production=production.metrics if production else None,
        relative_improvement=relative,
        reasons=[r.detail for r in results] + notes,
        classes=candidate.classes,
        confusion_matrix=candidate.confusion_matrix,
        holdout_rows=len(holdout),
        candidate_version=candidate_model.version,
        production_version=production_model.version if production_model else None,
        production_classes=production.classes if production else None,
        production_confusion_matrix=production.confusion_matrix if production else None,
        gates=asdict(gates),
        task=task.name,
        gate_results=results,
        test_rows=len(carried) if source == GUARD_CARRIED and carried is not None else len(holdout),
        candidate_test=judged_on.metrics if judged_on else None,
        production_test=judged_production.metrics if judged_production else None,
        improvement_ci=ci,
        latency_ms=latency,
        guard_source=source,
        guard=guard_check.to_dict() if guard_check else None,
        retired_guard=retired,
    )


def chosen_guard(verdict: Verdict, holdout_path: Path, test_path: Path | None) -> Path:
    """The guard set the candidate was judged on, to travel with it: the carried one, or this holdout."""
    if verdict.guard_source == GUARD_CARRIED and test_path is not None:
        return Path(test_path)
    return Path(holdout_path)


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    if ID in a.columns and ID in b.columns:
        return len(a) == len(b) and set(a[ID].astype(str)) == set(b[ID].astype(str))
    return a.equals(b)


def _catalog(*models: LoadedModel | None) -> list[str]:
    return sorted({item for m in models if m is not None for item in m.spec.get("items", [])})
