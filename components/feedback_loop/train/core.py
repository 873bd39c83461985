"""Trains the served model on a Parquet dataset and exports it for KServe.

Modules: `data` (rows and batches), `families` (one file per model family), `quality`
(reference answers, validated metric, importance), `model_io` (export and load).

The family (see `families`) is chosen by name, or inferred from the columns (`auto`):
images, user-item interactions, else a tabular classifier. Preprocessing lives inside the
model, so a client sends raw values and serving cannot drift from training.

Strategy: `scratch` builds a new model; `fine_tune` warm-starts from the production model
with a lower learning rate; `auto` fine-tunes unless drift is broad or the new data is a
large share of the rows (thresholds in `TrainParams`), or the production model cannot
take the data (new classes, lost columns).

On GPUs: `MirroredStrategy` over all visible GPUs with the global batch scaled by the
replica count; mixed precision (float16 on GPU, bfloat16 on CPU) and XLA are options. On
several nodes (a TrainJob, see `node`): `MultiWorkerMirroredStrategy` through `multiworker`.

One directory per version:
    model.keras                   the Keras model (evaluation and the custom predictor load it)
    saved_model/1/                TF-Serving SavedModel, signature `serving_default`:
                                  {pixels | features, categories | user, item}
                                  -> {probabilities | value | scores}
    lineage.json                  family, spec (classes, feature and categorical columns,
                                  vocabulary sizes), data hash, code and image, dependency
                                  versions, parameters, strategy, devices, parent, feature
                                  importance, and `validation`: the validated metric (see `quality`)
    training_data.parquet         the rows trained on: the next run's drift reference
    reference_predictions.parquet id, label, predicted_label, confidence on the validation rows:
                                  the reference for prediction drift
    test_data.parquet             the original test set, carried from version to version
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from feedback_loop.dataset import CREATED_AT, write_parquet
from feedback_loop.errors import SettingsError
from feedback_loop.layout import MODEL_FILE, REFERENCE_PREDICTIONS_FILE
from feedback_loop.lineage import code_lineage, data_hash
from feedback_loop.prepare.windows import decay_weights
from feedback_loop.train import families, multiworker
from feedback_loop.train.data import as_dataset, new_rows_fraction, read_labelled, split_recent, trained_through
from feedback_loop.train.families import (  # noqa: F401 (re-exported: the stage's public face)
    CLASSIFICATION,
    IMAGE_BYTES,
    IMAGE_SIDE,
    RANKING,
    REGRESSION,
    encode_labels,
    image_array,
    numeric_features,
    tabular_array,
)
from feedback_loop.train.model_io import (  # noqa: F401 (re-exported)
    LoadedModel,
    export,
    export_saved_model,
    load_model,
    predict,
    predict_proba,
)
from feedback_loop.train.quality import permutation_importance, reference_predictions

__all__ = [
    "AUTO", "CLASSIFICATION", "FINE_TUNE", "RANKING", "REGRESSION", "SCRATCH", "STRATEGIES", "LoadedModel",
    "TrainParams", "TrainResult", "as_dataset", "choose_strategy", "encode_labels", "export", "export_saved_model",
    "image_array", "load_model", "new_version", "numeric_features", "predict", "predict_proba", "read_labelled",
    "split_recent", "tabular_array", "train",
]

log = logging.getLogger(__name__)

SCRATCH, FINE_TUNE, AUTO = "scratch", "fine_tune", "auto"
STRATEGIES = (SCRATCH, FINE_TUNE, AUTO)
_REFERENCE_ROWS = 2000  # without validation rows, the newest fit rows stand in (reference, importance)


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 8
    learning_rate: float = 1e-3
    batch_size: int = 64  # per replica: the global batch grows with the number of GPUs
    seed: int = 42
    validation_fraction: float = 0.15  # taken from the most recent rows
    patience: int = 3
    family: str = families.AUTO
    strategy: str = AUTO
    fine_tune_learning_rate_factor: float = 0.1  # warm starts move gently away from production
    auto_drift_share: float = 0.5  # auto: from scratch when at least this share of features drifted
    auto_new_data_fraction: float = 0.5  # auto: ...or when at least this share of rows is new to production
    half_life_days: float | None = None  # weighted window: exponential-decay sample weights
    mixed_precision: bool = False
    xla: bool = False


@dataclass(frozen=True)
class TrainResult:
    version: str
    out_dir: Path
    history: dict[str, float]  # loss, metrics, val_* of the epoch whose weights were kept
    epochs_run: int
    best_epoch: int  # 1-based
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def strategy(self) -> str:
        return str(self.lineage.get("strategy"))


# --- devices and strategy ---------------------------------------------------------------


def pick_strategy() -> tuple[tf.distribute.Strategy, list[str]]:
    """MultiWorkerMirroredStrategy when this process is one node of several (see `multiworker`);
    MirroredStrategy across GPUs when there are several; the default strategy otherwise."""
    if (nodes := multiworker.active()) is not None:
        return nodes.strategy, nodes.devices
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if len(gpus) > 1:
        strategy: tf.distribute.Strategy = tf.distribute.MirroredStrategy()
        devices = list(strategy.extended.worker_devices)
    else:
        strategy = tf.distribute.get_strategy()
        devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")][:1]
    log.info("training on %s", ", ".join(devices))
    return strategy, devices


def precision_policy(mixed: bool) -> str:
    """float16 compute on GPUs (tensor cores), bfloat16 on CPUs, or plain float32."""
    if not mixed:
        return "float32"
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


def choose_strategy(
    requested: str,
    params: TrainParams,
    *,
    parent: LoadedModel | None,
    incompatible: str | None,
    drift_share: float | None,
    new_fraction: float | None,
) -> tuple[str, str]:
    """(scratch | fine_tune, why): the training strategy and one sentence on the choice."""
    if requested not in STRATEGIES:
        raise SettingsError(f"unknown strategy {requested!r}: choose {', '.join(STRATEGIES)}")
    if requested == SCRATCH:
        return SCRATCH, "from scratch as requested"
    if parent is None:
        return SCRATCH, "from scratch: no production model to start from"
    if incompatible:
        return SCRATCH, f"from scratch: the production model cannot be warm-started ({incompatible})"
    if requested == FINE_TUNE:
        return FINE_TUNE, f"fine-tuning production {parent.version} as requested"
    if drift_share is not None and drift_share >= params.auto_drift_share:
        return SCRATCH, f"from scratch: drift is broad ({drift_share:.0%} of features ≥ {params.auto_drift_share:.0%})"
    if new_fraction is not None and new_fraction >= params.auto_new_data_fraction:
        return SCRATCH, f"from scratch: {new_fraction:.0%} of the rows are new (≥ {params.auto_new_data_fraction:.0%})"
    shown = "unknown" if drift_share is None else f"{drift_share:.0%}"
    new = "unknown" if new_fraction is None else f"{new_fraction:.0%}"
    return FINE_TUNE, f"fine-tuning production {parent.version}: drift share {shown}, new rows {new}"


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
    """`v<UTC date>-<time>-<microseconds><8 random hex>`: sorts by time; two trainings within
    one microsecond (on two workers) share a name with odds of 1 in 4 billion."""
    import secrets

    return (now or datetime.now(UTC)).strftime("v%Y%m%d-%H%M%S-%f") + secrets.token_hex(4)


def train(
    train_path: Path,
    out_dir: Path,
    params: TrainParams,
    *,
    model_name: str,
    parent_version: str | None = None,
    version: str | None = None,
    parent_dir: Path | None = None,
    drift_share: float | None = None,
    test_path: Path | None = None,
) -> TrainResult:
    """Trains on `train_path` and writes the export described in the module docstring into `out_dir`.

    `parent_dir` is the production model's version directory (needed to fine-tune);
    `drift_share` the share of drifted features (for `auto`); `test_path` the original
    test set, stored with the model so later versions are held to it.
    """
    train_path, out_dir = Path(train_path), Path(out_dir)
    frame = read_labelled(train_path)
    family = families.resolve(params.family, frame)
    parent = load_model(parent_dir) if parent_dir else None
    parent_spec = parent.spec if parent else None
    incompatible = None
    if parent is not None:
        if families.from_lineage(parent.lineage).name != family.name:
            incompatible = f"it is a {parent.family}, not a {family.name}"
        else:
            incompatible = family.incompatible(parent_spec, frame)
    strategy_name, why = choose_strategy(
        params.strategy,
        params,
        parent=parent,
        incompatible=incompatible,
        drift_share=drift_share,
        new_fraction=new_rows_fraction(frame, parent.lineage.get("trained_through") if parent else None),
    )
    spec = parent_spec if strategy_name == FINE_TUNE else family.describe(frame)
    fit_rows, val_rows = split_recent(frame, params.validation_fraction)
    rng = np.random.default_rng(params.seed)
    fit = family.examples(fit_rows, spec, rng)
    weights = None
    if params.half_life_days:
        weights = decay_weights(fit_rows[CREATED_AT], params.half_life_days)[fit.rows]
    log.info(
        "training %s %s on %d rows (%d for validation): %s",
        model_name,
        family.name,
        len(frame),
        0 if val_rows is None else len(val_rows),
        why,
    )

    keras.utils.set_random_seed(params.seed)
    strategy, devices = pick_strategy()
    batch = params.batch_size * strategy.num_replicas_in_sync
    policy = precision_policy(params.mixed_precision)
    previous_policy = keras.mixed_precision.global_policy().name
    learning_rate = params.learning_rate
    try:
        keras.mixed_precision.set_global_policy(policy)
        with strategy.scope():
            if strategy_name == FINE_TUNE:
                model = keras.models.load_model(Path(parent_dir) / MODEL_FILE)  # its vocabularies come along
                learning_rate *= params.fine_tune_learning_rate_factor
            else:
                model = family.build(spec, fit.inputs)
            optimizer = keras.optimizers.Adam(learning_rate)
            if policy == "mixed_float16":
                optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
            model.compile(optimizer=optimizer, loss=family.loss, metrics=list(family.metrics), jit_compile=params.xla)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    validation = None
    if val_rows is not None:
        val = family.examples(val_rows, spec, np.random.default_rng(params.seed + 1))
        validation = multiworker.validation_dataset(as_dataset(val.inputs, val.targets, batch, seed=None))
    monitor = "val_loss" if validation is not None else "loss"
    early_stopping = keras.callbacks.EarlyStopping(monitor=monitor, patience=params.patience, restore_best_weights=True)
    callbacks = [
        early_stopping,
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5, patience=max(1, params.patience // 2)),
        EpochLogger(params.epochs),
    ]
    with multiworker.fitting(model):  # several nodes: each fits its shard of the rows
        history = model.fit(
            multiworker.fit_dataset(fit.inputs, fit.targets, batch, params.seed, weights),
            validation_data=validation,
            epochs=params.epochs,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles; Keras' own flag only applies to arrays
            verbose=0,
        )
    epochs_run = len(history.history["loss"])
    best = early_stopping.best_epoch if early_stopping.best_weights is not None else epochs_run - 1
    kept = {name: float(values[best]) for name, values in history.history.items() if name != "learning_rate"}
    model = multiworker.exportable(model)
    if model is None:  # a worker of several: only the chief writes the version
        log.info("trained %s for %d epochs; the chief exports", model_name, epochs_run)
        return TrainResult(version or "", out_dir, kept, epochs_run, best + 1, {})

    version = version or new_version()
    reference_rows = val_rows if val_rows is not None else fit_rows.iloc[-_REFERENCE_ROWS:]
    # The validated metric is the error on exactly the rows of reference_predictions.parquet.
    reference, validation_metric = reference_predictions(model, family, spec, reference_rows)
    names = [t.name for t in model.inputs]
    lineage = {
        "model_name": model_name,
        "version": version,
        "family": family.name,
        "task": family.task,
        "spec": spec,
        "classes": list(spec.get("classes") or []),
        "feature_columns": list(spec.get("feature_columns") or []),
        "inputs": names,
        # The numeric input stays the primary one: clients of numeric-only models see no change.
        "input_name": families.columns.FEATURES if families.columns.FEATURES in names else names[0],
        "output_name": family.output_name,
        "trained_through": trained_through(frame).isoformat(),
        "rows": len(frame),
        "data_hash": data_hash(train_path),
        "params": asdict(params),
        "strategy": strategy_name,
        "strategy_reason": why,
        "learning_rate": learning_rate,
        "precision_policy": policy,
        "global_batch_size": batch,
        "replicas": strategy.num_replicas_in_sync,
        **code_lineage(),
        "tf_version": tf.__version__,
        "devices": devices,
        **multiworker.lineage(),
        "created_at": datetime.now(UTC).isoformat(),
        "parent_version": parent_version or (parent.version if parent else None),
        "feature_importance": permutation_importance(model, family, spec, reference_rows, params.seed),
        "validation": {**validation_metric, "held_out": val_rows is not None},
    }
    export(model, out_dir, lineage, train_path, test_path)
    write_parquet(reference, out_dir / REFERENCE_PREDICTIONS_FILE)
    shown = " ".join(f"{name}={value:.4g}" for name, value in sorted(kept.items()))
    log.info("exported %s %s to %s (kept epoch %d of %d: %s)", model_name, version, out_dir, best + 1, epochs_run, shown)
    return TrainResult(version, out_dir, kept, epochs_run, best + 1, lineage)


