"""KFP wrapper of the feedback extraction."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from feedback_loop.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def extract_feedback(
    feedback: Output[Dataset],
    stats: Output[Metrics],
    model_name: str,
    days_back: int = 30,
    since: str = "",
) -> NamedTuple("FeedbackOutputs", [("rows", int), ("feedback_count", int), ("negative_count", int), ("satisfaction_rate", float)]):
    """Extracts the last `days_back` days of predictions with their latest feedback to Parquet.

    Reads PostgreSQL through `DATABASE_URL` (a Kubernetes Secret); only consenting users'
    rows; the corrected label becomes `label`. Rows the model was already trained on
    (before `since`, an ISO timestamp) are left out.

    Returns:
        feedback: Parquet, one row per prediction, feature columns from the JSONB features.
        stats: Feedback count, negatives, satisfaction rate, rows, mean confidence.
        rows: Predictions in the window.
        feedback_count: Predictions with user feedback.
        negative_count: Feedback saying the prediction was wrong.
        satisfaction_rate: Share of positive feedback (0.0 when there is none).
    """
    import os
    from collections import namedtuple

    from feedback_loop import logs
    from feedback_loop.feedback import core, store

    logs.setup()
    conn = store.connect(os.environ.get("DATABASE_URL"))
    try:
        result = core.extract(conn, core.Window.of(model_name, days_back, since), feedback.path)
    finally:
        conn.close()
    for name, value in result.metrics().items():
        stats.log_metric(name, value)
    outputs = namedtuple("FeedbackOutputs", ["rows", "feedback_count", "negative_count", "satisfaction_rate"])
    return outputs(result.rows, result.feedback_count, result.negative_count, result.satisfaction_rate)
