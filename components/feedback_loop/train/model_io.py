"""A version directory on disk: export (Keras file, SavedModel, lineage) and load it back."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import tensorflow as tf

from feedback_loop.errors import DataError, ModelNotFound
from feedback_loop.lineage import validate
from feedback_loop.layout import LINEAGE_FILE, MODEL_FILE, SAVED_MODEL_DIR, SERVING_VERSION, TEST_DATA_FILE, TRAINING_DATA_FILE
from feedback_loop.train import families
from feedback_loop.train.families import CLASSIFICATION

PREDICT_BATCH = 512


@dataclass(frozen=True)
class LoadedModel:
    keras_model: keras.Model
    lineage: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.lineage.get("classes") or [])

    @property
    def family(self) -> str:
        return str(self.lineage["family"])

    @property
    def version(self) -> str | None:
        return self.lineage.get("version")

    @property
    def spec(self) -> dict[str, Any]:
        return families.spec_from_lineage(self.lineage)

    @property
    def family_impl(self) -> families.Family:
        return families.from_lineage(self.lineage)

    @property
    def task(self) -> str:
        return self.family_impl.task


def export(
    model: keras.Model, out_dir: Path, lineage: dict[str, Any], train_path: Path, test_path: Path | None = None
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / MODEL_FILE)
    export_saved_model(model, out_dir / SAVED_MODEL_DIR / SERVING_VERSION, lineage.get("output_name", "probabilities"))
    (out_dir / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(train_path, out_dir / TRAINING_DATA_FILE)
    if test_path is not None:
        shutil.copyfile(test_path, out_dir / TEST_DATA_FILE)


def export_saved_model(model: keras.Model, path: Path, output_name: str = "probabilities") -> None:
    """A SavedModel whose `serving_default` takes the model's named inputs and returns `{output_name}`.

    Text inputs (categories, users, items) are string tensors: clients send raw values.
    """
    if path.exists():
        shutil.rmtree(path)
    archive = keras.export.ExportArchive()
    archive.track(model)
    names = [t.name for t in model.inputs]
    # The TensorSpec names, not the Python argument names, become the signature's input keys.
    specs = [
        tf.TensorSpec([None, *t.shape[1:]], tf.string if t.dtype == "string" else tf.float32, name=t.name)
        for t in model.inputs
    ]

    def serve(*args: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = args[0] if len(args) == 1 else dict(zip(names, args, strict=True))
        return {output_name: tf.cast(model(inputs, training=False), tf.float32)}

    archive.add_endpoint(name="serving_default", fn=serve, input_signature=specs)
    archive.write_out(str(path), verbose=False)


def load_model(model_dir: Path) -> LoadedModel:
    """The Keras model and lineage of an exported version directory."""
    model_dir = Path(model_dir)
    model_file, lineage_file = model_dir / MODEL_FILE, model_dir / LINEAGE_FILE
    if not model_file.exists() or not lineage_file.exists():
        raise ModelNotFound(f"{model_dir} holds no exported model ({MODEL_FILE} and {LINEAGE_FILE} expected)")
    lineage = validate(json.loads(lineage_file.read_text()), str(lineage_file))  # before the (slow) model load
    return LoadedModel(keras.models.load_model(model_file), lineage)


def predict(model: LoadedModel, table: pd.DataFrame | pa.Table) -> np.ndarray:
    """The model's output per row: probabilities [N, classes], or one value / score per row [N]."""
    frame = table.to_pandas() if isinstance(table, pa.Table) else table
    return model.family_impl.predict(model.keras_model, frame, model.spec, batch=PREDICT_BATCH)


def predict_proba(model: LoadedModel, table: pd.DataFrame | pa.Table) -> np.ndarray:
    """Class probabilities [N, len(model.classes)], columns in `model.classes` order."""
    if model.task != CLASSIFICATION:
        raise DataError(f"{model.family} predicts a {model.task} output, not class probabilities")
    return predict(model, table)
