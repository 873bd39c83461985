"""KFP wrapper of the outcome notification: the pipeline's exit handler."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from feedback_loop.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def notify_outcome(
    status: dsl.PipelineTaskFinalStatus,
    message: Output[Markdown],
    model_name: str,
    run_name: str = "",
) -> bool:
    """Posts what the run did to a webhook (Slack-compatible JSON); never fails the run.

    Runs as the pipeline's exit handler, after every other task, whatever happened. It
    reads the run's decision and rollout moves from the feedback database
    (`DATABASE_URL`) and posts them to `NOTIFY_WEBHOOK_URL` (the `feedback-loop-notify`
    Secret); without a URL the outcome is only logged.

    Args:
        status: The run's final state and error, filled in by KFP.
        model_name: Name of the served model.
        run_name: The run's name, as `decide_retrain` recorded it (dsl.PIPELINE_JOB_NAME_PLACEHOLDER).

    Returns:
        message: The outcome as sent: no retrain and why; retrained, blessed or not; the rollout's moves.
        Output: Whether the webhook accepted the message.
    """
    import os

    from feedback_loop import logs
    from feedback_loop.operate import notify

    logs.setup()
    outcome, sent = notify.notify(
        model_name, run_name or status.pipeline_job_resource_name, status.state, status.error_message,
        os.environ.get("DATABASE_URL"), os.environ.get("NOTIFY_WEBHOOK_URL"),
    )
    with open(message.path, "w") as handle:
        handle.write(notify.to_markdown(outcome))
    message.metadata["sent"] = sent
    return sent
