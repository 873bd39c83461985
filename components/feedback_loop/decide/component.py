"""KFP wrapper of the retrain decision."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output, OutputPath

from feedback_loop.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def decide_retrain(
    stats: Input[Metrics],
    feedback: Input[Dataset],
    drift_metrics: Input[Metrics],
    decision: Output[Markdown],
    holdout_from: OutputPath(str),
    model_name: str,
    is_drift: bool,
    production_model_uri: str = "",
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
    rules: list[str] = ["performance", "first_model"],  # noqa: B006
    performance_margin: float = 0.05,
    performance_alpha: float = 0.05,
    baseline_days: float = 2.0,
    run_name: str = "",
    log_level: str = "INFO",
) -> bool:
    """Decides whether to retrain from the feedback statistics, drift and the rollout in progress.

    By default retrains when it pays: production's error on fresh feedback is significantly
    worse than the error it was validated at (its lineage), by more than a margin; or when
    no model serves and enough labelled rows exist. After an attempt that blessed nothing
    (read from `retrain_runs`), only newer answers count as evidence. The first users'
    absolute rules (user_feedback, error_rate, latency, keywords, new_data, input_drift,
    model_age) and prediction_drift, residual_drift can be enabled by name; `force`
    always retrains. Never while a canary rollout is in progress. The decision is also a
    row of `retrain_runs` when `DATABASE_URL` is set.

    Args:
        stats: extract_feedback's metrics (feedback_count, error_rate, latency_ratio, ...).
        feedback: extract_feedback's Parquet: the fresh answers the performance rule judges.
        drift_metrics: detect_drift's metrics (prediction and residual drift).
        model_name: Name of the served model (and of its InferenceService).
        is_drift: detect_drift's verdict.
        production_model_uri: Model-store URI of the serving version (its lineage holds the
            validated error); "" when none serves.
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
        rules: The enabled retrain rules: performance and first_model by default; any registered rule may be named.
        performance_margin: performance: retrain when production's error on fresh feedback exceeds its
            validated error by more than this share of it (0.05 = 5 % worse).
        performance_alpha: performance: level of the one-sided test that the fresh error is above the
            validated error plus the margin.
        baseline_days: performance: production's baseline pools its validated error with its own
            answers over its first this many days of service, once they are over (a validation split
            alone is too few rows); 0: the validated error alone.
        run_name: The pipeline run, recorded with the decision.
        log_level: DEBUG, INFO, WARNING or ERROR; every process honours it.

    Returns:
        decision: The evidence for the payoff (validated vs fresh error, interval, sizes, p-value),
            the rules that fired with their figures, then every rule; the whole decision in its metadata.
        holdout_from: When the performance rule fired, where the answers it found worse begin (ISO
            time): prepare_dataset draws the holdout from them. "" otherwise.
        Output: Whether the pipeline goes on to train.
    """
    import logging
    import os

    from feedback_loop import logs
    from feedback_loop.decide import core, gather

    logs.setup(log_level)
    dsn = os.environ.get("DATABASE_URL") or None
    signals = gather.signals(
        stats.metadata, is_drift=is_drift, rollout_in_progress=rollout_in_progress, force=force,
        drift=drift_metrics.metadata, feedback_path=feedback.path, production_model_uri=production_model_uri,
        model_name=model_name, dsn=dsn, baseline_days=baseline_days,
    )
    policy = core.Policy.of(locals())  # the parameters carry the policy's names
    result = core.decide(signals, policy)
    with open(decision.path, "w") as handle:
        handle.write(result.to_markdown())
    decision.metadata["decision"] = result.to_dict()
    with open(holdout_from, "w") as handle:
        handle.write(result.holdout_from)
    logging.getLogger("feedback_loop.decide").info("retrain: %s; %s", result.retrain, "; ".join(result.reasons))
    if dsn:
        core.record(dsn, model_name, run_name, signals, result)
    return result.retrain
