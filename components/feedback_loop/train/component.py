"""KFP wrapper of the training stage: `train_model`."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from feedback_loop.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_model(
    train: Input[Dataset],
    test: Input[Dataset],
    drift_metrics: Input[Metrics],
    model: Output[Model],
    metrics: Output[Metrics],
    model_name: str,
    epochs: int = 8,
    learning_rate: float = 0.001,
    batch_size: int = 64,
    seed: int = 42,
    parent_version: str = "",
    production_model_uri: str = "",
    family: str = "auto",
    strategy: str = "auto",
    auto_drift_share: float = 0.5,
    auto_new_data_fraction: float = 0.5,
    window: str = "expanding",
    half_life_days: float = 30.0,
    mixed_precision: bool = False,
    xla: bool = False,
    workers: int = 1,
    model_store_uri: str = "file://local_outputs/model-store",
    namespace: str = "default",
    node_selector: dict = {},  # noqa: B006 (KFP reads the literal into the spec; the body never mutates it)
    tolerations: list = [],  # noqa: B006 (as above)
    run_name: str = "",
    accelerator_type: str = "",
    accelerator_count: int = 0,
    log_level: str = "INFO",
) -> str:
    """Trains a Keras model of the chosen family and exports it for KServe with its lineage.

    Args:
        train: Training rows (Parquet, the shared dataset contract).
        test: The original test set, stored with the model for the next versions' no-regression gate.
        drift_metrics: The drift stage's metrics; `share_drifted` steers the `auto` strategy.
        model_name: Name of the served model (and of its InferenceService).
        epochs: Most epochs to run; early stopping on the newest rows may end sooner.
        learning_rate: Adam's initial learning rate (halved on plateaus; scaled down to fine-tune).
        batch_size: Rows per step and per GPU (the global batch grows with the GPUs).
        seed: Seed of every random choice (drift's row sample, weights, shuffling, dropout, sampled negatives).
        parent_version: Version this model replaces ("" for the first model).
        production_model_uri: Model-store URI of the serving version, the warm start of a fine-tune.
        family: auto, image_classifier, tabular_classifier, tabular_regressor, recommender, or module:function.
        strategy: scratch, fine_tune, or auto (from scratch when drift is broad or the new data large).
        auto_drift_share: Share of drifted features from which `auto` trains from scratch.
        auto_new_data_fraction: Share of rows newer than production from which `auto` trains from scratch.
        window: expanding (all history), sliding (last `window_days`), or weighted (rows weighted by age with `half_life_days`).
        half_life_days: Age at which a row counts half, for the weighted window.
        mixed_precision: float16 (GPU) or bfloat16 (CPU) compute with float32 weights.
        xla: Compile the training step with XLA.
        workers: Training nodes: 1 trains in the task's own pod; more makes the task launch a Kubeflow Trainer
            TrainJob of that many nodes (MultiWorkerMirroredStrategy on the feedback-loop-tensorflow runtime), each
            with the task's accelerators, node selector and tolerations.
        model_store_uri: Model store root (file:// or gs://). With workers > 1, the nodes read the rows and
            write the version under its .trainjobs/ folder.
        namespace: Kubernetes namespace of the InferenceService. The TrainJob (workers > 1) runs there too.
        node_selector: Node labels the training pod must match (JSON object). With workers > 1, every node's.
        tolerations: Tolerations of the training pod (JSON list of Kubernetes tolerations). With workers > 1, every node's.
        run_name: The pipeline run; names its TrainJob, so a retried task follows the job it started.
        accelerator_type: The accelerator each TrainJob node gets (the pipeline's compile option).
        accelerator_count: How many of it per TrainJob node; 0: none.
        log_level: DEBUG, INFO, WARNING or ERROR; every process honours it.

    Returns:
        model: Version directory: model.keras, saved_model/1/ (TF Serving), lineage.json, training_data.parquet,
            reference_predictions.parquet, test_data.parquet.
        metrics: Loss and metrics (training and validation) of the kept epoch, the epochs run, fine-tuned or not.
        Output: The new model version, e.g. v20240101-120000.
    """
    import tempfile
    from pathlib import Path

    from feedback_loop import logs, storage
    from feedback_loop.train import core

    logs.setup(log_level, export=True)
    params = core.TrainParams(
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
        family=family,
        strategy=strategy,
        auto_drift_share=auto_drift_share,
        auto_new_data_fraction=auto_new_data_fraction,
        half_life_days=half_life_days if window == "weighted" else None,
        mixed_precision=mixed_precision,
        xla=xla,
    )
    share = drift_metrics.metadata.get("share_drifted")
    if workers > 1:  # the task becomes a launcher: the nodes train, the chief writes the version
        from dataclasses import asdict

        from feedback_loop.train import launcher

        result = launcher.train_on_cluster(
            train_path=Path(train.path), test_path=Path(test.path), out_dir=Path(model.path), params=asdict(params),
            model_name=model_name, version=core.new_version(), model_store_uri=model_store_uri, namespace=namespace,
            run_name=run_name, workers=workers, parent_version=parent_version, production_model_uri=production_model_uri,
            drift_share=float(share) if share is not None else None, accelerator_type=accelerator_type,
            accelerator_count=accelerator_count, node_selector=node_selector, tolerations=tolerations,
        )
    else:
        with tempfile.TemporaryDirectory() as scratch:
            # Only a warm start (or the choice of one) needs the production model's files.
            wanted = production_model_uri and strategy != "scratch"
            parent_dir = storage.download_dir(production_model_uri, Path(scratch)) if wanted else None
            result = core.train(
                Path(train.path),
                Path(model.path),
                params,
                model_name=model_name,
                parent_version=parent_version or None,
                parent_dir=parent_dir,
                drift_share=float(share) if share is not None else None,
                test_path=Path(test.path),
            )
    for name, value in result.history.items():
        metrics.log_metric(name, value)
    metrics.log_metric("epochs_run", result.epochs_run)
    metrics.log_metric("fine_tuned", float(result.strategy == core.FINE_TUNE))
    keys = ("version", "family", "classes", "data_hash", "strategy", "strategy_reason")
    model.metadata.update({key: result.lineage[key] for key in keys})
    return result.version
