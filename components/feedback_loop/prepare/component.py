"""KFP wrapper of the dataset preparation."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from feedback_loop.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def prepare_dataset(
    feedback: Input[Dataset],
    train: Output[Dataset],
    holdout: Output[Dataset],
    stats: Output[Metrics],
    reference_data_uri: str = "",
    holdout_fraction: float = 0.3,
):
    """Joins the production model's training data with corrected feedback; splits by time.

    The holdout is the most recent `holdout_fraction` of labelled feedback; no row id is
    in both sets (checked). `reference_data_uri` is the production model's
    `training_data.parquet` in the model store, or "" when there is none.

    Returns:
        train: Parquet rows to train on (old data, then older feedback).
        holdout: Parquet rows, the most recent feedback, for candidate vs production.
        stats: Row counts of each part.
    """
    import tempfile
    from pathlib import Path

    from feedback_loop import logs, storage
    from feedback_loop.prepare import core

    logs.setup()
    with tempfile.TemporaryDirectory() as scratch:
        reference = None
        if reference_data_uri:
            reference = Path(scratch) / "reference.parquet"
            reference.write_bytes(storage.read_bytes(reference_data_uri))
        split = core.prepare(reference, Path(feedback.path), Path(train.path), Path(holdout.path), holdout_fraction)
    for name, value in split.metrics().items():
        stats.log_metric(name, value)
