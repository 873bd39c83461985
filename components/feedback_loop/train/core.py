"""Trains the served model on a Parquet dataset and exports it for KServe.

The data picks the family:
    image    the dataset has a `pixels` column (784 uint8 bytes, a 28x28 grey image): a small CNN.
    tabular  otherwise: the numeric feature columns, normalised inside the model, then an MLP.

Preprocessing lives inside the model (reshape and rescale, or a Normalization layer adapted
on the training rows), so a client sends raw values and serving cannot drift from training.

One directory per version:
    model.keras              the Keras model (evaluation and the custom predictor load it)
    saved_model/1/           TF-Serving SavedModel, signature `serving_default`:
                             {pixels | features: float32} -> {probabilities: float32 [N, classes]}
    lineage.json             classes, data hash, code version, parameters, devices, parent
    training_data.parquet    the rows trained on: the next run's drift reference
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import tensorflow as tf

from feedback_loop.dataset import CREATED_AT, ID, LABEL, PIXELS, feature_columns
from feedback_loop.errors import DataError, ModelNotFound
from feedback_loop.lineage import code_lineage, data_hash

log = logging.getLogger(__name__)

IMAGE, TABULAR = "image", "tabular"
IMAGE_SIDE = 28
IMAGE_BYTES = IMAGE_SIDE * IMAGE_SIDE
OUTPUT_NAME = "probabilities"
MODEL_FILE = "model.keras"
LINEAGE_FILE = "lineage.json"
SAVED_MODEL_DIR = "saved_model"
SERVING_VERSION = "1"  # TF Serving (KServe's tensorflow runtime) loads numbered version dirs
TRAINING_DATA_FILE = "training_data.parquet"
_INPUT_NAMES = {IMAGE: "pixels", TABULAR: "features"}
_PREDICT_BATCH = 512


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 8
    learning_rate: float = 1e-3
    batch_size: int = 64  # per replica: the global batch grows with the number of GPUs
    seed: int = 42
    validation_fraction: float = 0.15  # taken from the most recent rows
    patience: int = 3


@dataclass(frozen=True)
class TrainResult:
    version: str
    out_dir: Path
    history: dict[str, float]  # loss, accuracy, val_loss, val_accuracy of the epoch whose weights were kept
    epochs_run: int
    best_epoch: int  # 1-based
    lineage: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedModel:
    keras_model: keras.Model
    lineage: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.lineage["classes"])

    @property
    def family(self) -> str:
        return str(self.lineage["family"])

    @property
    def version(self) -> str | None:
        return self.lineage.get("version")


# --- data -------------------------------------------------------------------------------


def read_labelled(path: Path) -> pd.DataFrame:
    """The rows of `path` that carry a label, as a DataFrame; DataError when none can train."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset {path} not found: pass the Parquet file written by prepare_dataset")
    frame = pd.read_parquet(path)
    if frame.empty:
        raise DataError(f"dataset {path} has no rows: widen the data window or lower its filters")
    for column in (LABEL, CREATED_AT):
        if column not in frame.columns:
            raise DataError(f"dataset {path} has no '{column}' column (columns: {', '.join(frame.columns)})")
    labelled = frame[frame[LABEL].notna()].copy()
    if labelled.empty:
        raise DataError(f"dataset {path} has {len(frame)} rows but none with a label")
    if len(labelled) < len(frame):
        log.info("dropped %d of %d rows without a label", len(frame) - len(labelled), len(frame))
    labelled[LABEL] = labelled[LABEL].astype(str)
    return labelled


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


def numeric_features(frame: pd.DataFrame) -> list[str]:
    """The numeric feature columns, in file order; other feature columns are left out."""
    candidates = feature_columns(list(frame.columns))
    numeric = [c for c in candidates if pd.api.types.is_numeric_dtype(frame[c])]
    if skipped := [c for c in candidates if c not in numeric]:
        log.warning("ignoring non-numeric feature columns: %s", ", ".join(skipped))
    if not numeric:
        raise DataError(f"no numeric feature column to train on (columns: {', '.join(frame.columns)})")
    return numeric


