"""One model's metrics on one set of rows, and the paired bootstrap that compares two.

    classification  accuracy (primary), precision, recall, F1, ROC AUC, log loss, confusion matrix
    regression      MSE (primary, lower is better), MAE, R²
    ranking         precision@k (primary) and recall@k, ranking the whole item catalogue per user

Every `Score` keeps the per-unit terms its primary metric averages (a row's correctness, a
row's squared error, a user's precision@k): the bootstrap and the guard test resample them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from feedback_loop.dataset import LABEL
from feedback_loop.errors import DataError
from feedback_loop.train.core import REGRESSION, RANKING, LoadedModel, predict
from feedback_loop.train.families import ITEM, USER, encode_labels, numeric_labels

_BOOTSTRAP_CHUNK = 100


@dataclass(frozen=True)
class Score:
    """One model's metrics on one set of rows; the confusion matrix uses the model's own classes."""

    metrics: dict[str, float]
    classes: list[str]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class (classifiers only)
    units: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # the primary metric's mean terms
    label_variance: float = 0.0  # regressors: Var(y), so that R² = 1 - mean(units) / label_variance


def score(model: LoadedModel, rows: pd.DataFrame, top_k: int = 10, catalog: list[str] | None = None) -> Score:
    """The task's metrics of `model` on `rows` (classes are mapped by name)."""
    if model.task == REGRESSION:
        return _score_regression(model, rows)
    if model.task == RANKING:
        return _score_ranking(model, rows, top_k, catalog)
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
    return Score(values, [], [], squared, float(np.var(y_true)))


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
