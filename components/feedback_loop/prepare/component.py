"""KFP wrapper of the dataset preparation."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from feedback_loop.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def prepare_dataset(
    feedback: Input[Dataset],
    train: Output[Dataset],
    holdout: Output[Dataset],
    test: Output[Dataset],
    stats: Output[Metrics],
    reference_data_uri: str = "",
    production_model_uri: str = "",
    holdout_fraction: float = 0.3,
    window: str = "expanding",
    window_days: float = 90.0,
    split: str = "recent_feedback",
    holdout_from: str = "",
    log_level: str = "INFO",
):
    """Joins the production model's training data with corrected feedback; splits by time.

    The holdout is the most recent `holdout_fraction` of labelled feedback (of all rows with
    `split="time_series"`); no row id is in training and in the holdout or test set (checked).

    Args:
        feedback: Parquet of recent predictions with their feedback.
        reference_data_uri: The production model's `training_data.parquet` in the model store, or "".
        production_model_uri: The production version directory; its `test_data.parquet`, when
            present, is the original test set carried forward. "" when none serves.
        holdout_fraction: Share of the newest rows held out for candidate vs production.
        window: expanding (all history), sliding (last `window_days`), or weighted (rows weighted by age with `half_life_days`).
        window_days: Length of a sliding window, in days before the holdout starts.
        split: recent_feedback (the holdout is one in two of the newest feedback rows), time_series for time-ordered data, or random
            (a seeded draw of the feedback, for rows that do not depend on time).
        holdout_from: decide_retrain's: with recent_feedback, the holdout is drawn from the answers given
            from this time on (the ones the performance rule found worse), when they are enough; "" none.
        log_level: DEBUG, INFO, WARNING or ERROR; every process honours it.

    Returns:
        train: Parquet rows to train on (old data, then older feedback, within the window).
        holdout: Parquet rows, the most recent, for candidate vs production.
        test: Parquet rows of the original test set (this holdout when production has none).
        stats: Row counts of each part, rows dropped by the window, whether the test set was carried.
    """
    import tempfile
    from pathlib import Path

    from feedback_loop import logs, storage
    from feedback_loop.layout import TEST_DATA_FILE
    from feedback_loop.prepare import core

    logs.setup(log_level)
    with tempfile.TemporaryDirectory() as scratch:
        reference = original_test = None
        if reference_data_uri:
            reference = Path(scratch) / "reference.parquet"
            reference.write_bytes(storage.read_bytes(reference_data_uri))
        test_uri = storage.join(production_model_uri, TEST_DATA_FILE) if production_model_uri else ""
        if test_uri and storage.exists(test_uri):
            original_test = Path(scratch) / "test.parquet"
            original_test.write_bytes(storage.read_bytes(test_uri))
        split_info = core.prepare(
            reference,
            Path(feedback.path),
            Path(train.path),
            Path(holdout.path),
            holdout_fraction,
            test_out=Path(test.path),
            original_test=original_test,
            window=window,
            window_days=window_days,
            split=split,
            holdout_from=holdout_from,
        )
    for name, value in split_info.metrics().items():
        stats.log_metric(name, value)
