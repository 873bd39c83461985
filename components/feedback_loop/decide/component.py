"""KFP wrapper of the retrain decision."""

from kfp import dsl
from kfp.dsl import Input, Markdown, Metrics, Output

from feedback_loop.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def decide_retrain(
    stats: Input[Metrics],
    decision: Output[Markdown],
    model_name: str,
    is_drift: bool,
    rollout_in_progress: bool = False,
    force: bool = False,
    min_feedback: int = 100,
    min_negative: int = 20,
    min_positive_rate: float = 0.70,
    max_error_rate: float = 0.05,
    max_recent_latency_ratio: float = 1.5,
    max_keyword_hits: int = 10,
    min_new_data_share: float = 0.20,
    max_model_age_days: float = 90.0,
    rules: list[str] = ["user_feedback", "error_rate", "latency", "keywords", "new_data", "input_drift", "model_age"],  # noqa: B006
    run_name: str = "",
) -> bool:
    """Decides whether to retrain from the feedback statistics, drift and the rollout in progress.

    Retrains when any enabled rule fires: unhappy users (enough feedback, enough negatives
    and low satisfaction, together), a high recent error rate, slow serving against the
    baseline, keyword hits in negative comments, enough new data, input drift, an old
    model; or when forced. Never while a canary rollout is in progress. The decision is
    also a row of `retrain_runs` when `DATABASE_URL` is set.

    Args:
        stats: extract_feedback's metrics (feedback_count, error_rate, latency_ratio, ...).
        model_name: Name of the served model (and of its InferenceService).
        is_drift: detect_drift's verdict.
        rollout_in_progress: Whether a canary still shares the traffic.
        force: Retrain whatever the signals say (still not during a rollout).
        min_feedback: Fewest answers the feedback rules judge on (user_feedback, error_rate, new_data).
        min_negative: user_feedback: fewest negative answers.
        min_positive_rate: user_feedback: retrain when satisfaction is below this share.
        max_error_rate: error_rate: retrain when the negative share of the recent answers is above this.
        max_recent_latency_ratio: latency: retrain when the last 50 predictions' mean latency is above
            this multiple of the baseline.
        max_keyword_hits: keywords: retrain when more negative comments than this name a keyword.
        min_new_data_share: new_data: retrain when the new labelled rows reach this share of the training data.
        max_model_age_days: model_age: retrain a model older than this many days.
        rules: The enabled retrain rules (every registered rule by default).
        run_name: The pipeline run, recorded with the decision.

    Returns:
        decision: The rules that fired with their figures, then every rule (enabled, fired,
            figures); the whole decision in its metadata.
        Output: Whether the pipeline goes on to train.
    """
    import logging
    import os

    from feedback_loop import logs
    from feedback_loop.decide import core

    logs.setup()
    signals = core.Signals.from_metrics(stats.metadata, is_drift=is_drift, rollout_in_progress=rollout_in_progress, force=force)
    policy = core.Policy.of(locals())  # the parameters carry the policy's names
    result = core.decide(signals, policy)
    with open(decision.path, "w") as handle:
        handle.write(result.to_markdown())
    decision.metadata["decision"] = result.to_dict()
    logging.getLogger("feedback_loop.decide").info("retrain: %s; %s", result.retrain, "; ".join(result.reasons))
    if os.environ.get("DATABASE_URL"):
        core.record(os.environ["DATABASE_URL"], model_name, run_name, signals, result)
    return result.retrain
