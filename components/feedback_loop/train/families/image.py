"""image_classifier: `pixels` (28x28 uint8) -> class probabilities, with a small CNN."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pandas as pd

from feedback_loop.dataset import ID, PIXELS
from feedback_loop.errors import DataError
from feedback_loop.train.families.base import Classifier

IMAGE_CLASSIFIER = "image_classifier"
IMAGE_SIDE = 28
IMAGE_BYTES = IMAGE_SIDE * IMAGE_SIDE


class ImageClassifier(Classifier):
    name = IMAGE_CLASSIFIER
    priority = 20  # a pixels column decides before anything else

    @classmethod
    def claims(cls, columns: set[str]) -> bool:
        return PIXELS in columns

    def describe(self, frame: pd.DataFrame) -> dict[str, Any]:
        return {"classes": self._classes(frame), "feature_columns": [], "inputs": [PIXELS]}

    def inputs(self, frame: pd.DataFrame, spec: dict[str, Any]) -> dict[str, np.ndarray]:
        return {PIXELS: image_array(frame)}

    def build(self, spec: dict[str, Any], inputs: dict[str, np.ndarray]) -> keras.Model:
        pixels = keras.Input((IMAGE_SIDE, IMAGE_SIDE), name=PIXELS)
        x = keras.layers.Reshape((IMAGE_SIDE, IMAGE_SIDE, 1))(pixels)
        x = keras.layers.Rescaling(1.0 / 255)(x)
        x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(64, activation="relu")(x)
        x = keras.layers.Dropout(0.3)(x)
        out = keras.layers.Dense(len(spec["classes"]), activation="softmax", dtype="float32", name=self.output_name)(x)
        return keras.Model(pixels, out, name=self.name)


def image_array(frame: pd.DataFrame) -> np.ndarray:
    """`pixels` bytes as float32 [N, 28, 28] of raw values 0..255 (the model rescales)."""
    if PIXELS not in frame.columns:
        raise DataError(f"the model reads images but the data has no '{PIXELS}' column")
    pixels = frame[PIXELS]
    bad = [
        i for i, value in enumerate(pixels) if not isinstance(value, (bytes, bytearray)) or len(value) != IMAGE_BYTES
    ]
    if bad:
        first = pixels.iloc[bad[0]]
        size = len(first) if isinstance(first, (bytes, bytearray)) else type(first).__name__
        where = frame[ID].iloc[bad[0]] if ID in frame.columns else bad[0]
        raise DataError(
            f"column '{PIXELS}' must hold {IMAGE_BYTES} bytes per row (a {IMAGE_SIDE}x{IMAGE_SIDE} uint8 image); "
            f"{len(bad)} rows do not, e.g. row {where!r} ({size})"
        )
    flat = np.frombuffer(b"".join(pixels), dtype=np.uint8)
    return flat.reshape(-1, IMAGE_SIDE, IMAGE_SIDE).astype(np.float32)
