"""tabular_classifier: numeric and text feature columns -> class probabilities (normalised MLP).

Numbers are normalised and text categories encoded inside the model (see `columns`).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pandas as pd

import feedback_loop.train.families.columns as columns
from feedback_loop.train.families.base import Classifier, Family

TABULAR_CLASSIFIER = "tabular_classifier"


class Tabular(Family):
    """Reads the feature columns (see `columns`); the regressor shares it."""

    input_name = columns.FEATURES

    def _describe_features(self, frame: pd.DataFrame) -> dict[str, Any]:
        return columns.describe(frame)

    def inputs(self, frame: pd.DataFrame, spec: dict[str, Any]) -> dict[str, np.ndarray]:
        return columns.inputs(frame, spec)

    def incompatible(self, spec: dict[str, Any], frame: pd.DataFrame) -> str | None:
        return columns.incompatible(spec, frame)


class TabularClassifier(Tabular, Classifier):
    name = TABULAR_CLASSIFIER

    @classmethod
    def claims(cls, columns: set[str]) -> bool:
        return True  # the fallback: any other columns are features

    def describe(self, frame: pd.DataFrame) -> dict[str, Any]:
        return {"classes": self._classes(frame), **self._describe_features(frame)}

    def build(self, spec: dict[str, Any], inputs: dict[str, np.ndarray]) -> keras.Model:
        keras_inputs, x = columns.encoded(spec, inputs)
        x = keras.layers.Dense(32, activation="relu")(x)
        x = keras.layers.Dense(32, activation="relu")(x)
        out = keras.layers.Dense(len(spec["classes"]), activation="softmax", dtype="float32", name=self.output_name)(x)
        return keras.Model(columns.model_inputs(keras_inputs), out, name=self.name)

    def incompatible(self, spec: dict[str, Any], frame: pd.DataFrame) -> str | None:
        return Tabular.incompatible(self, spec, frame) or Classifier.incompatible(self, spec, frame)
