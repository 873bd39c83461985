"""Candidate vs production on the same holdout rows, and the blessing that gates deployment.

The gate is relative to a baseline: a candidate is blessed when its accuracy beats the
production model's by at least `min_improvement` (relative), or, when nothing is in
production yet, when its accuracy reaches an absolute floor. Every gate leaves one
sentence in `Verdict.reasons`, so a person reading the run sees why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from feedback_loop.dataset import LABEL
from feedback_loop.errors import DataError
from feedback_loop.train.core import LoadedModel, encode_labels, load_model, predict_proba

PRIMARY_METRIC = "accuracy"


@dataclass(frozen=True)
class Gates:
    min_improvement: float = 0.02  # relative gain of the primary metric over production
    min_accuracy_without_production: float = 0.6  # absolute floor for the first model


@dataclass(frozen=True)
class Score:
    """One model's metrics on the holdout; the confusion matrix uses the model's own classes."""

    metrics: dict[str, float]
    classes: list[str]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class


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
            f"Scored on the same {self.holdout_rows} holdout rows; primary metric: {self.primary_metric}.",
            "",
            *(f"- {reason}" for reason in self.reasons),
            "",
            "| metric | candidate | production |",
            "|---|---:|---:|",
        ]
        for name, value in self.candidate.items():
            other = self.production.get(name) if self.production else None
            lines.append(f"| {name} | {_fmt(value)} | {_fmt(other)} |")
        lines += ["", _matrix_markdown("Candidate confusion matrix", self.classes, self.confusion_matrix)]
        if self.production_confusion_matrix is not None and self.production_classes is not None:
            lines += [
                "",
                _matrix_markdown(
                    "Production confusion matrix", self.production_classes, self.production_confusion_matrix
                ),
            ]
        return "\n".join(lines) + "\n"


def score(model: LoadedModel, holdout: pd.DataFrame) -> Score:
    """Classification metrics of `model` on `holdout`, mapping labels to the model's classes by name."""
    classes = model.classes
    y_true = encode_labels(holdout[LABEL], classes)
    proba = predict_proba(model, holdout)
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
    return Score(values, classes, matrix.astype(int).tolist())


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


def read_holdout(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"holdout {path} not found: pass the holdout Parquet written by prepare_dataset")
    frame = pd.read_parquet(path)
    if LABEL not in frame.columns:
        raise DataError(f"holdout {path} has no '{LABEL}' column: evaluation needs the true class of each row")
    frame = frame[frame[LABEL].notna()].reset_index(drop=True)
    if frame.empty:
        raise DataError(f"holdout {path} has no labelled rows: the candidate cannot be scored")
    frame[LABEL] = frame[LABEL].astype(str)
    return frame


def evaluate(candidate_dir: Path, production_dir: Path | None, holdout_path: Path, gates: Gates) -> Verdict:
    """Scores both models on the same holdout rows and decides the blessing."""
    holdout = read_holdout(holdout_path)
    candidate_model = load_model(candidate_dir)
    candidate = score(candidate_model, holdout)
    cand_value = candidate.metrics[PRIMARY_METRIC]
    production: Score | None = None
    production_version: str | None = None
    relative: float | None = None

    if production_dir is None:
        floor = gates.min_accuracy_without_production
        blessed = cand_value >= floor
        sign = "≥" if blessed else "<"
        reasons = [
            f"no production model: {PRIMARY_METRIC} {cand_value:.3f} {sign} {floor:.3f} required for a first model"
        ]
    else:
        production_model = load_model(production_dir)
        production_version = production_model.version
        production = score(production_model, holdout)
        prod_value = production.metrics[PRIMARY_METRIC]
        required = f"{gates.min_improvement * 100:g} % required"
        if prod_value > 0:
            relative = (cand_value - prod_value) / prod_value
            blessed = relative >= gates.min_improvement
            sign = "≥" if blessed else "<"
            reasons = [
                f"{PRIMARY_METRIC} {cand_value:.3f} vs production {prod_value:.3f}: "
                f"{relative * 100:+.1f} % {sign} {required}"
            ]
        else:
            # A relative gain over zero is undefined; any correct prediction is an improvement.
            blessed = cand_value > 0
            reasons = [
                f"{PRIMARY_METRIC} {cand_value:.3f} vs production 0.000: "
                f"{'any gain passes' if blessed else 'no gain'} ({required})"
            ]
        if production.classes != candidate.classes:
            reasons.append(
                f"note: classes differ (candidate {', '.join(candidate.classes)}; "
                f"production {', '.join(production.classes)}); each was scored on its own classes"
            )

    return Verdict(
        blessed=blessed,
        primary_metric=PRIMARY_METRIC,
        candidate=candidate.metrics,
        production=production.metrics if production else None,
        relative_improvement=relative,
        reasons=reasons,
        classes=candidate.classes,
        confusion_matrix=candidate.confusion_matrix,
        holdout_rows=len(holdout),
        candidate_version=candidate_model.version,
        production_version=production_version,
        production_classes=production.classes if production else None,
        production_confusion_matrix=production.confusion_matrix if production else None,
        gates=asdict(gates),
    )


def _fmt(value: float | None) -> str:
    return "–" if value is None else ("n/a" if math.isnan(value) else f"{value:.4f}")


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
