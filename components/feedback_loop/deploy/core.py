"""What the deployment components run: publish and start a rollout, advance it, abort it.

Each runner reads the rollout state from a target (`deploy.targets`), applies the pure
transitions of `deploy.rollout` with the clock it is given, and writes the state back
once. No process waits for a bake to end: each pipeline run calls `advance_rollout` once.
A write that finds the state changed since its read (`RolloutConflict`) makes the runner
read again and decide anew, so an operator's roll-back is never overwritten by a run that
was deciding meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from feedback_loop import storage
from feedback_loop.deploy.analysis import (
    Analysis,
    AnalysisConfig,
    FeedbackSource,
    Observation,
    PredictionSource,
    Prometheus,
    analyse,
)
from feedback_loop.deploy.publish import candidate_version, complete_release, publish, read_lineage, version_dir_uri
from feedback_loop.deploy.rollout import (
    ADVANCED,
    DEFAULT_BAKE_HOURS,
    DEFAULT_STEPS,
    HEALTHY,
    Release,
    RolloutConflict,
    RolloutState,
    Transition,
    advance,
    format_time,
    is_baked,
    nothing_deployed,
    parse_time,
    restore,
    rollback,
    schedule,
    start,
)
from feedback_loop.deploy.targets import Target
from feedback_loop.layout import COMPLETE_MARKER, TRAINING_DATA_FILE

log = logging.getLogger(__name__)

# A run that loses a compare-and-swap reads again; more losses than this in a row: give up.
CONFLICT_RETRIES = 5
_T = TypeVar("_T")


def _single_flight(attempt: Callable[[], _T], what: str) -> _T:
    """Runs read-decide-write `attempt`s until one writes on top of the state it read."""
    for tries in range(1, CONFLICT_RETRIES + 1):
        try:
            return attempt()
        except RolloutConflict as conflict:
            if tries == CONFLICT_RETRIES:
                raise
            log.warning("%s: %s; reading the rollout again", what, conflict)
    raise AssertionError("unreachable")


class RolloutOutputs(NamedTuple):
    status: str
    production_version: str
    production_model_uri: str
    reference_data_uri: str
    trained_through: str
    rollout_in_progress: bool


class DeployOutputs(NamedTuple):
    status: str
    version: str
    traffic_percent: int


def deploy(
    model_dir: Path,
    store_uri: str,
    model_name: str,
    target: Target,
    now: datetime,
    *,
    steps: Sequence[float] = DEFAULT_STEPS,
    bake_hours: Sequence[float] = DEFAULT_BAKE_HOURS,
    evidence: dict[str, str] | None = None,
) -> tuple[RolloutState, Transition]:
    """Publishes the candidate (with its evidence) and starts its rollout (or deploys it outright when nothing serves)."""
    percents, hours = schedule(steps, bake_hours)
    version = candidate_version(model_dir)
    release = Release.at(version, version_dir_uri(store_uri, model_name, version))

    def attempt() -> tuple[RolloutState, Transition]:
        state = target.read() or RolloutState()
        if state.canary is None:  # a new rollout follows today's schedule; one in progress keeps its own
            state = replace(state, steps=percents, bake_hours=hours)
        state, transition = start(state, release, now)  # refuses before anything is uploaded
        if transition.changed:
            publish(model_dir, store_uri, model_name, version, evidence)  # a complete version is left alone
            target.write(state)
        return state, transition

    state, transition = _single_flight(attempt, f"deploy {version}")
    log.info("%s %s: %s (%s)", model_name, transition.version, transition.action, transition.reason)
    return state, transition


Judge = Callable[[RolloutState, Observation], Analysis]


def advance_rollout(
    target: Target,
    now: datetime,
    verdict: str = HEALTHY,
    *,
    judge: Judge | None = None,
    max_wait_hours: float | None = None,
    bake_tolerance: float = 0.0,
) -> tuple[RolloutState | None, list[Transition]]:
    """Advances the rollout in progress as far as its bake times and its analysis allow, and applies the result once.

    With `judge`, each step is analysed (what the target observes, then metrics and
    feedback) and the analysis gives the verdict; without, `verdict` is used as given.
    Steps with a zero bake time follow one another within the same call; a positive bake
    time always ends the call ("waiting"), since each step must be observed before the next.
    A canary whose version lacks its completion marker is rolled back, judge or not. The
    bake counts from when the target first saw the step serve (recorded in the state), and
    a run up to `bake_tolerance` x the bake early moves on (`rollout.leeway`).
    """

    def attempt() -> tuple[RolloutState | None, list[Transition]]:
        state = target.read()
        if state is None:
            return None, [nothing_deployed(now)]
        state, transitions, dirty = _advance_once(target, state, now, verdict, judge, max_wait_hours, bake_tolerance)
        if dirty:
            target.write(state)
        return state, transitions

    state, transitions = _single_flight(attempt, "advance")
    for t in transitions:
        log.info("%s: %s (%s)", t.version or "-", t.action, t.reason)
    return state, transitions


def _advance_once(
    target: Target,
    state: RolloutState,
    now: datetime,
    verdict: str,
    judge: Judge | None,
    max_wait_hours: float | None,
    bake_tolerance: float,
) -> tuple[RolloutState, list[Transition], bool]:
    """One decision on the state read; also whether the state must be written."""
    canary = state.canary
    if canary is not None and not storage.is_complete(canary.uri):
        reason = f"{canary.version} is incomplete in the model store (no {COMPLETE_MARKER} in {canary.uri}): never advanced"
        state, transition = rollback(state, now, reason)
        return state, [transition], True
    recorded = False
    if canary is not None and state.serving_since is None and state.step_started_at:
        since = target.serving_since(state)
        if since is not None and since > parse_time(state.step_started_at):
            state, recorded = replace(state, serving_since=format_time(min(since, now))), True
    transitions: list[Transition] = []
    # The evidence is about the step that has been serving; a step entered in this call has
    # none of its own yet (with a zero bake time the schedule moves on on the same verdict).
    analysis = judge(state, target.observe(state)) if judge is not None and canary is not None else None
    step_verdict = analysis.verdict if analysis else verdict
    while True:
        state, transition = advance(
            state, now, step_verdict, evidence=analysis.reason if analysis else "", max_wait_hours=max_wait_hours,
            bake_tolerance=bake_tolerance,
        )
        transitions.append(replace(transition, analysis=analysis))
        if transition.action != ADVANCED or not is_baked(state, now, bake_tolerance):
            break
    return state, transitions, recorded or any(t.changed for t in transitions)


def make_judge(
    config: AnalysisConfig,
    now: datetime,
    database_url: str | None = None,
    *,
    feedback: FeedbackSource | None = None,
    predictions: PredictionSource | None = None,
) -> Judge:
    """The analysis of a step from what is configured: Prometheus when its URL is set, the label-free
    guard and the feedback when a database is (or when `feedback` / `predictions` sources are given)."""
    metrics = Prometheus(config.prometheus_url) if config.prometheus_url else None
    if database_url:
        feedback = feedback or _database_source(database_url, config.model_name, "satisfaction_by_version")
        predictions = predictions or _database_source(database_url, config.model_name, "predictions_by_version")

    def judge(state: RolloutState, observation: Observation) -> Analysis:
        assert state.canary is not None and state.stable is not None and state.step_started_at
        return analyse(
            # The analysis window opens when the step started serving (the bake's clock), not when it was written.
            state.canary.version, state.stable.version, parse_time(state.serving_since or state.step_started_at), now, observation, config,
            metrics=metrics, feedback=feedback, predictions=predictions,
        )

    return judge


def _database_source(database_url: str, model_name: str, reader: str) -> Any:
    def read(versions: Sequence[str], start: datetime, end: datetime) -> Any:
        from feedback_loop.feedback import by_version, store  # the feedback stage's API

        conn = store.connect(database_url)
        try:
            return getattr(by_version, reader)(conn, model_name, versions, start, end)
        finally:
            conn.close()

    return read


def abort_rollout(target: Target, now: datetime, reason: str) -> tuple[RolloutState | None, Transition]:
    """The operator's kill switch: rolls the canary in progress back at once.

    A run advancing the same canary meanwhile loses: its write finds the state changed and
    it reads the roll-back. If that run wrote first, this one reads again and rolls back what
    is then in progress, or reports that nothing is (with the last move).
    """

    def attempt() -> tuple[RolloutState | None, Transition]:
        state = target.read()
        if state is None:
            return None, nothing_deployed(now)
        state, transition = rollback(state, now, reason)
        if transition.changed:
            target.write(state)
        return state, transition

    return _single_flight(attempt, "rollback")


def restore_version(
    target: Target, store_uri: str, model_name: str, version: str, now: datetime, reason: str
) -> tuple[RolloutState | None, list[Transition]]:
    """Undoes a promotion: `version` (complete in the store) serves 100 % again; a canary in progress is dropped."""
    release = complete_release(store_uri, model_name, version)  # refuses a missing or incomplete version

    def attempt() -> tuple[RolloutState | None, list[Transition]]:
        state = target.read() or RolloutState()
        state, transitions = restore(state, release, now, reason)
        if any(t.changed for t in transitions):
            target.write(state)
        return state, transitions

    return _single_flight(attempt, f"rollback to {version}")


def status_of(transitions: list[Transition]) -> str:
    """The action that changed something last, else the last no-op (e.g. "advanced" over "waiting")."""
    return next((t.action for t in reversed(transitions) if t.changed), transitions[-1].action)


def describe(state: RolloutState | None) -> dict[str, Any]:
    """What the later stages need: the production model, its training data, the newest data seen."""
    stable = state.stable if state else None
    canary = state.canary if state else None
    trained = [read_lineage(r.uri).get("trained_through") for r in (stable, canary) if r is not None]
    trained = [t for t in trained if t]
    return {
        "production_version": stable.version if stable else "",
        "production_model_uri": stable.uri if stable else "",
        "reference_data_uri": storage.join(stable.uri, TRAINING_DATA_FILE) if stable else "",
        "trained_through": max(trained, key=parse_time) if trained else "",
        "rollout_in_progress": canary is not None,
    }
