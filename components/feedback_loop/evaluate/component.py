"""KFP wrapper of the evaluation stage: `evaluate_model`."""

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from feedback_loop.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def evaluate_model(
    candidate: Input[Model],
    holdout: Input[Dataset],
    test: Input[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    verdict: Output[Markdown],
    production_model_uri: str = "",
    min_improvement: float = 0.02,
    max_test_regression: float = 0.01,
    max_latency_ratio: float = 1.5,
    require_significant: bool = False,
    confidence_level: float = 0.95,
    top_k: int = 10,
) -> bool:
    """Scores the candidate and the production model on the same rows and decides the blessing, gate by gate.

    Args:
        candidate: The newly trained model version directory.
        holdout: Fresh labelled rows neither model trained on (Parquet).
        test: The original test set (Parquet) for the no-regression gate.
        production_model_uri: Model-store URI of the serving version (file:// or gs://); "" when none serves yet.
        min_improvement: Relative gain of the primary metric over production needed (0.02 = 2 %).
        max_test_regression: Points of the guard metric (accuracy, R², precision@k) the candidate may lose
            on the original test set (0.01 = 1 point).
        max_latency_ratio: Highest candidate / production single-request p95 latency; 0 turns the gate off.
        require_significant: Bless only when the bootstrap confidence interval of the improvement excludes 0.
        confidence_level: Level of the paired bootstrap confidence interval.
        top_k: k of precision@k and recall@k for recommenders.

    Returns:
        metrics: candidate.*, production.*, test.candidate.*, test.production.* metrics; relative_improvement,
            its confidence bounds, p95 latencies, blessed.
        confusion: The candidate's confusion matrix on the holdout (classifiers).
        verdict: The decision, gate by gate, and both models' metrics on the holdout and the original test set.
        Output: Whether the candidate is blessed: it may be deployed.
    """
    import math
    import tempfile
    from pathlib import Path

    from feedback_loop import logs, storage
    from feedback_loop.evaluate import core

    logs.setup()
    gates = core.Gates(
        min_improvement=min_improvement,
        max_test_regression=max_test_regression,
        max_latency_ratio=max_latency_ratio,
        require_significant=require_significant,
        confidence_level=confidence_level,
        top_k=top_k,
    )
    with tempfile.TemporaryDirectory() as tmp:
        production_dir = storage.download_dir(production_model_uri, Path(tmp)) if production_model_uri else None
        result = core.evaluate(Path(candidate.path), production_dir, Path(holdout.path), gates, Path(test.path))
    scored = {
        "candidate": result.candidate,
        "production": result.production or {},
        "test.candidate": result.candidate_test or {},
        "test.production": result.production_test or {},
        "latency_ms": result.latency_ms or {},
    }
    for prefix, values in scored.items():
        for name, value in values.items():
            if not math.isnan(value):  # roc_auc is undefined on a one-class holdout
                metrics.log_metric(f"{prefix}.{name}", value)
    if result.relative_improvement is not None:
        metrics.log_metric("relative_improvement", result.relative_improvement)
    if result.improvement_ci is not None:
        metrics.log_metric("relative_improvement.ci_low", result.improvement_ci[0])
        metrics.log_metric("relative_improvement.ci_high", result.improvement_ci[1])
    metrics.log_metric("blessed", float(result.blessed))
    if result.classes:
        confusion.log_confusion_matrix(result.classes, result.confusion_matrix)
    Path(verdict.path).parent.mkdir(parents=True, exist_ok=True)
    Path(verdict.path).write_text(result.to_markdown())
    verdict.metadata["verdict"] = result.to_dict()
    return result.blessed
