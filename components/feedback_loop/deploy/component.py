"""KFP wrappers of the deployment stage: `advance_rollout` (first step of every run) and `deploy_canary`."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Model, Output

from feedback_loop.images import DEPLOY_IMAGE


@dsl.component(base_image=DEPLOY_IMAGE, install_kfp_package=False)
def advance_rollout(
    record: Output[Markdown],
    model_name: str,
    model_store_uri: str,
    deploy_target: str = "kserve",
    namespace: str = "default",
    prometheus_url: str = "",
    canary_metrics: dict = {},  # noqa: B006 (KFP reads the literal into the spec; {}: the defaults)
    min_feedback_samples: int = 50,
    feedback_alpha: float = 0.05,
    ready_timeout_minutes: float = 30.0,
    max_wait_hours: float = 24.0,
    canary_margin: float = 0.02,
    canary_guard_min_predictions: int = 30,
    canary_collapse_share: float = 0.95,
    canary_max_label_distance: float = 0.3,
    canary_max_confidence_distance: float = 0.2,
    canary_max_value_distance: float = 0.5,
    bake_tolerance: float = 0.1,
    log_level: str = "INFO",
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
    """Analyses the canary step in progress, then promotes, advances, waits or rolls it back.

    The analysis compares the canary with the stable version since the step began: the
    target's readiness, Prometheus queries (when prometheus_url is set), and, when
    DATABASE_URL is set, a label-free guard on what each version answered (label mix,
    confidences or predicted values) and user satisfaction per version. A collapse, a
    significantly worse canary, or one not Ready in time: roll back. The step advances only
    on positive evidence: an always-valid interval of the difference showing the canary at
    most canary_margin worse. Neither: hold the step, at most max_wait_hours past its bake
    time, then roll back.

    Args:
        model_name: Name of the served model (and of its InferenceService).
        model_store_uri: Model store root (file:// or gs://).
        deploy_target: "local" (state in the model store) or "kserve" (an InferenceService).
        namespace: Kubernetes namespace of the InferenceService.
        prometheus_url: Prometheus base URL for the canary metrics; "" skips them.
        canary_metrics: Name -> {query, min, max_increase, max_ratio}; PromQL templates with {revision}, {version},
            {namespace}, {model_name}, {window}; lower is better. {} uses Knative's request count, error rate
            and p95 latency per revision.
        min_feedback_samples: Answers each version needs before feedback counts; 0 turns the feedback check off.
        feedback_alpha: Error level of the always-valid confidence sequence of canary minus stable satisfaction,
            over every look at a step.
        ready_timeout_minutes: Roll back a canary not Ready this long after its step began.
        max_wait_hours: Roll back a canary still without a verdict this long after its bake time.
        canary_margin: Non-inferiority margin: a step advances only when the canary is shown at most this much
            worse than stable (0.02 = 2 points of satisfaction).
        canary_guard_min_predictions: Predictions each version needs in a step before the label-free guard
            compares them; 0 turns the guard off.
        canary_collapse_share: Roll back a canary that gives one label (or value) for at least this share of its
            predictions when stable does not.
        canary_max_label_distance: Roll back when the Jensen-Shannon distance (base 2) between the canary's and
            stable's predicted-label mix is above this.
        canary_max_confidence_distance: Roll back when the Wasserstein distance between the canary's and stable's
            confidences is above this.
        canary_max_value_distance: Regressors: roll back when the Wasserstein distance between the canary's and
            stable's predicted values, in stable's standard deviations, is above this.
        bake_tolerance: Share of a step's bake a run may come early and still move the step on (0.1: 2.4 h of
            a 24 h step), so a step lasts its bake under a schedule of that period.
        log_level: DEBUG, INFO, WARNING or ERROR; every process honours it.

    Returns:
        record: The promotion record: each transition and its reason, the analysis, the history, the canary's
            drift report and evaluation verdict, what serves now.
        status: idle, waiting, advanced, promoted or rolled_back.
        production_version: The version serving the stable traffic; "" when none.
        production_model_uri: Model-store URI of that version's directory; "" when none.
        reference_data_uri: Model-store URI of its training data (Parquet); "" when none.
        trained_through: Newest training timestamp (ISO 8601, UTC) of the stable and canary versions; "" when none.
        rollout_in_progress: Whether a canary still shares the traffic.
    """
    import os
    from datetime import datetime, timezone

    from feedback_loop import logs
    from feedback_loop.deploy import core
    from feedback_loop.deploy.analysis import AnalysisConfig
    from feedback_loop.deploy.record import evidence_for, record_deployments, write_record
    from feedback_loop.deploy.targets import make_target

    logs.setup(log_level)
    now = datetime.now(timezone.utc)
    database_url = os.environ.get("DATABASE_URL")  # read when the step runs: the cluster's Secret
    target = make_target(deploy_target, model_store_uri, model_name, namespace)
    config = AnalysisConfig.of(locals())  # the parameters carry the settings' names
    judge = core.make_judge(config, now, database_url)
    before = target.read()
    state, transitions = core.advance_rollout(
        target, now, judge=judge, max_wait_hours=max_wait_hours, bake_tolerance=bake_tolerance
    )
    record_deployments(database_url, model_name, transitions, state)
    write_record(record.path, model_name, transitions, state, target, evidence_for(transitions, state, before))
    return core.RolloutOutputs(core.status_of(transitions), **core.describe(state))


@dsl.component(base_image=DEPLOY_IMAGE, install_kfp_package=False)
def deploy_canary(
    candidate: Input[Model],
    record: Output[Markdown],
    model_name: str,
    model_store_uri: str,
    drift_summary: Input[Markdown] = None,
    evaluation_verdict: Input[Markdown] = None,
    guard: Input[Dataset] = None,
    deploy_target: str = "kserve",
    namespace: str = "default",
    service_account: str = "",
    rollout_steps: list[int] = [10, 50, 100],  # noqa: B006 (KFP reads the literal into the spec; each run gets a fresh copy)
    bake_hours: list[float] = [24.0, 48.0],  # noqa: B006
    log_level: str = "INFO",
) -> NamedTuple("DeployOutputs", [("status", str), ("version", str), ("traffic_percent", int)]):
    """Publishes a blessed model version to the model store and starts its canary rollout.

    The first version ever serves all traffic at once; a later one starts at
    rollout_steps[0] % beside the production version, and `advance_rollout` moves it on.

    Args:
        candidate: Version directory written by train_model (saved_model/, lineage.json, ...).
        drift_summary: The drift report that led to the retraining; published with the version.
        evaluation_verdict: The evaluation verdict that blessed it; published with the version.
        guard: The guard set the evaluation judged it on (Parquet); published as its test_data.parquet, in place
            of the one train_model copied, for the next versions' no-regression gate.
        model_name: Name of the served model (and of its InferenceService).
        model_store_uri: Model store root (file:// or gs://).
        deploy_target: "local" (state in the model store) or "kserve" (an InferenceService).
        namespace: Kubernetes namespace of the InferenceService.
        service_account: ServiceAccount the predictor reads the model store with; "" keeps the current one.
        rollout_steps: Canary traffic percentages, rising to 100.
        bake_hours: Hours at each step before the next, one per step below 100.
        log_level: DEBUG, INFO, WARNING or ERROR; every process honours it.

    Returns:
        record: What happened (time, action, version, traffic, reason), the steps and bake times.
        status: deployed, canary_started or unchanged.
        version: The candidate's version.
        traffic_percent: Share of traffic the candidate serves now.
    """
    import os
    import tempfile
    from datetime import datetime, timezone
    from pathlib import Path

    from feedback_loop import logs
    from feedback_loop.deploy import core
    from feedback_loop.deploy.publish import with_guard
    from feedback_loop.deploy.record import evidence_for, record_deployments, write_record
    from feedback_loop.deploy.targets import make_target
    from feedback_loop.layout import EVIDENCE_FILES

    logs.setup(log_level)
    drift_file, evaluation_file = EVIDENCE_FILES
    evidence = {
        name: Path(artifact.path).read_text()
        for name, artifact in ((drift_file, drift_summary), (evaluation_file, evaluation_verdict))
        if artifact is not None and Path(artifact.path).is_file()
    }
    target = make_target(deploy_target, model_store_uri, model_name, namespace, service_account)
    with tempfile.TemporaryDirectory(prefix="guard-") as scratch:
        model_dir = Path(candidate.path)
        if guard is not None and Path(guard.path).is_file():
            model_dir = with_guard(model_dir, Path(guard.path), Path(scratch))
        state, transition = core.deploy(
            model_dir, model_store_uri, model_name, target, datetime.now(timezone.utc),
            steps=rollout_steps, bake_hours=bake_hours, evidence=evidence,
        )
    record_deployments(os.environ.get("DATABASE_URL"), model_name, [transition], state)
    write_record(record.path, model_name, [transition], state, target, evidence_for([transition], state, None))
    return core.DeployOutputs(transition.action, transition.version, transition.traffic)
