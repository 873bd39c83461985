"""KFP wrappers of the deployment stage: `advance_rollout` (first step of every run) and `deploy_canary`."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Markdown, Model, Output

from feedback_loop.images import DEPLOY_IMAGE


@dsl.component(base_image=DEPLOY_IMAGE, install_kfp_package=False)
def advance_rollout(
    record: Output[Markdown],
    model_name: str,
    model_store_uri: str,
    deploy_target: str = "local",
    namespace: str = "default",
) -> NamedTuple(
    "RolloutOutputs",
    [
        ("status", str),
        ("production_version", str),
        ("production_model_uri", str),
        ("reference_data_uri", str),
        ("trained_through", str),
        ("rollout_in_progress", bool),
    ],
):
    """Moves a canary rollout in progress on: waits, advances a step, or promotes it.

    A step moves on once its bake time has passed. The canary is judged healthy as long as
    no operator rolled it back: judging it from serving metrics and feedback comes later.

    Args:
        model_name: Name of the served model (and of its InferenceService).
        model_store_uri: Model store root (file:// or gs://).
        deploy_target: "local" (state in the model store) or "kserve" (an InferenceService).
        namespace: Kubernetes namespace of the InferenceService.

    Returns:
        record: What happened (time, action, version, traffic, reason) and what serves now.
        status: idle, waiting, advanced, promoted or rolled_back.
        production_version: The version serving the stable traffic; "" when none.
        production_model_uri: Model-store URI of that version's directory; "" when none.
        reference_data_uri: Model-store URI of its training data (Parquet); "" when none.
        trained_through: Newest training timestamp (ISO 8601, UTC) of the stable and canary versions; "" when none.
        rollout_in_progress: Whether a canary still shares the traffic.
    """
    from datetime import datetime, timezone

    from feedback_loop import logs
    from feedback_loop.deploy import core

    logs.setup()
    target = core.make_target(deploy_target, model_store_uri, model_name, namespace)
    state, transitions = core.advance_rollout(target, datetime.now(timezone.utc), verdict=core.HEALTHY)
    core.record(model_name, transitions, state)
    core.write_record(record.path, model_name, transitions, state, target)
    return core.RolloutOutputs(core.status_of(transitions), **core.describe(state))


@dsl.component(base_image=DEPLOY_IMAGE, install_kfp_package=False)
def deploy_canary(
    candidate: Input[Model],
    record: Output[Markdown],
    model_name: str,
    model_store_uri: str,
    deploy_target: str = "local",
    namespace: str = "default",
    service_account: str = "",
    rollout_steps: list[int] = [10, 50, 100],  # noqa: B006 (KFP reads the literal into the spec; each run gets a fresh copy)
    bake_hours: list[float] = [24.0, 48.0],  # noqa: B006
) -> NamedTuple("DeployOutputs", [("status", str), ("version", str), ("traffic_percent", int)]):
    """Publishes a blessed model version to the model store and starts its canary rollout.

    The first version ever serves all traffic at once; a later one starts at
    rollout_steps[0] % beside the production version, and `advance_rollout` moves it on.

    Args:
        candidate: Version directory written by train_model (saved_model/, lineage.json, ...).
        model_name: Name of the served model (and of its InferenceService).
        model_store_uri: Model store root (file:// or gs://).
        deploy_target: "local" (state in the model store) or "kserve" (an InferenceService).
        namespace: Kubernetes namespace of the InferenceService.
        service_account: ServiceAccount the predictor reads the model store with; "" keeps the current one.
        rollout_steps: Canary traffic percentages, rising to 100.
        bake_hours: Hours at each step before the next, one per step below 100.

    Returns:
        record: What happened (time, action, version, traffic, reason), the steps and bake times.
        status: deployed, canary_started or unchanged.
        version: The candidate's version.
        traffic_percent: Share of traffic the candidate serves now.
    """
    from datetime import datetime, timezone
    from pathlib import Path

    from feedback_loop import logs
    from feedback_loop.deploy import core

    logs.setup()
    target = core.make_target(deploy_target, model_store_uri, model_name, namespace, service_account)
    state, transition = core.deploy(
        Path(candidate.path), model_store_uri, model_name, target, datetime.now(timezone.utc),
        steps=rollout_steps, bake_hours=bake_hours,
    )
    core.record(model_name, [transition], state)
    core.write_record(record.path, model_name, [transition], state, target)
    return core.DeployOutputs(transition.action, transition.version, transition.traffic)
