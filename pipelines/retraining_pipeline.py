"""The retraining loop as one Kubeflow pipeline. Definitions only: every stage lives in
`feedback_loop.<stage>`; compile with `feedback-loop compile` (or `./build.sh compile`)."""

from kfp import dsl, kubernetes

from feedback_loop.decide.component import decide_retrain
from feedback_loop.deploy.component import advance_rollout, deploy_canary
from feedback_loop.drift.component import detect_drift
from feedback_loop.evaluate.component import evaluate_model
from feedback_loop.feedback.component import extract_feedback, purge_feedback
from feedback_loop.images import TRAIN_IMAGE
from feedback_loop.operate.component import clean_model_store, notify_outcome
from feedback_loop.prepare.component import prepare_dataset
from feedback_loop.settings import Settings
from feedback_loop.train.component import train_model

PIPELINE_NAME = "feedback-loop-retraining"
DB_SECRET = "feedback-loop-db"  # manifests/secrets: key `database-url`
NOTIFY_SECRET = "feedback-loop-notify"  # key `webhook-url`; optional
HMAC_KEY = "hmac-key"  # in the same Secret: the key that pseudonymises user ids


def _default(name: str):
    # The pipeline's defaults are the settings' defaults (never the compiling shell's env).
    field = Settings.model_fields[name]
    return field.default_factory() if field.default_factory else field.default


def _with_database(task: dsl.PipelineTask) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(task, secret_name=DB_SECRET, secret_key_to_env={"database-url": "DATABASE_URL"})
    return task


