"""The retraining loop as one Kubeflow pipeline. Definitions only: every stage lives in
`feedback_loop.<stage>`, every parameter in settings.py; compile with `feedback-loop compile`
(or `./build.sh compile`)."""

from types import SimpleNamespace

from kfp import dsl, kubernetes

from feedback_loop.decide.component import decide_retrain
from feedback_loop.deploy.component import advance_rollout, deploy_canary
from feedback_loop.drift.component import detect_drift
from feedback_loop.evaluate.component import evaluate_model
from feedback_loop.feedback.component import extract_feedback, purge_feedback
from feedback_loop.images import TRAIN_IMAGE
from feedback_loop.operate.component import clean_model_store, notify_outcome
from feedback_loop.pipelines.parameters import pipeline_function, step
from feedback_loop.prepare.component import prepare_dataset
from feedback_loop.train.component import train_model

PIPELINE_NAME = "feedback-loop-retraining"
DESCRIPTION = (
    "Watches input drift and user feedback, retrains only when it pays, proves the candidate "
    "beats production on the same data, and rolls it out to KServe through a canary."
)
DB_SECRET = "feedback-loop-db"  # manifests/secrets: key `database-url`
NOTIFY_SECRET = "feedback-loop-notify"  # key `webhook-url`; optional
HMAC_KEY = "hmac-key"  # in the same Secret: the key that pseudonymises user ids
ACCELERATOR_TYPE = "nvidia.com/gpu"
RETRIES = 2  # KFP retries of the tasks that talk to other services


def _retried(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """A task that talks to the database, the model store or the Kubernetes API is run again
    after a failure (a node lost, a service restarting): each is safe to repeat (writes are
    compare-and-swap or whole-object). Training is not: its cost is its own retry policy."""
    return task.set_retry(num_retries=RETRIES, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s")


def _with_database(task: dsl.PipelineTask) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(task, secret_name=DB_SECRET, secret_key_to_env={"database-url": "DATABASE_URL"})
    return task


def _with_database_and_hmac_key(task: dsl.PipelineTask) -> dsl.PipelineTask:
    # Only the extraction sees user ids, so only it gets the key that pseudonymises them.
    kubernetes.use_secret_as_env(
        task, secret_name=DB_SECRET, secret_key_to_env={"database-url": "DATABASE_URL", HMAC_KEY: "FEEDBACK_HMAC_KEY"}
    )
    return task


def build_pipeline(accelerator_type: str = ACCELERATOR_TYPE, accelerator_count: int = 1):
    """The pipeline, its training task on `accelerator_count` accelerators of `accelerator_type` (0: none).

    The accelerator is fixed when compiling: kfp.local cannot resolve a parameter in a
    resource limit inside a condition. Node selector and tolerations are run-time parameters.
    """

    def graph(p: SimpleNamespace) -> None:
        # The exit handler runs last, whatever happened, and posts the outcome; it never fails the run.
        notify = _with_database(step(notify_outcome, p, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER))
        kubernetes.use_secret_as_env(
            notify, secret_name=NOTIFY_SECRET, secret_key_to_env={"webhook-url": "NOTIFY_WEBHOOK_URL"}, optional=True
        )
        notify.set_caching_options(False)

        with dsl.ExitHandler(notify, name="notify"):
            # First finish (or roll back) a canary left by an earlier run: it decides what "production" is.
            rollout = _retried(_with_database(step(advance_rollout, p))).set_caching_options(False)
            production = rollout.outputs

            feedback = _retried(_with_database_and_hmac_key(
                step(
                    extract_feedback, p,
                    since=production["trained_through"], reference_data_uri=production["reference_data_uri"],
                )
            )).set_caching_options(False)

            drift = _retried(step(
                detect_drift, p, current=feedback.outputs["feedback"], reference_uri=production["reference_data_uri"]
            ))

            decision = _retried(_with_database(
                step(
                    decide_retrain, p,
                    stats=feedback.outputs["stats"],
                    feedback=feedback.outputs["feedback"],
                    drift_metrics=drift.outputs["metrics"],
                    is_drift=drift.outputs["Output"],
                    production_model_uri=production["production_model_uri"],
                    rollout_in_progress=production["rollout_in_progress"],
                    run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                )
            )).set_caching_options(False)

            # Gates read a single bool `Output`: kfp.local (2.17) cannot resolve a named output in a condition.
            with dsl.If(decision.outputs["Output"] == True, name="retrain"):  # noqa: E712 (a KFP condition)
                data = _retried(step(
                    prepare_dataset, p,
                    feedback=feedback.outputs["feedback"],
                    reference_data_uri=production["reference_data_uri"],
                    production_model_uri=production["production_model_uri"],
                    holdout_from=decision.outputs["holdout_from"],
                ))
                training = step(
                    train_model, p,
                    train=data.outputs["train"],
                    test=data.outputs["test"],
                    drift_metrics=drift.outputs["metrics"],
                    parent_version=production["production_version"],
                    production_model_uri=production["production_model_uri"],
                    # workers > 1: the task launches a TrainJob named after the run; each node gets this accelerator.
                    run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                    accelerator_type=accelerator_type if accelerator_count else "",
                    accelerator_count=accelerator_count,
                )
                if accelerator_count:
                    training.set_accelerator_type(accelerator_type).set_accelerator_limit(accelerator_count)
                kubernetes.add_node_selector_json(training, p.node_selector)
                kubernetes.add_toleration_json(training, p.tolerations)
                training.set_env_variable("FEEDBACK_LOOP_IMAGE", TRAIN_IMAGE)  # lineage; `--registry` rewrites it too
                training.set_cpu_request("2").set_memory_request("8G").set_memory_limit("16G")

                evaluation = step(
                    evaluate_model, p,
                    candidate=training.outputs["model"],
                    holdout=data.outputs["holdout"],
                    test=data.outputs["test"],
                    production_model_uri=production["production_model_uri"],
                )

                with dsl.If(evaluation.outputs["Output"] == True, name="blessed"):  # noqa: E712
                    # A dry run trains and evaluates, then stops: nothing is published or deployed.
                    with dsl.If(p.dry_run == False, name="publish"):  # noqa: E712
                        _retried(_with_database(
                            step(
                                deploy_canary, p,
                                candidate=training.outputs["model"],
                                drift_summary=drift.outputs["summary"],
                                evaluation_verdict=evaluation.outputs["verdict"],
                                guard=evaluation.outputs["guard"],
                            )
                        )).set_caching_options(False)

            # Old model versions go once the rollout has moved; serving and rollback versions never do.
            # Personal data older than the retention period goes too.
            with dsl.If(p.cleanup == True, name="cleanup"):  # noqa: E712
                _retried(step(clean_model_store, p)).after(decision).set_caching_options(False)
                _retried(_with_database(step(purge_feedback, p))).after(decision).set_caching_options(False)

    return dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)(
        pipeline_function(graph, PIPELINE_NAME, DESCRIPTION)
    )


retraining_pipeline = build_pipeline()
