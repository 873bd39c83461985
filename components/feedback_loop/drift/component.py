"""KFP wrapper of the drift test."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Output

from feedback_loop.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def detect_drift(
    current: Input[Dataset],
    reference_uri: str,
    report: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
    p_value: float = 0.05,
    min_rows: int = 30,
) -> bool:
    """Tests each input feature of `current` against the production model's training data.

    Numeric features get the Kolmogorov-Smirnov test, categorical ones the chi-squared
    test (alibi-detect), Bonferroni-corrected across features. Not tested (no drift) when
    there is no production model yet (`reference_uri` is "") or `current` has fewer than
    `min_rows` rows.

    Args:
        current: Parquet of the recent predictions (the feedback extract).
        reference_uri: Model-store URI (file:// or gs://) of the production model's
            training data, or "" when no model is in production.
        p_value: Significance level before the correction for the number of features.
        min_rows: Fewest current rows worth testing.

    Returns:
        report: Verdict, per-feature statistics and reference-vs-current histograms.
        summary: Verdict and the most significant drifted features.
        metrics: Share and count of drifted features, p-value and statistic per feature.
        Whether any feature drifted.
    """
    from feedback_loop import logs
    from feedback_loop.drift import core

    logs.setup()
    result = core.run(current.path, reference_uri, p_value=p_value, min_rows=min_rows)
    core.write_html(result, report.path)
    core.write_markdown(result, summary.path)
    for name, value in result.metrics().items():
        metrics.log_metric(name, value)
    return result.is_drift
