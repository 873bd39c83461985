"""What every family shares: the `Family` interface, its `Examples`, and label helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from feedback_loop.dataset import LABEL
from feedback_loop.errors import DataError

CLASSIFICATION, REGRESSION, RANKING = "classification", "regression", "ranking"


@dataclass(frozen=True)
class Examples:
    """What `fit` consumes: named inputs, targets, and for each example the row it came from."""

    inputs: dict[str, np.ndarray]
    targets: np.ndarray
    rows: np.ndarray  # positions in the frame: sample weights of sampled negatives follow their row


class Family:
    """A built-in family; subclasses fill in the data and model parts.

    `claims(columns)` lets `auto` pick a family from the columns; `priority` orders the
    claims (highest first), and the family claiming everything is the fallback.
    """

    name: str = ""
    task: str = CLASSIFICATION
    output_name: str = "probabilities"
    loss: str = "sparse_categorical_crossentropy"
    metrics: tuple[str, ...] = ("accuracy",)
    priority: int = 0

    @classmethod
    def claims(cls, columns: set[str]) -> bool:
        return False

    def describe(self, frame: pd.DataFrame) -> dict[str, Any]:
        raise NotImplementedError

    def inputs(self, frame: pd.DataFrame, spec: dict[str, Any]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def targets(self, frame: pd.DataFrame, spec: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def build(self, spec: dict[str, Any], inputs: dict[str, np.ndarray]) -> keras.Model:
        raise NotImplementedError

    def examples(self, frame: pd.DataFrame, spec: dict[str, Any], rng: np.random.Generator) -> Examples:
        return Examples(self.inputs(frame, spec), self.targets(frame, spec), np.arange(len(frame)))

    def incompatible(self, spec: dict[str, Any], frame: pd.DataFrame) -> str | None:
        """Why a model described by `spec` cannot be warm-started on `frame`; None when it can."""
        return None

    def predict(self, model: keras.Model, frame: pd.DataFrame, spec: dict[str, Any], batch: int = 512) -> np.ndarray:
        """Classification: probabilities [N, classes]; regression and ranking: one value per row [N]."""
        out = np.asarray(model.predict(call_inputs(self.inputs(frame, spec)), batch_size=batch, verbose=0))
        return out if self.task == CLASSIFICATION else out.reshape(len(frame), -1)[:, 0]


class Classifier(Family):
    """Classes are the sorted label texts of the training rows."""

    def _classes(self, frame: pd.DataFrame) -> list[str]:
        classes = sorted(frame[LABEL].astype(str).unique())
        if len(classes) < 2:
            raise DataError(
                f"the data has one class only ({classes[0]!r} in {len(frame)} rows): a classifier needs two or more"
            )
        return classes

    def targets(self, frame: pd.DataFrame, spec: dict[str, Any]) -> np.ndarray:
        return encode_labels(frame[LABEL].astype(str), spec["classes"])

    def incompatible(self, spec: dict[str, Any], frame: pd.DataFrame) -> str | None:
        if new := sorted(set(frame[LABEL].astype(str)) - set(spec["classes"])):
            return f"new classes {', '.join(map(repr, new))} the production model cannot output"
        return None


def call_inputs(inputs: dict[str, Any]) -> Any:
    """What `model.predict` takes: text arrays as string tensors (Keras refuses 2-D object
    arrays), and a one-input functional model's bare input (a dict warns about structure)."""
    ready = {
        name: tf.constant(value, dtype=tf.string) if isinstance(value, np.ndarray) and value.dtype == object else value
        for name, value in inputs.items()
    }
    return next(iter(ready.values())) if len(ready) == 1 else ready


def require(frame: pd.DataFrame, columns: list[str], family: str) -> None:
    if missing := [c for c in columns if c not in frame.columns]:
        raise DataError(f"the {family} family reads columns {', '.join(columns)}; missing: {', '.join(missing)}")


def numeric_labels(frame: pd.DataFrame, family: str) -> np.ndarray:
    """The label texts as numbers (regressors, interaction counts); DataError on the first that is not."""
    values = pd.to_numeric(frame[LABEL], errors="coerce").to_numpy(np.float64)
    if np.isnan(values).any():
        bad = frame[LABEL][np.isnan(values)].iloc[0]
        raise DataError(f"the {family} family needs a number in '{LABEL}' on every row; found {bad!r}")
    return values


def encode_labels(labels: pd.Series, classes: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    if unknown := sorted(set(labels) - index.keys()):
        raise DataError(
            f"labels unknown to the model: {', '.join(map(repr, unknown))} (model classes: {', '.join(classes)})"
        )
    return labels.map(index).to_numpy(dtype=np.int64)
