"""Candidate vs production on the same rows, and the blessing that gates deployment.

Both models are scored on the same fresh holdout and, when there is one, on the original
test set that travels with every model version. The metrics follow the family's task:

    classification  accuracy (primary), precision, recall, F1, ROC AUC, log loss, confusion matrix
    regression      MSE (primary, lower is better), MAE, R²
    ranking         precision@k (primary) and recall@k, ranking the whole item catalogue per user

Gates, each configurable, each leaving one line in `Verdict.reasons`:

    improvement   the primary metric improves on production by ≥ `min_improvement` (relative)
    no_regression on the original test set the guard metric (accuracy, R², precision@k) loses
                  at most `max_test_regression` points against production
    latency       single-request p95 latency ≤ `max_latency_ratio` x production's (0: off)
    significance  the paired bootstrap confidence interval of the improvement; it gates only
                  with `require_significant` (its lower bound must be above 0), else it is reported
    floor         with no production model, the primary/guard metric reaches an absolute floor
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn import metrics as skm

from feedback_loop.dataset import LABEL
from feedback_loop.errors import DataError
from feedback_loop.train.core import CLASSIFICATION, RANKING, REGRESSION, LoadedModel, load_model, predict
from feedback_loop.train.families import ITEM, USER, call_inputs, encode_labels, numeric_labels

PRIMARY_METRIC = "accuracy"  # of classifiers; see `Task` for the others
_BOOTSTRAP_CHUNK = 100


@dataclass(frozen=True)
class Gates:
    min_improvement: float = 0.02  # relative gain of the primary metric over production
    max_test_regression: float = 0.01  # points of the guard metric lost on the original test set
    max_latency_ratio: float = 1.5  # candidate p95 / production p95; 0 turns the gate off
    require_significant: bool = False  # the bootstrap CI's lower bound must be above 0
    confidence_level: float = 0.95
    bootstrap_samples: int = 1000
    top_k: int = 10
    latency_requests: int = 100
    min_accuracy_without_production: float = 0.6  # absolute floors for the first model
    min_r2_without_production: float = 0.0
    min_precision_at_k_without_production: float = 0.05
    seed: int = 0


@dataclass(frozen=True)
class Task:
    """How one task is judged: the primary metric, its direction, the guard and floor metric."""

    name: str
    primary: str
    higher_is_better: bool
    guard: str  # compared in points on the original test set, and against the floor

    @classmethod
    def of(cls, task: str, gates: Gates) -> Task:
        if task == REGRESSION:
            return cls(task, "mse", False, "r2")
        if task == RANKING:
            metric = f"precision_at_{gates.top_k}"
            return cls(task, metric, True, metric)
        return cls(CLASSIFICATION, PRIMARY_METRIC, True, PRIMARY_METRIC)

    def floor(self, gates: Gates) -> float:
        return {
            CLASSIFICATION: gates.min_accuracy_without_production,
            REGRESSION: gates.min_r2_without_production,
            RANKING: gates.min_precision_at_k_without_production,
        }[self.name]


@dataclass(frozen=True)
class Score:
    """One model's metrics on one set of rows; the confusion matrix uses the model's own classes."""

    metrics: dict[str, float]
    classes: list[str]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class (classifiers only)
    units: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # the primary metric's mean terms


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    detail: str
    enforced: bool = True  # a reported-only gate never blocks the blessing


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
    gates: dict[str, float] = field(default_factory=dict)
    task: str = CLASSIFICATION
    gate_results: list[GateResult] = field(default_factory=list)
    test_rows: int | None = None
    candidate_test: dict[str, float] | None = None
    production_test: dict[str, float] | None = None
    improvement_ci: list[float] | None = None  # relative, at `gates.confidence_level`
    latency_ms: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: undefined metrics (NaN) become None."""
        return _json_safe(asdict(self))

    def to_markdown(self) -> str:
        title = "Blessed" if self.blessed else "Not blessed"
        against = (
            f"production {self.production_version or '(unknown version)'}" if self.production else "no production model"
        )
        lines = [
            f"## {title}: candidate {self.candidate_version or '(unknown version)'} vs {against}",
            "",
            f"Scored on the same {self.holdout_rows} holdout rows"
            + (f" and {self.test_rows} rows of the original test set" if self.test_rows else "")
            + f"; task: {self.task}; primary metric: {self.primary_metric}.",
            "",
            "| gate | result | why |",
            "|---|---|---|",
        ]
        for gate in self.gate_results:
            result = ("pass" if gate.passed else "FAIL") if gate.enforced else "reported"
            lines.append(f"| {gate.name} | {result} | {gate.detail} |")
        if notes := [r for r in self.reasons if r not in {g.detail for g in self.gate_results}]:
            lines += ["", *(f"- {note}" for note in notes)]
        lines += ["", _metrics_markdown("Holdout", self.candidate, self.production)]
        if self.candidate_test is not None:
            lines += ["", _metrics_markdown("Original test set", self.candidate_test, self.production_test)]
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


