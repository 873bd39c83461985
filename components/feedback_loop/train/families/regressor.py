"""tabular_regressor: numeric and text feature columns -> a value; the label holds a number.

Two dense layers and an output in the label's own unit (the net learns a standardised value).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pandas as pd

import feedback_loop.train.families.columns as columns
from feedback_loop.train.families.base import REGRESSION, numeric_labels
from feedback_loop.train.families.tabular import Tabular

TABULAR_REGRESSOR = "tabular_regressor"


class TabularRegressor(Tabular):
    name = TABULAR_REGRESSOR
    task = REGRESSION
    output_name = "value"
    loss = "mse"
    metrics = ("mae",)

    def describe(self, frame: pd.DataFrame) -> dict[str, Any]:
        y = numeric_labels(frame, self.name)
        std = float(y.std()) or 1.0
        return {"classes": [], **self._describe_features(frame), "target_mean": float(y.mean()), "target_std": std}

    def targets(self, frame: pd.DataFrame, spec: dict[str, Any]) -> np.ndarray:
        return numeric_labels(frame, self.name).astype(np.float32)

    def build(self, spec: dict[str, Any], inputs: dict[str, np.ndarray]) -> keras.Model:
        keras_inputs, x = columns.encoded(spec, inputs)
        x = keras.layers.Dense(64, activation="relu")(x)
        x = keras.layers.Dense(32, activation="relu")(x)
        x = keras.layers.Dense(1, dtype="float32")(x)
        out = keras.layers.Rescaling(spec["target_std"], offset=spec["target_mean"], dtype="float32", name=self.output_name)(x)
        return keras.Model(columns.model_inputs(keras_inputs), out, name=self.name)
