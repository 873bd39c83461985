"""module:function families: a user function builds the model; a built-in base family reads the data.

`function(spec, inputs) -> keras.Model` (uncompiled), importable in the training image; it
reads the inputs and predicts the outputs of the base family the data implies (set
`function.task = "regression"` for a value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pandas as pd

from feedback_loop.errors import SettingsError
from feedback_loop.train.families.base import Examples, Family


class Custom(Family):
    """A user function building the model; the base family reads the data and the outputs."""

    def __init__(self, reference: str, build_fn: Callable[..., keras.Model], base: Family) -> None:
        self.name, self.build_fn, self.base = reference, build_fn, base
        self.task, self.output_name = base.task, base.output_name
        self.loss, self.metrics = base.loss, base.metrics

    def describe(self, frame: pd.DataFrame) -> dict[str, Any]:
        return {**self.base.describe(frame), "base_family": self.base.name}

    def inputs(self, frame: pd.DataFrame, spec: dict[str, Any]) -> dict[str, np.ndarray]:
        return self.base.inputs(frame, spec)

    def targets(self, frame: pd.DataFrame, spec: dict[str, Any]) -> np.ndarray:
        return self.base.targets(frame, spec)

    def examples(self, frame: pd.DataFrame, spec: dict[str, Any], rng: np.random.Generator) -> Examples:
        return self.base.examples(frame, spec, rng)

    def incompatible(self, spec: dict[str, Any], frame: pd.DataFrame) -> str | None:
        return self.base.incompatible(spec, frame)

    def build(self, spec: dict[str, Any], inputs: dict[str, np.ndarray]) -> keras.Model:
        model = self.build_fn(spec, inputs)
        if not isinstance(model, keras.Model):
            raise SettingsError(f"family {self.name} returned {type(model).__name__}, not a keras.Model")
        return model