def _with_database_and_hmac_key(task: dsl.PipelineTask) -> dsl.PipelineTask:
    # Only the extraction sees user ids, so only it gets the key that pseudonymises them.
    kubernetes.use_secret_as_env(
        task, secret_name=DB_SECRET, secret_key_to_env={"database-url": "DATABASE_URL", HMAC_KEY: "FEEDBACK_HMAC_KEY"}
    )
    return task


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Watches input drift and user feedback, retrains only when it pays, proves the candidate "
    "beats production on the same data, and rolls it out to KServe through a canary.",
)
def retraining_pipeline(
    model_store_uri: str,
    model_name: str = _default("model_name"),
    days_back: int = _default("days_back"),
    min_feedback: int = _default("min_feedback"),
    min_negative: int = _default("min_negative"),
    min_positive_rate: float = _default("min_positive_rate"),
    drift_p_value: float = _default("drift_p_value"),
    min_drift_rows: int = _default("min_drift_rows"),
    drift_correction: str = _default("drift_correction"),
    drift_engine: str = _default("drift_engine"),
    drift_share_threshold: float = _default("drift_share_threshold"),
    drift_max_rows: int = _default("drift_max_rows"),
    drift_feature_types: dict = _default("drift_feature_types"),
    force: bool = _default("force"),
    rules: list = _default("rules"),
    max_error_rate: float = _default("max_error_rate"),
    error_rate_days: int = _default("error_rate_days"),
    max_recent_latency_ratio: float = _default("max_recent_latency_ratio"),
    latency_baseline_ms: float = _default("latency_baseline_ms"),
    keywords: list = _default("keywords"),
    max_keyword_hits: int = _default("max_keyword_hits"),
    min_new_data_share: float = _default("min_new_data_share"),
    max_model_age_days: float = _default("max_model_age_days"),
    known_labels: list = _default("known_labels"),
    dry_run: bool = _default("dry_run"),
    epochs: int = _default("epochs"),
    learning_rate: float = _default("learning_rate"),
    batch_size: int = _default("batch_size"),
    holdout_fraction: float = _default("holdout_fraction"),
    min_improvement: float = _default("min_improvement"),
    seed: int = _default("seed"),
    family: str = _default("family"),
    strategy: str = _default("strategy"),
    auto_drift_share: float = _default("auto_drift_share"),
    auto_new_data_fraction: float = _default("auto_new_data_fraction"),
    window: str = _default("window"),
    window_days: float = _default("window_days"),
    half_life_days: float = _default("half_life_days"),
    split: str = _default("split"),
    mixed_precision: bool = _default("mixed_precision"),
    xla: bool = _default("xla"),
    node_selector: dict = _default("node_selector"),
    tolerations: list = _default("tolerations"),
    max_test_regression: float = _default("max_test_regression"),
    max_latency_ratio: float = _default("max_latency_ratio"),
    require_significant: bool = _default("require_significant"),
    confidence_level: float = _default("confidence_level"),
    top_k: int = _default("top_k"),
    deploy_target: str = _default("deploy_target"),
    namespace: str = _default("namespace"),
    service_account: str = _default("service_account"),
    rollout_steps: list = _default("rollout_steps"),
    bake_hours: list = _default("bake_hours"),
    prometheus_url: str = _default("prometheus_url"),
    canary_metrics: dict = _default("canary_metrics"),
    min_feedback_samples: int = _default("min_feedback_samples"),
    feedback_alpha: float = _default("feedback_alpha"),
    ready_timeout_minutes: float = _default("ready_timeout_minutes"),
    max_wait_hours: float = _default("max_wait_hours"),
    cleanup: bool = _default("cleanup"),
    keep_versions: int = _default("keep_versions"),
    retention_days: int = _default("retention_days"),
):
    # The exit handler runs last, whatever happened, and posts the outcome; it never fails the run.
    notify = _with_database(notify_outcome(model_name=model_name, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER))
    kubernetes.use_secret_as_env(
        notify, secret_name=NOTIFY_SECRET, secret_key_to_env={"webhook-url": "NOTIFY_WEBHOOK_URL"}, optional=True
    )
    notify.set_caching_options(False)

    with dsl.ExitHandler(notify, name="notify"):
        # First finish (or roll back) a canary left by an earlier run: it decides what "production" is.
        rollout = _with_database(
            advance_rollout(
                model_name=model_name, model_store_uri=model_store_uri, deploy_target=deploy_target, namespace=namespace,
                prometheus_url=prometheus_url, canary_metrics=canary_metrics, min_feedback_samples=min_feedback_samples,
                feedback_alpha=feedback_alpha, ready_timeout_minutes=ready_timeout_minutes, max_wait_hours=max_wait_hours,
            )
        ).set_caching_options(False)

        feedback = _with_database_and_hmac_key(
            extract_feedback(
                model_name=model_name,
                days_back=days_back,
                since=rollout.outputs["trained_through"],
                reference_data_uri=rollout.outputs["reference_data_uri"],
                keywords=keywords,
                known_labels=known_labels,
                error_rate_days=error_rate_days,
                latency_baseline_ms=latency_baseline_ms,
            )
        ).set_caching_options(False)

        drift = detect_drift(
            current=feedback.outputs["feedback"],
            reference_uri=rollout.outputs["reference_data_uri"],
            p_value=drift_p_value,
            min_rows=min_drift_rows,
            correction=drift_correction,
            engine=drift_engine,
            share_threshold=drift_share_threshold,
            max_rows=drift_max_rows,
            seed=seed,
            feature_types=drift_feature_types,
        )

        decision = _with_database(
            decide_retrain(
                stats=feedback.outputs["stats"],
                model_name=model_name,
                is_drift=drift.outputs["Output"],
                rollout_in_progress=rollout.outputs["rollout_in_progress"],
                force=force,
                min_feedback=min_feedback,
                min_negative=min_negative,
                min_positive_rate=min_positive_rate,
                max_error_rate=max_error_rate,
                max_recent_latency_ratio=max_recent_latency_ratio,
                max_keyword_hits=max_keyword_hits,
                min_new_data_share=min_new_data_share,
                max_model_age_days=max_model_age_days,
                rules=rules,
                run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            )
        ).set_caching_options(False)

        # Gates read a single bool `Output`: kfp.local (2.17) cannot resolve a named output in a condition.
        with dsl.If(decision.outputs["Output"] == True, name="retrain"):  # noqa: E712 (a KFP condition)
            data = prepare_dataset(
                feedback=feedback.outputs["feedback"],
                reference_data_uri=rollout.outputs["reference_data_uri"],
                production_model_uri=rollout.outputs["production_model_uri"],
                holdout_fraction=holdout_fraction,
                window=window,
                window_days=window_days,
                split=split,
            )
            training = train_model(
                train=data.outputs["train"],
                test=data.outputs["test"],
                drift_metrics=drift.outputs["metrics"],
                model_name=model_name,
                epochs=epochs,
                learning_rate=learning_rate,
                batch_size=batch_size,
                seed=seed,
                parent_version=rollout.outputs["production_version"],
                production_model_uri=rollout.outputs["production_model_uri"],
                family=family,
                strategy=strategy,
                auto_drift_share=auto_drift_share,
                auto_new_data_fraction=auto_new_data_fraction,
                window=window,
                half_life_days=half_life_days,
                mixed_precision=mixed_precision,
                xla=xla,
            )
            # Node selector and tolerations are run-time parameters; the accelerator type and count are
            # compile options (`feedback-loop compile --accelerator-type/--accelerator-count`): kfp.local
            # cannot resolve a parameter in a resource limit inside a condition.
            training.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
            kubernetes.add_node_selector_json(training, node_selector)
            kubernetes.add_toleration_json(training, tolerations)
            training.set_env_variable("FEEDBACK_LOOP_IMAGE", TRAIN_IMAGE)  # lineage; `--registry` rewrites it too
            training.set_cpu_request("2").set_memory_request("8G").set_memory_limit("16G")

            evaluation = evaluate_model(
                candidate=training.outputs["model"],
                holdout=data.outputs["holdout"],
                test=data.outputs["test"],
                production_model_uri=rollout.outputs["production_model_uri"],
                min_improvement=min_improvement,
                max_test_regression=max_test_regression,
                max_latency_ratio=max_latency_ratio,
                require_significant=require_significant,
                confidence_level=confidence_level,
                top_k=top_k,
            )

            with dsl.If(evaluation.outputs["Output"] == True, name="blessed"):  # noqa: E712
                # A dry run trains and evaluates, then stops: nothing is published or deployed.
                with dsl.If(dry_run == False, name="publish"):  # noqa: E712
                    _with_database(
                        deploy_canary(
                            candidate=training.outputs["model"],
                            model_name=model_name,
                            model_store_uri=model_store_uri,
                            drift_summary=drift.outputs["summary"],
                            evaluation_verdict=evaluation.outputs["verdict"],
                            deploy_target=deploy_target,
                            namespace=namespace,
                            service_account=service_account,
                            rollout_steps=rollout_steps,
                            bake_hours=bake_hours,
                        )
                    ).set_caching_options(False)

        # Old model versions go once the rollout has moved; serving and rollback versions never do.
        # Personal data older than the retention period goes too.
        with dsl.If(cleanup == True, name="cleanup"):  # noqa: E712
            clean_model_store(
                model_name=model_name,
                model_store_uri=model_store_uri,
                deploy_target=deploy_target,
                namespace=namespace,
                keep_versions=keep_versions,
            ).after(decision).set_caching_options(False)
            _with_database(purge_feedback(retention_days=retention_days)).after(decision).set_caching_options(False)
