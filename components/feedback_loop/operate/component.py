"""KFP wrappers of the operating steps: `notify_outcome` (the exit handler) and `clean_model_store`."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from feedback_loop.images import DATA_IMAGE, DEPLOY_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def notify_outcome(
    status: dsl.PipelineTaskFinalStatus,
    message: Output[Markdown],
    model_name: str,
    run_name: str = "",
    dry_run: bool = False,
    log_level: str = "INFO",
) -> bool:
    """Posts what the run did to a webhook (Slack-compatible JSON); never fails the run.

    Runs as the pipeline's exit handler, after every other task, whatever happened. It
    reads the run's decision and rollout moves from the feedback database
    (`DATABASE_URL`) and posts them to `NOTIFY_WEBHOOK_URL` (the `feedback-loop-notify`
    Secret); without a URL the outcome is only logged.

    Args:
        status: The run's final state and error, filled in by KFP.
        model_name: Name of the served model (and of its InferenceService).
        run_name: The run's name, as `decide_retrain` recorded it (dsl.PIPELINE_JOB_NAME_PLACEHOLDER).
        dry_run: Train and evaluate, but neither publish nor deploy.
        log_level: DEBUG, INFO, WARNING or ERROR; every process honours it.

    Returns:
        message: The outcome as sent: no retrain and why; retrained, blessed or not; the rollout's moves.
        Output: Whether the webhook accepted the message.
    """
    import os

    from feedback_loop import logs
    from feedback_loop.operate import notify

    logs.setup(log_level)
    outcome, sent = notify.notify(
        model_name, run_name or status.pipeline_job_resource_name, status.state, status.error_message,
        os.environ.get("DATABASE_URL"), os.environ.get("NOTIFY_WEBHOOK_URL"), dry_run=dry_run,
    )
    with open(message.path, "w") as handle:
        handle.write(notify.to_markdown(outcome))
    message.metadata["sent"] = sent
    return sent


@dsl.component(base_image=DEPLOY_IMAGE, install_kfp_package=False)
def clean_model_store(
    record: Output[Markdown],
    model_name: str,
    model_store_uri: str,
    deploy_target: str = "kserve",
    namespace: str = "default",
    keep_versions: int = 5,
    log_level: str = "INFO",
) -> int:
    """Deletes old model versions, keeping the newest `keep_versions` and every version the rollout needs.

    The stable version, the canary and the previous production version are never
    deleted, however old: the rollout state is read again right before each deletion.

    Args:
        model_name: Name of the served model (and of its InferenceService).
        model_store_uri: Model store root (file:// or gs://).
        deploy_target: "local" (state in the model store) or "kserve" (an InferenceService).
        namespace: Kubernetes namespace of the InferenceService.
        keep_versions: How many of the newest versions stay.
        log_level: DEBUG, INFO, WARNING or ERROR; every process honours it.

    Returns:
        record: Each version and what became of it (protected and why, kept, deleted, incomplete).
        Output: How many versions were deleted.
    """
    from feedback_loop import logs
    from feedback_loop.deploy.targets import make_target
    from feedback_loop.operate import cleanup

    logs.setup(log_level)
    target = make_target(deploy_target, model_store_uri, model_name, namespace)
    result = cleanup.cleanup(model_store_uri, model_name, target, keep_versions)
    with open(record.path, "w") as handle:
        handle.write(result.to_markdown(model_name, done=True))
    return len(result.delete)
