"""KFP wrapper of the training stage: `train_model`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from feedback_loop.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_model(
    train: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    model_name: str,
    epochs: int = 8,
    learning_rate: float = 0.001,
    batch_size: int = 64,
    seed: int = 42,
    parent_version: str = "",
) -> str:
    """Trains a Keras classifier (CNN for images, MLP for tabular rows) and exports it for KServe.

    Args:
        train: Training rows (Parquet, the shared dataset contract).
        model_name: Name of the served model, recorded in the lineage.
        epochs: Most epochs to run; early stopping on the newest rows may end sooner.
        learning_rate: Adam's initial learning rate (halved on plateaus).
        batch_size: Rows per step and per GPU.
        seed: Seed of weights, shuffling and dropout.
        parent_version: Version this model replaces ("" for the first model).

    Returns:
        model: Version directory: model.keras, saved_model/1/ (TF Serving), lineage.json, training_data.parquet.
        metrics: Loss and accuracy (training and validation) of the kept epoch, and the epochs run.
        Output: The new model version, e.g. v20240101-120000.
    """
    from pathlib import Path

    from feedback_loop import logs
    from feedback_loop.train import core

    logs.setup()
    params = core.TrainParams(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed)
    result = core.train(
        Path(train.path), Path(model.path), params, model_name=model_name, parent_version=parent_version or None
    )
    for name, value in result.history.items():
        metrics.log_metric(name, value)
    metrics.log_metric("epochs_run", result.epochs_run)
    model.metadata.update({key: result.lineage[key] for key in ("version", "family", "classes", "data_hash")})
    return result.version
