"""KFP wrapper of the drift test."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from feedback_loop.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def detect_drift(
    current: Input[Dataset],
    reference_uri: str,
    report: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
    verdict_json: Output[Artifact],
    drift_p_value: float = 0.05,
    min_drift_rows: int = 30,
    drift_correction: str = "bonferroni",
    drift_engine: str = "alibi",
    drift_share_threshold: float = 0.0,
    drift_effect_threshold: float = 0.10,
    drift_max_rows: int = 1_000_000,
    seed: int = 42,
    drift_feature_types: dict = {},  # noqa: B006 (KFP reads the default; the body never mutates it)
    log_level: str = "INFO",
) -> bool:
    """Tests each input feature of `current` against the production model's training data.

    Numeric features get the Kolmogorov-Smirnov test, categorical ones the chi-squared
    test, corrected across features; a feature drifts when it is significant and its effect
    size (normalized Wasserstein, Jensen-Shannon distance) is above the threshold. Also reports data quality against the reference and
    prediction and residual drift against the production model's validation predictions
    (`reference_predictions.parquet` beside its training data). Not tested (no drift) when
    there is no production model yet (`reference_uri` is "") or `current` has fewer than
    `min_drift_rows` rows.

    Args:
        current: Parquet of the recent predictions (the feedback extract).
        reference_uri: Model-store URI (file:// or gs://) of the production model's
            training data, or "" when no model is in production.
        drift_p_value: Significance level before the correction for the number of features.
        min_drift_rows: Fewest current rows (and labelled rows, for residual drift) worth testing.
        drift_correction: "bonferroni" or "fdr" (Benjamini-Hochberg).
        drift_engine: "alibi" (alibi-detect) or "scipy"; the same tests and p-values.
        drift_share_threshold: Dataset drift when the share of drifted features is above this; 0: any.
        drift_effect_threshold: A feature drifts only when its effect size is above this too: Wasserstein
            distance / reference std (numbers), Jensen-Shannon distance (categories).
        drift_max_rows: Most rows tested per side; above it a seeded uniform sample (recorded in the report).
        seed: Seed of every random choice (drift's row sample, weights, shuffling, dropout, sampled negatives).
        drift_feature_types: Declared feature types, name -> "numeric", "categorical" or "ignore".
        log_level: DEBUG, INFO, WARNING or ERROR; every process honours it.

    Returns:
        report: Verdict, per-feature statistics and reference-vs-current charts, data quality, prediction drift.
        summary: Verdict, the most significant drifted features, prediction drift and quality issues.
        metrics: Share and count of drifted features, p-value, statistic and effect size per feature, quality and prediction figures.
        verdict_json: The whole result as JSON, for machines.
        Output: Whether the input data drifted (the dataset-level verdict).
    """
    from feedback_loop import logs
    from feedback_loop.drift import core
    from feedback_loop.drift.report import write_html, write_json, write_markdown

    logs.setup(log_level)
    result = core.run(current.path, reference_uri, **core.options_of(locals()))
    write_html(result, report.path)
    write_markdown(result, summary.path)
    write_json(result, verdict_json.path)
    for name, value in result.metrics().items():
        metrics.log_metric(name, value)
    return result.is_drift
