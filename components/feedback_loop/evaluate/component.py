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
    guard: Output[Dataset],
    production_model_uri: str = "",
    min_improvement: float = 0.02,
    max_test_regression: float = 0.01,
    max_latency_ratio: float = 1.5,
    latency_margin_ms: float = 2.0,
    require_significant: bool = True,
    confidence_level: float = 0.95,
    guard_retire_alpha: float = 0.05,
    guard_retire_margin: float = 0.02,
    top_k: int = 10,
    log_level: str = "INFO",
) -> bool:
    """Scores the candidate and the production model on the same rows and decides the blessing, gate by gate.

    The guard set (`test`) is retired, and the holdout takes its place, when production itself
    is significantly worse on the holdout than on it: the concept moved. Each gate reports its
    figure, threshold, confidence interval and sample size.

    Args:
        candidate: The newly trained model version directory.
        holdout: Fresh labelled rows neither model trained on (Parquet).
        test: The guard set (Parquet) for the no-regression gate: production's, carried from version to version.
        production_model_uri: Model-store URI of the serving version (file:// or gs://); "" when none serves yet.
        min_improvement: Relative gain of the primary metric over production needed (0.02 = 2 %).
        max_test_regression: Points of the guard metric (accuracy, R², precision@k) the candidate may lose
            on the guard set (0.01 = 1 point).
        max_latency_ratio: Latency gate: refuse a candidate slower than this multiple of production (median of
            paired ratios over interleaved rounds) and by more than latency_margin_ms; 0 turns the gate off.
        latency_margin_ms: Latency gate: milliseconds per request the candidate may be slower whatever the ratio
            (a ratio of two sub-millisecond models is noise).
        require_significant: Bless only when the paired bootstrap confidence interval of the improvement lies above 0.
        confidence_level: Level of the paired bootstrap confidence interval.
        guard_retire_alpha: Level of the one-sided test that production's error is higher on the fresh holdout
            than on the guard set.
        guard_retire_margin: Retire the guard set when that increase is above this margin at that level (points
            of error, 0.02 = 2 points; for regressors a share of the guard's MSE); the fresh holdout replaces it.
        top_k: k of precision@k and recall@k for recommenders.
        log_level: DEBUG, INFO, WARNING or ERROR; every process honours it.

    Returns:
        metrics: candidate.*, production.*, test.candidate.*, test.production.* (on the guard judged on),
            relative_improvement and its bounds, latency.*, guard.*, and gate.<name>.figure/threshold/ci_low/
            ci_high/n/passed per gate; blessed.
        confusion: The candidate's confusion matrix on the holdout (classifiers).
        verdict: The decision, gate by gate with figure, threshold, interval and size; both models' metrics.
        guard: The guard set the candidate was judged on (Parquet): the carried one, or this holdout when it
            replaced a retired guard; deploy_canary publishes it with the version.
        Output: Whether the candidate is blessed: it may be deployed.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from feedback_loop import logs, storage
    from feedback_loop.evaluate import core

    logs.setup(log_level)
    gates = core.Gates(
        min_improvement=min_improvement,
        max_test_regression=max_test_regression,
        max_latency_ratio=max_latency_ratio,
        latency_margin_ms=latency_margin_ms,
        require_significant=require_significant,
        confidence_level=confidence_level,
        guard_retire_alpha=guard_retire_alpha,
        guard_retire_margin=guard_retire_margin,
        top_k=top_k,
    )
    with tempfile.TemporaryDirectory() as tmp:
        production_dir = storage.download_dir(production_model_uri, Path(tmp)) if production_model_uri else None
        result = core.evaluate(Path(candidate.path), production_dir, Path(holdout.path), gates, Path(test.path))
    for name, value in result.metrics().items():  # never NaN: undefined figures are left out
        metrics.log_metric(name, value)
    if result.classes:
        confusion.log_confusion_matrix(result.classes, result.confusion_matrix)
    Path(verdict.path).parent.mkdir(parents=True, exist_ok=True)
    Path(verdict.path).write_text(result.to_markdown())
    verdict.metadata["verdict"] = result.to_dict()
    Path(guard.path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(core.chosen_guard(result, Path(holdout.path), Path(test.path)), guard.path)
    guard.metadata.update(
        {"source": result.guard_source, "rows": result.test_rows or 0, "retired": result.guard_retired}
    )
    return result.blessed
