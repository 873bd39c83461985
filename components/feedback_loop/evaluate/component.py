"""KFP wrapper of the evaluation stage: `evaluate_model`."""

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from feedback_loop.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def evaluate_model(
    candidate: Input[Model],
    holdout: Input[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    verdict: Output[Markdown],
    production_model_uri: str = "",
    min_improvement: float = 0.02,
) -> bool:
    """Scores the candidate and the production model on the same holdout rows and decides the blessing.

    Args:
        candidate: The newly trained model version directory.
        holdout: Labelled rows neither model trained on (Parquet).
        production_model_uri: Model-store URI of the serving version (file:// or gs://); "" when none serves yet.
        min_improvement: Relative accuracy gain over production needed for a blessing (0.02 = 2 %).

    Returns:
        metrics: candidate.* and production.* accuracy, precision, recall, f1, roc_auc, log_loss; relative_improvement.
        confusion: The candidate's confusion matrix on the holdout.
        verdict: The decision, one reason per gate, and both models' metrics.
        Output: Whether the candidate is blessed: it may be deployed.
    """
    import math
    import tempfile
    from pathlib import Path

    from feedback_loop import logs, storage
    from feedback_loop.evaluate import core

    logs.setup()
    gates = core.Gates(min_improvement=min_improvement)
    with tempfile.TemporaryDirectory() as tmp:
        production_dir = storage.download_dir(production_model_uri, Path(tmp)) if production_model_uri else None
        result = core.evaluate(Path(candidate.path), production_dir, Path(holdout.path), gates)
    scored = {"candidate": result.candidate, "production": result.production or {}}
    for prefix, values in scored.items():
        for name, value in values.items():
            if not math.isnan(value):  # roc_auc is undefined on a one-class holdout
                metrics.log_metric(f"{prefix}.{name}", value)
    if result.relative_improvement is not None:
        metrics.log_metric("relative_improvement", result.relative_improvement)
    metrics.log_metric("blessed", float(result.blessed))
    confusion.log_confusion_matrix(result.classes, result.confusion_matrix)
    Path(verdict.path).parent.mkdir(parents=True, exist_ok=True)
    Path(verdict.path).write_text(result.to_markdown())
    verdict.metadata["verdict"] = result.to_dict()
    return result.blessed