def tabular_array(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    if missing := [c for c in columns if c not in frame.columns]:
        raise DataError(f"feature columns missing: {', '.join(missing)}; the model was trained on {', '.join(columns)}")
    try:
        values = frame[columns].to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise DataError(f"feature columns {', '.join(columns)} must be numeric: {err}") from None
    if nulls := [c for c, has_null in zip(columns, np.isnan(values).any(axis=0), strict=True) if has_null]:
        raise DataError(f"feature columns with missing values: {', '.join(nulls)}; impute them in prepare_dataset")
    return values


def model_inputs(frame: pd.DataFrame, family: str, features: list[str]) -> np.ndarray:
    return image_array(frame) if family == IMAGE else tabular_array(frame, features)


def encode_labels(labels: pd.Series, classes: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    if unknown := sorted(set(labels) - index.keys()):
        raise DataError(
            f"labels unknown to the model: {', '.join(map(repr, unknown))} (model classes: {', '.join(classes)})"
        )
    return labels.map(index).to_numpy(dtype=np.int64)


def split_recent(frame: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(fit rows, validation rows): validation is the most recent `fraction` by created_at.

    Validating on the newest rows asks the question that matters: does the model hold
    up on the data it is about to serve?
    """
    ordered = frame.sort_values(CREATED_AT, kind="stable")
    n_val = int(round(len(ordered) * fraction))
    if n_val < 1 or n_val >= len(ordered):
        return ordered, None
    return ordered.iloc[:-n_val], ordered.iloc[-n_val:]


def _as_dataset(x: np.ndarray, y: np.ndarray, batch: int, seed: int | None) -> tf.data.Dataset:
    data = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if seed is not None:
        data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch).prefetch(tf.data.AUTOTUNE)


# --- model ------------------------------------------------------------------------------


def build_image_model(n_classes: int) -> keras.Model:
    inputs = keras.Input((IMAGE_SIDE, IMAGE_SIDE), name=_INPUT_NAMES[IMAGE])
    x = keras.layers.Reshape((IMAGE_SIDE, IMAGE_SIDE, 1))(inputs)
    x = keras.layers.Rescaling(1.0 / 255)(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="image_classifier")


def build_tabular_model(n_classes: int, x_train: np.ndarray) -> keras.Model:
    normalize = keras.layers.Normalization()
    normalize.adapt(x_train)  # statistics of the training rows only, stored in the model
    inputs = keras.Input((x_train.shape[1],), name=_INPUT_NAMES[TABULAR])
    x = normalize(inputs)
    x = keras.layers.Dense(32, activation="relu")(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="tabular_classifier")


def pick_strategy() -> tuple[tf.distribute.Strategy, list[str]]:
    """MirroredStrategy across GPUs when there are several; the default strategy otherwise."""
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if len(gpus) > 1:
        strategy: tf.distribute.Strategy = tf.distribute.MirroredStrategy()
        devices = list(strategy.extended.worker_devices)
    else:
        strategy = tf.distribute.get_strategy()
        devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")][:1]
    log.info("training on %s", ", ".join(devices))
    return strategy, devices


class EpochLogger(keras.callbacks.Callback):
    """One log line per epoch, so `fit(verbose=0)` still shows progress in the pod's log."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        shown = " ".join(f"{name}={float(value):.4g}" for name, value in sorted((logs or {}).items()))
        log.info("epoch %d/%d %s", epoch + 1, self.epochs, shown)


# --- train and export -------------------------------------------------------------------


def new_version(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("v%Y%m%d-%H%M%S")


def train(
    train_path: Path,
    out_dir: Path,
    params: TrainParams,
    *,
    model_name: str,
    parent_version: str | None = None,
    version: str | None = None,
) -> TrainResult:
    """Trains on `train_path` and writes the export described in the module docstring into `out_dir`."""
    train_path, out_dir = Path(train_path), Path(out_dir)
    frame = read_labelled(train_path)
    classes = sorted(frame[LABEL].unique())
    if len(classes) < 2:
        raise DataError(
            f"dataset {train_path} has one class only ({classes[0]!r} in {len(frame)} rows): "
            "a classifier needs two or more"
        )
    family = IMAGE if PIXELS in frame.columns else TABULAR
    features = numeric_features(frame) if family == TABULAR else []
    fit_rows, val_rows = split_recent(frame, params.validation_fraction)
    x_fit, y_fit = model_inputs(fit_rows, family, features), encode_labels(fit_rows[LABEL], classes)
    log.info(
        "training %s %s on %d rows (%d for validation), classes %s",
        model_name,
        family,
        len(frame),
        0 if val_rows is None else len(val_rows),
        classes,
    )

    keras.utils.set_random_seed(params.seed)
    strategy, devices = pick_strategy()
    batch = params.batch_size * strategy.num_replicas_in_sync
    with strategy.scope():
        model = build_image_model(len(classes)) if family == IMAGE else build_tabular_model(len(classes), x_fit)
        model.compile(
            optimizer=keras.optimizers.Adam(params.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    validation = None
    if val_rows is not None:
        x_val, y_val = model_inputs(val_rows, family, features), encode_labels(val_rows[LABEL], classes)
        validation = _as_dataset(x_val, y_val, batch, seed=None)
    monitor = "val_loss" if validation is not None else "loss"
    early_stopping = keras.callbacks.EarlyStopping(monitor=monitor, patience=params.patience, restore_best_weights=True)
    callbacks = [
        early_stopping,
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5, patience=max(1, params.patience // 2)),
        EpochLogger(params.epochs),
    ]
    fit = model.fit(
        _as_dataset(x_fit, y_fit, batch, seed=params.seed),
        validation_data=validation,
        epochs=params.epochs,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles; Keras' own flag only applies to arrays
        verbose=0,
    )
    epochs_run = len(fit.history["loss"])
    best = early_stopping.best_epoch if early_stopping.best_weights is not None else epochs_run - 1
    history = {name: float(values[best]) for name, values in fit.history.items() if name != "learning_rate"}

    version = version or new_version()
    lineage = {
        "model_name": model_name,
        "version": version,
        "family": family,
        "classes": classes,
        "feature_columns": features,
        "input_name": _INPUT_NAMES[family],
        "trained_through": pd.to_datetime(frame[CREATED_AT], utc=True).max().isoformat(),
        "rows": len(frame),
        "data_hash": data_hash(train_path),
        "params": asdict(params),
        **code_lineage(),
        "tf_version": tf.__version__,
        "devices": devices,
        "created_at": datetime.now(UTC).isoformat(),
        "parent_version": parent_version,
    }
    export(model, out_dir, lineage, train_path)
    kept = " ".join(f"{name}={value:.4g}" for name, value in sorted(history.items()))
    log.info("exported %s %s to %s (kept epoch %d of %d: %s)", model_name, version, out_dir, best + 1, epochs_run, kept)
    return TrainResult(version, out_dir, history, epochs_run, best + 1, lineage)


def export(model: keras.Model, out_dir: Path, lineage: dict[str, Any], train_path: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / MODEL_FILE)
    export_saved_model(model, out_dir / SAVED_MODEL_DIR / SERVING_VERSION, lineage["input_name"])
    (out_dir / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(train_path, out_dir / TRAINING_DATA_FILE)


def export_saved_model(model: keras.Model, path: Path, input_name: str) -> None:
    """A SavedModel whose `serving_default` takes `{input_name: float32}` and returns `{probabilities}`."""
    if path.exists():
        shutil.rmtree(path)
    archive = keras.export.ExportArchive()
    archive.track(model)
    # The TensorSpec name, not the Python argument name, becomes the signature's input key.
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name=input_name)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda inputs: {OUTPUT_NAME: model(inputs, training=False)},
        input_signature=[spec],
    )
    archive.write_out(str(path), verbose=False)


# --- load and predict -------------------------------------------------------------------


def load_model(model_dir: Path) -> LoadedModel:
    """The Keras model and lineage of an exported version directory."""
    model_dir = Path(model_dir)
    model_file, lineage_file = model_dir / MODEL_FILE, model_dir / LINEAGE_FILE
    if not model_file.exists() or not lineage_file.exists():
        raise ModelNotFound(f"{model_dir} holds no exported model ({MODEL_FILE} and {LINEAGE_FILE} expected)")
    return LoadedModel(keras.models.load_model(model_file), json.loads(lineage_file.read_text()))


def predict_proba(model: LoadedModel, table: pd.DataFrame | pa.Table) -> np.ndarray:
    """Class probabilities [N, len(model.classes)], columns in `model.classes` order."""
    frame = table.to_pandas() if isinstance(table, pa.Table) else table
    x = model_inputs(frame, model.family, list(model.lineage.get("feature_columns") or []))
    return np.asarray(model.keras_model.predict(x, batch_size=_PREDICT_BATCH, verbose=0))
