"""KFP wrapper of the retrain decision."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from feedback_loop.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def decide_retrain(
    decision: Output[Markdown],
    model_name: str,
    feedback_count: int,
    negative_count: int,
    satisfaction_rate: float,
    is_drift: bool,
    rollout_in_progress: bool = False,
    force: bool = False,
    min_feedback: int = 100,
    min_negative: int = 20,
    min_positive_rate: float = 0.70,
    run_name: str = "",
) -> bool:
    """Decides whether to retrain from feedback, drift and the rollout in progress.

    Rules: enough unhappy feedback (count, negatives and satisfaction together), input
    drift, or `force`. No retrain while a canary rollout is in progress. The decision is
    also a row of `retrain_runs` when `DATABASE_URL` is set.

    Returns:
        decision: Every rule, whether it fired and its figures; the reasons in its metadata.
        Output: Whether the pipeline goes on to train.
    """
    import os

    from feedback_loop.decide import core

    signals = core.Signals(feedback_count, negative_count, satisfaction_rate, is_drift, rollout_in_progress, force)
    result = core.decide(signals, core.Policy(min_feedback, min_negative, min_positive_rate))
    with open(decision.path, "w") as handle:
        handle.write(result.to_markdown())
    decision.metadata["decision"] = result.to_dict()
    print(f"retrain: {result.retrain}; " + "; ".join(result.reasons))
    if os.environ.get("DATABASE_URL"):
        core.record(os.environ["DATABASE_URL"], model_name, run_name, signals, result)
    return result.retrain