# --- scoring ----------------------------------------------------------------------------


def score(model: LoadedModel, rows: pd.DataFrame, gates: Gates | None = None, catalog: list[str] | None = None) -> Score:
    """The task's metrics of `model` on `rows` (classes are mapped by name)."""
    gates = gates or Gates()
    if model.task == REGRESSION:
        return _score_regression(model, rows)
    if model.task == RANKING:
        return _score_ranking(model, rows, gates.top_k, catalog)
    return _score_classification(model, rows)


def _score_classification(model: LoadedModel, rows: pd.DataFrame) -> Score:
    classes = model.classes
    y_true = encode_labels(rows[LABEL], classes)
    proba = predict(model, rows)
    y_pred = proba.argmax(axis=1)
    labels = list(range(len(classes)))
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    values = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": _roc_auc(y_true, proba),
        "log_loss": float(skm.log_loss(y_true, np.clip(proba, 1e-7, 1.0), labels=labels)),
    }
    matrix = skm.confusion_matrix(y_true, y_pred, labels=labels)
    return Score(values, classes, matrix.astype(int).tolist(), (y_pred == y_true).astype(np.float64))


def _score_regression(model: LoadedModel, rows: pd.DataFrame) -> Score:
    y_true = numeric_labels(rows, model.family)
    y_pred = predict(model, rows).astype(np.float64)
    squared = (y_pred - y_true) ** 2
    r2 = float(skm.r2_score(y_true, y_pred)) if len(rows) > 1 else math.nan
    values = {"mse": float(squared.mean()), "mae": float(np.abs(y_pred - y_true).mean()), "r2": r2}
    return Score(values, [], [], squared)


def _score_ranking(model: LoadedModel, rows: pd.DataFrame, k: int, catalog: list[str] | None) -> Score:
    """precision@k and recall@k per user with at least one interaction in `rows`, averaged over users.

    Every user's list ranks the whole catalogue (default: the model's items and the rows'
    items); relevant items are the user's interactions in `rows`.
    """
    for column in (USER, ITEM):
        if column not in rows.columns:
            raise DataError(f"holdout has no '{column}' column: a recommender is scored on user-item interactions")
    positive = rows[numeric_labels(rows, model.family) > 0]
    if positive.empty:
        raise DataError("holdout has no interaction (label > 0): precision@k cannot be computed")
    items = np.asarray(
        sorted(set(catalog or []) | set(model.spec.get("items", [])) | set(positive[ITEM].astype(str))), dtype=object
    )
    relevant = positive.assign(**{USER: positive[USER].astype(str), ITEM: positive[ITEM].astype(str)}).groupby(USER)[ITEM]
    users = sorted(relevant.groups)
    wanted = {user: set(group) for user, group in relevant}
    k = min(k, len(items))
    precision, recall = np.zeros(len(users)), np.zeros(len(users))
    chunk = max(1, 200_000 // len(items))
    for start in range(0, len(users), chunk):
        block = users[start : start + chunk]
        pairs = pd.DataFrame({USER: np.repeat(np.asarray(block, dtype=object), len(items)), ITEM: np.tile(items, len(block))})
        scores = predict(model, pairs).reshape(len(block), len(items))
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        for row, user in enumerate(block):
            hits = len(wanted[user] & set(items[top[row]]))
            precision[start + row] = hits / k
            recall[start + row] = hits / len(wanted[user])
    values = {f"precision_at_{k}": float(precision.mean()), f"recall_at_{k}": float(recall.mean()), "users": float(len(users))}
    return Score(values, [], [], precision)


def _roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    # Undefined when the holdout holds a single class: NaN, shown as "n/a".
    if len(np.unique(y_true)) < 2:
        return math.nan
    if proba.shape[1] == 2:
        return float(skm.roc_auc_score(y_true, proba[:, 1]))
    present = np.unique(y_true)
    # One-vs-rest over the classes the holdout holds; renormalise so rows sum to 1.
    sub = proba[:, present] / proba[:, present].sum(axis=1, keepdims=True)
    if len(present) == 2:
        return float(skm.roc_auc_score(y_true == present[1], sub[:, 1]))
    return float(skm.roc_auc_score(y_true, sub, multi_class="ovr", average="macro", labels=present))


def paired_bootstrap(
    candidate: np.ndarray, production: np.ndarray, samples: int, confidence: float, seed: int = 0
) -> tuple[float, float]:
    """Confidence interval of mean(candidate - production), resampling the same rows for both."""
    if len(candidate) != len(production) or len(candidate) == 0:
        raise ValueError("a paired bootstrap needs two equally long, non-empty series")
    diff = np.asarray(candidate, np.float64) - np.asarray(production, np.float64)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, samples, _BOOTSTRAP_CHUNK):
        index = rng.integers(0, len(diff), size=(min(_BOOTSTRAP_CHUNK, samples - start), len(diff)))
        means.append(diff[index].mean(axis=1))
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.concatenate(means), [tail, 1 - tail])
    return float(low), float(high)


