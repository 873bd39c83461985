"""The retraining loop as one Kubeflow pipeline. Definitions only: every stage lives in
`feedback_loop.<stage>`; compile with `feedback-loop compile` (or `./build.sh compile`)."""

from kfp import dsl, kubernetes

from feedback_loop.decide.component import decide_retrain
from feedback_loop.deploy.component import advance_rollout, deploy_canary
from feedback_loop.drift.component import detect_drift
from feedback_loop.evaluate.component import evaluate_model
from feedback_loop.feedback.component import extract_feedback
from feedback_loop.prepare.component import prepare_dataset
from feedback_loop.settings import Settings
from feedback_loop.train.component import train_model

PIPELINE_NAME = "feedback-loop-retraining"
DB_SECRET = "feedback-loop-db"  # manifests/secrets: key `database-url`


def _default(name: str):
    # The pipeline's defaults are the settings' defaults (never the compiling shell's env).
    field = Settings.model_fields[name]
    return field.default_factory() if field.default_factory else field.default


def _with_database(task: dsl.PipelineTask) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(task, secret_name=DB_SECRET, secret_key_to_env={"database-url": "DATABASE_URL"})
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
    epochs: int = _default("epochs"),
    learning_rate: float = _default("learning_rate"),
    batch_size: int = _default("batch_size"),
    holdout_fraction: float = _default("holdout_fraction"),
    min_improvement: float = _default("min_improvement"),
    seed: int = _default("seed"),
    deploy_target: str = _default("deploy_target"),
    namespace: str = _default("namespace"),
    service_account: str = _default("service_account"),
    rollout_steps: list = _default("rollout_steps"),
    bake_hours: list = _default("bake_hours"),
):
    # First finish (or roll back) a canary left by an earlier run: it decides what "production" is.
    rollout = _with_database(
        advance_rollout(model_name=model_name, model_store_uri=model_store_uri, deploy_target=deploy_target, namespace=namespace)
    ).set_caching_options(False)

    feedback = _with_database(
        extract_feedback(model_name=model_name, days_back=days_back, since=rollout.outputs["trained_through"])
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
            model_name=model_name,
            feedback_count=feedback.outputs["feedback_count"],
            negative_count=feedback.outputs["negative_count"],
            satisfaction_rate=feedback.outputs["satisfaction_rate"],
            is_drift=drift.outputs["Output"],
            rollout_in_progress=rollout.outputs["rollout_in_progress"],
            force=force,
            min_feedback=min_feedback,
            min_negative=min_negative,
            min_positive_rate=min_positive_rate,
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        )
    ).set_caching_options(False)

    # Gates read a single bool `Output`: kfp.local (2.17) cannot resolve a named output in a condition.
    with dsl.If(decision.outputs["Output"] == True, name="retrain"):  # noqa: E712 (a KFP condition)
        data = prepare_dataset(
            feedback=feedback.outputs["feedback"],
            reference_data_uri=rollout.outputs["reference_data_uri"],
            holdout_fraction=holdout_fraction,
        )
        training = train_model(
            train=data.outputs["train"],
            model_name=model_name,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            seed=seed,
            parent_version=rollout.outputs["production_version"],
        )
        training.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        training.set_cpu_request("2").set_memory_request("8G").set_memory_limit("16G")

        evaluation = evaluate_model(
            candidate=training.outputs["model"],
            holdout=data.outputs["holdout"],
            production_model_uri=rollout.outputs["production_model_uri"],
            min_improvement=min_improvement,
        )

        with dsl.If(evaluation.outputs["Output"] == True, name="blessed"):  # noqa: E712
            _with_database(
                deploy_canary(
                    candidate=training.outputs["model"],
                    model_name=model_name,
                    model_store_uri=model_store_uri,
                    deploy_target=deploy_target,
                    namespace=namespace,
                    service_account=service_account,
                    rollout_steps=rollout_steps,
                    bake_hours=bake_hours,
                )
            ).set_caching_options(False)

