"""KFP wrappers of the feedback store: the extraction and the retention purge."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Output

from feedback_loop.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def extract_feedback(
    feedback: Output[Dataset],
    stats: Output[Metrics],
    model_name: str,
    days_back: int = 30,
    since: str = "",
    reference_data_uri: str = "",
    keywords: list[str] = ["flou", "mauvais", "incorrect", "wrong", "blurry"],  # noqa: B006 (a spec literal)
    known_labels: list[str] = [],  # noqa: B006
    error_rate_days: int = 7,
    latency_baseline_ms: float = 0.0,
    max_feature_columns: int = 1000,
    log_level: str = "INFO",
) -> NamedTuple("FeedbackOutputs", [("rows", int), ("feedback_count", int), ("negative_count", int), ("satisfaction_rate", float)]):
    """Extracts the last `days_back` days of predictions with their latest feedback to Parquet.

    Reads PostgreSQL through `DATABASE_URL` (a Kubernetes Secret); only consenting users'
    rows; user ids become an HMAC under `FEEDBACK_HMAC_KEY` (a Secret; without it they are
    left out); the corrected label becomes `label`. Rows the model was already trained on
    (before `since`, an ISO timestamp) are left out; unusable rows are counted by reason. A
    "wrong" without a correction is a negative answer like any other; it only gives no label.

    Args:
        model_name: Name of the served model (and of its InferenceService).
        days_back: Length of the feedback window, in days, ending now.
        since: Newest timestamp the production model was trained on ("" when none).
        reference_data_uri: The production model's training data, for the new-data share.
        keywords: Words that, in a negative comment, count as a keyword hit.
        known_labels: The labels a prediction or correction may name (empty: any).
        error_rate_days: Length of the sliding window of the error rate, in days.
        latency_baseline_ms: Latency baseline in ms; 0 takes the window's earlier predictions.
        max_feature_columns: Most feature columns the extract keeps (JSONB keys, the most frequent first); the other keys are left out and counted.
        log_level: DEBUG, INFO, WARNING or ERROR; every process honours it.

    Returns:
        feedback: Parquet, one row per usable prediction, feature columns from the JSONB features.
        stats: Every statistic the retrain decision reads (feedback_count, negative_count,
            satisfaction_rate, recent_satisfaction_rate, error_rate, latency_ratio,
            keyword_hits, new_data_share, days_since_training, ...), excluded_<reason> counts and
            unlabelled_<reason> counts (negative answers without a usable correction),
            dropped_feature_keys (keys beyond max_feature_columns).
        rows: Usable predictions in the window.
        feedback_count: Predictions with usable user feedback.
        negative_count: Feedback saying the prediction was wrong.
        satisfaction_rate: Share of positive feedback (0.0 when there is none).
    """
    import os
    from collections import namedtuple

    from feedback_loop import logs
    from feedback_loop.feedback import core
    from feedback_loop.feedback.pseudonyms import HMAC_KEY_ENV, Pseudonymizer
    from feedback_loop.feedback.stats import Options

    logs.setup(log_level)
    options = Options(
        keywords=tuple(keywords),
        known_labels=tuple(known_labels),
        error_rate_days=error_rate_days,
        latency_baseline_ms=latency_baseline_ms,
        training_rows=core.training_rows(reference_data_uri),
    )
    window = core.Window.of(model_name, days_back, since)
    pseudonymizer = Pseudonymizer(os.environ.get(HMAC_KEY_ENV) or None)  # the Secret's key, read at the edge
    result = core.extract(
        os.environ.get("DATABASE_URL"), window, feedback.path, options, pseudonymizer=pseudonymizer,
        max_feature_columns=max_feature_columns,
    )
    for name, value in result.metrics().items():
        stats.log_metric(name, value)
    outputs = namedtuple("FeedbackOutputs", ["rows", "feedback_count", "negative_count", "satisfaction_rate"])
    return outputs(result.rows, result.feedback_count, result.negative_count, result.satisfaction_rate)


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def purge_feedback(record: Output[Markdown], retention_days: int = 180, inputs_uri: str = "", log_level: str = "INFO") -> int:
    """Deletes predictions and feedback older than `retention_days` (personal data, GDPR).

    A prediction's feedback goes with it, and its raw input when it lies under `inputs_uri`.
    Run history and deployments hold no personal data and are kept. Reads `DATABASE_URL`
    (a Kubernetes Secret).

    Args:
        retention_days: How long predictions and feedback are kept, in days.
        inputs_uri: Where the serving app stores raw inputs (file:// or gs://): the retention purge deletes expired ones under it; "" deletes none.
        log_level: DEBUG, INFO, WARNING or ERROR; every process honours it.

    Returns:
        record: How many rows of each table (and raw inputs) were deleted, and the cut-off.
        Output: How many rows were deleted in all.
    """
    import os

    from feedback_loop import logs
    from feedback_loop.feedback import store

    logs.setup(log_level)
    conn = store.connect(os.environ.get("DATABASE_URL"))
    try:
        counts = store.purge(conn, retention_days, inputs_uri=inputs_uri)
    finally:
        conn.close()
    with open(record.path, "w") as handle:
        handle.write(f"# Feedback purge\n\nOlder than {retention_days} days: " + ", ".join(f"{n} {t}" for t, n in counts.items()) + " deleted.\n")
    return counts["predictions"] + counts["feedback"]