def p95_latency_ms(models: list[LoadedModel], row: pd.DataFrame, requests: int) -> list[float]:
    """Single-request p95 latency of each model on the same one-row input, calls interleaved.

    Interleaving spreads the machine's noise over all models alike; a few warm-up calls
    first keep tracing and allocation out of the measurement.
    """
    inputs = [tf.nest.map_structure(tf.constant, call_inputs(m.family_impl.inputs(row, m.spec))) for m in models]
    # A traced graph, as TF Serving runs the SavedModel: eager Python overhead is not the model's cost.
    calls = [_traced(m.keras_model) for m in models]
    for call, x in zip(calls, inputs, strict=True):
        for _ in range(5):
            call(x)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(requests):
        for i, (call, x) in enumerate(zip(calls, inputs, strict=True)):
            start = time.perf_counter()
            np.asarray(call(x))
            times[i].append((time.perf_counter() - start) * 1000)
    return [float(np.percentile(t, 95)) for t in times]


def _traced(model: Any) -> Any:
    return tf.function(lambda x: model(x, training=False))


# --- the verdict ------------------------------------------------------------------------


def read_holdout(path: Path, what: str = "holdout") -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path} not found: pass the Parquet written by prepare_dataset")
    frame = pd.read_parquet(path)
    if LABEL not in frame.columns:
        raise DataError(f"{what} {path} has no '{LABEL}' column: evaluation needs the true answer of each row")
    frame = frame[frame[LABEL].notna()].reset_index(drop=True)
    if frame.empty:
        raise DataError(f"{what} {path} has no labelled rows: the candidate cannot be scored")
    frame[LABEL] = frame[LABEL].astype(str)
    return frame


def evaluate(
    candidate_dir: Path,
    production_dir: Path | None,
    holdout_path: Path,
    gates: Gates,
    test_path: Path | None = None,
) -> Verdict:
    """Scores both models on the same holdout (and original test set) and decides the blessing."""
    holdout = read_holdout(holdout_path)
    test = read_holdout(test_path, "original test set") if test_path is not None else None
    candidate_model = load_model(candidate_dir)
    production_model = load_model(production_dir) if production_dir is not None else None
    task = Task.of(candidate_model.task, gates)
    if production_model is not None and production_model.task != candidate_model.task:
        raise DataError(
            f"candidate {candidate_model.family} ({candidate_model.task}) and production {production_model.family} "
            f"({production_model.task}) do not answer the same question: they cannot be compared"
        )
    catalog = _catalog(candidate_model, production_model) if task.name == RANKING else None
    candidate = score(candidate_model, holdout, gates, catalog)
    candidate_test = score(candidate_model, test, gates, catalog) if test is not None else None
    production = production_test = None
    relative: float | None = None
    ci: list[float] | None = None
    latency: dict[str, float] | None = None
    results: list[GateResult] = []
    notes: list[str] = []

    if production_model is None:
        value, floor = candidate.metrics[task.guard], task.floor(gates)
        passed = value >= floor
        sign = "≥" if passed else "<"
        results.append(
            GateResult("floor", passed, f"no production model: {task.guard} {value:.3f} {sign} {floor:.3f} required for a first model")
        )
    else:
        production = score(production_model, holdout, gates, catalog)
        relative, gate = _improvement_gate(task, candidate, production, gates)
        results.append(gate)
        if test is not None:
            production_test = score(production_model, test, gates, catalog)
            results.append(_regression_gate(task, candidate_test, production_test, gates))
        else:
            results.append(GateResult("no_regression", True, "no original test set yet: nothing to regress on", enforced=False))
        if gates.max_latency_ratio > 0:
            cand_ms, prod_ms = p95_latency_ms([candidate_model, production_model], holdout.iloc[:1], gates.latency_requests)
            latency = {"candidate_p95": cand_ms, "production_p95": prod_ms}
            passed = cand_ms <= gates.max_latency_ratio * prod_ms
            sign = "≤" if passed else ">"
            results.append(
                GateResult(
                    "latency",
                    passed,
                    f"single-request p95 {cand_ms:.2f} ms vs production {prod_ms:.2f} ms: "
                    f"{cand_ms / prod_ms:.2f}x {sign} {gates.max_latency_ratio:g}x allowed",
                )
            )
        ci, gate = _significance_gate(task, candidate, production, gates)
        results.append(gate)
        if production.classes != candidate.classes:
            notes.append(
                f"note: classes differ (candidate {', '.join(candidate.classes)}; "
                f"production {', '.join(production.classes)}); each was scored on its own classes"
            )

    return Verdict(
        blessed=all(g.passed for g in results if g.enforced),
        primary_metric=task.primary,
        candidate=candidate.metrics,
        production=production.metrics if production else None,
        relative_improvement=relative,
        reasons=[g.detail for g in results] + notes,
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
        test_rows=len(test) if test is not None else None,
        candidate_test=candidate_test.metrics if candidate_test else None,
        production_test=production_test.metrics if production_test else None,
        improvement_ci=ci,
        latency_ms=latency,
    )


