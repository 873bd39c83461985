"""What the deployment components run: publish and start a rollout, advance it, abort it.

Each runner reads the rollout state from a target (`deploy.targets`), applies the pure
transitions of `deploy.rollout` with the clock it is given, and writes the state back
once. No process waits for a bake to end: each pipeline run calls `advance_rollout` once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from feedback_loop import storage
from feedback_loop.deploy.analysis import Analysis, AnalysisConfig, Observation, Prometheus, analyse
from feedback_loop.deploy.publish import candidate_version, publish, read_lineage, version_dir_uri
from feedback_loop.deploy.rollout import (
    ADVANCED,
    DEFAULT_BAKE_HOURS,
    DEFAULT_STEPS,
    HEALTHY,
    Release,
    RolloutState,
    Transition,
    advance,
    bake_ends_at,
    nothing_deployed,
    parse_time,
    rollback,
    schedule,
    start,
)
from feedback_loop.deploy.targets import Target
from feedback_loop.layout import TRAINING_DATA_FILE

log = logging.getLogger(__name__)


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
    state = target.read() or RolloutState()
    if state.canary is None:  # a new rollout follows today's schedule; one in progress keeps its own
        state = replace(state, steps=percents, bake_hours=hours)
    release = Release.at(version, version_dir_uri(store_uri, model_name, version))
    state, transition = start(state, release, now)  # refuses before anything is uploaded
    if transition.changed:
        publish(model_dir, store_uri, model_name, version, evidence)
        target.write(state)
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
) -> tuple[RolloutState | None, list[Transition]]:
    """Advances the rollout in progress as far as its bake times and its analysis allow, and applies the result once.

    With `judge`, each step is analysed (what the target observes, then metrics and
    feedback) and the analysis gives the verdict; without, `verdict` is used as given.
    Steps with a zero bake time follow one another within the same call; a positive bake
    time always ends the call ("waiting"), since each step must be observed before the next.
    """
    state = target.read()
    if state is None:
        return None, [nothing_deployed(now)]
    transitions: list[Transition] = []
    # The evidence is about the step that has been serving; a step entered in this call has
    # none of its own yet (with a zero bake time the schedule moves on on the same verdict).
    analysis = judge(state, target.observe(state)) if judge is not None and state.canary is not None else None
    step_verdict = analysis.verdict if analysis else verdict
    while True:
        state, transition = advance(
            state, now, step_verdict, evidence=analysis.reason if analysis else "", max_wait_hours=max_wait_hours
        )
        transitions.append(replace(transition, analysis=analysis))
        due = bake_ends_at(state)
        if transition.action != ADVANCED or (due is not None and now < due):
            break
    if any(t.changed for t in transitions):
        target.write(state)
    for t in transitions:
        log.info("%s: %s (%s)", t.version or "-", t.action, t.reason)
    return state, transitions


def make_judge(config: AnalysisConfig, now: datetime, database_url: str | None = None) -> Judge:
    """The analysis of a step from what is configured: Prometheus when its URL is set, feedback when a database is."""
    metrics = Prometheus(config.prometheus_url) if config.prometheus_url else None
    feedback = _feedback_source(database_url, config.model_name) if database_url else None

    def judge(state: RolloutState, observation: Observation) -> Analysis:
        assert state.canary is not None and state.stable is not None and state.step_started_at
        return analyse(
            state.canary.version, state.stable.version, parse_time(state.step_started_at), now, observation, config,
            metrics=metrics, feedback=feedback,
        )

    return judge


def _feedback_source(database_url: str, model_name: str) -> Any:
    def read(versions: Sequence[str], start: datetime, end: datetime) -> Any:
        from feedback_loop.feedback import by_version, store  # the feedback stage's API

        conn = store.connect(database_url)
        try:
            return by_version.satisfaction_by_version(conn, model_name, versions, start, end)
        finally:
            conn.close()

    return read


def abort_rollout(target: Target, now: datetime, reason: str) -> tuple[RolloutState | None, Transition]:
    """The operator's kill switch: rolls the canary in progress back at once."""
    state = target.read()
    if state is None:
        return None, nothing_deployed(now)
    state, transition = rollback(state, now, reason)
    if transition.changed:
        target.write(state)
    return state, transition


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