def _catalog(*models: LoadedModel | None) -> list[str]:
    return sorted({item for m in models if m is not None for item in m.spec.get("items", [])})


def _gain(task: Task, candidate: float, production: float) -> float:
    return candidate - production if task.higher_is_better else production - candidate


def _improvement_gate(task: Task, candidate: Score, production: Score, gates: Gates) -> tuple[float | None, GateResult]:
    cand, prod = candidate.metrics[task.primary], production.metrics[task.primary]
    required = f"{gates.min_improvement * 100:g} % required"
    if prod > 0:
        relative = _gain(task, cand, prod) / prod
        passed = relative >= gates.min_improvement
        sign = "≥" if passed else "<"
        detail = f"{task.primary} {cand:.3f} vs production {prod:.3f}: {relative * 100:+.1f} % {sign} {required}"
        return relative, GateResult("improvement", passed, detail)
    # A relative gain over zero is undefined: any gain passes.
    passed = _gain(task, cand, prod) > 0
    detail = f"{task.primary} {cand:.3f} vs production {prod:.3f}: {'any gain passes' if passed else 'no gain'} ({required})"
    return None, GateResult("improvement", passed, detail)


def _regression_gate(task: Task, candidate: Score, production: Score, gates: Gates) -> GateResult:
    cand, prod = candidate.metrics[task.guard], production.metrics[task.guard]
    lost = prod - cand  # every guard metric is higher-is-better
    passed = bool(lost <= gates.max_test_regression + 1e-12)
    sign = "≤" if passed else ">"
    detail = (
        f"original test set: {task.guard} {cand:.3f} vs production {prod:.3f}: "
        f"{max(lost, 0.0) * 100:.1f} points lost {sign} {gates.max_test_regression * 100:g} allowed"
    )
    return GateResult("no_regression", passed, detail)


def _significance_gate(task: Task, candidate: Score, production: Score, gates: Gates) -> tuple[list[float] | None, GateResult]:
    if len(candidate.units) != len(production.units) or len(candidate.units) < 2:
        return None, GateResult("significance", not gates.require_significant, "too few rows for a bootstrap", gates.require_significant)
    sign = 1.0 if task.higher_is_better else -1.0
    low, high = paired_bootstrap(
        sign * candidate.units, sign * production.units, gates.bootstrap_samples, gates.confidence_level, gates.seed
    )
    prod = production.metrics[task.primary]
    scale = prod if prod > 0 else 1.0
    ci = [low / scale, high / scale]
    passed = low > 0 if gates.require_significant else True
    level = f"{gates.confidence_level:.0%}"
    detail = (
        f"paired bootstrap {level} CI of the {task.primary} improvement: [{ci[0] * 100:+.1f} %, {ci[1] * 100:+.1f} %]"
        + ((" excludes 0" if passed else " includes 0 or less") if gates.require_significant else " (reported)")
    )
    return ci, GateResult("significance", passed, detail, enforced=gates.require_significant)


# --- rendering --------------------------------------------------------------------------


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
