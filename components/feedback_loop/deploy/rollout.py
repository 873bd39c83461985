"""The rollout: a small state machine that moves traffic to a new model version in steps.

    nothing ──start──────────────────────────► stable at 100 %                "deployed"
    stable ──start(new version)──────────────► canary at steps[0] %           "canary_started"
    canary ──advance, bake time elapsed──────► canary at the next step        "advanced"
    canary ──advance after the last step─────► the canary becomes stable      "promoted"
    canary ──advance(unhealthy) or rollback──► stable alone at 100 %          "rolled_back"
    stable ──restore(an earlier version)─────► that version at 100 %          "rolled_back" + "deployed"

A step's bake counts from when it began serving (`serving_since`, as the target observed
it; until then from when it was written), and a run that comes within `bake_tolerance`
(a share of the bake) of its end moves on: runs on a schedule start at fixed times while
a step begins whenever the run that wrote it got there, so without the tolerance a 24 h
step under a daily schedule would last two days.

Transitions are pure functions of the state and an injected clock (`now`); nothing here
reads or writes anything. A target (`deploy.targets`) keeps the state where the model is
served, and `deploy.core` runs one transition per pipeline run: no process waits for a
bake to end.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from feedback_loop import storage
from feedback_loop.errors import DeploymentError, SettingsError
from feedback_loop.layout import SAVED_MODEL_DIR

if TYPE_CHECKING:  # only a type here: the state machine does not analyse anything itself
    from feedback_loop.deploy.analysis import Analysis

DEFAULT_STEPS = (10, 50, 100)
DEFAULT_BAKE_HOURS = (24.0, 48.0)
# Annotations share a 256 KiB budget per object; the database keeps the full record.
HISTORY_LIMIT = 100

# Actions that change what serves, then the no-ops.
DEPLOYED, CANARY_STARTED, ADVANCED = "deployed", "canary_started", "advanced"
PROMOTED, ROLLED_BACK = "promoted", "rolled_back"
UNCHANGED, WAITING, IDLE = "unchanged", "waiting", "idle"
NO_OPS = frozenset({UNCHANGED, WAITING, IDLE})
HEALTHY, UNHEALTHY, INCONCLUSIVE = "healthy", "unhealthy", "inconclusive"


# --- state ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """One model version in the store: its directory and what the serving runtime loads."""

    version: str
    uri: str
    storage_uri: str

    @classmethod
    def at(cls, version: str, uri: str) -> Release:
        return cls(version, uri, storage.join(uri, SAVED_MODEL_DIR))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Release | None:
        return cls(data["version"], data["uri"], data["storage_uri"]) if data else None


@dataclass(frozen=True)
class RolloutState:
    """What serves now, the canary being rolled out, and how it got there."""

    stable: Release | None = None
    canary: Release | None = None
    steps: list[int] = field(default_factory=lambda: list(DEFAULT_STEPS))
    bake_hours: list[float] = field(default_factory=lambda: list(DEFAULT_BAKE_HOURS))
    step_index: int = 0
    step_started_at: str | None = None  # ISO 8601, UTC: when the step was written
    serving_since: str | None = None  # when the target saw the step serve, if later; the bake counts from it
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "the rollout state") -> RolloutState:
        """The state `text` holds; a corrupt or truncated one is one line naming `source`."""
        try:
            data = json.loads(text)
            return cls(
                stable=Release.from_dict(data.get("stable")),
                canary=Release.from_dict(data.get("canary")),
                steps=[int(s) for s in data["steps"]],
                bake_hours=[float(h) for h in data["bake_hours"]],
                step_index=int(data.get("step_index", 0)),
                step_started_at=data.get("step_started_at"),
                serving_since=data.get("serving_since"),
                history=list(data.get("history", [])),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            why = f"no {err}" if isinstance(err, KeyError) else type(err).__name__
            raise DeploymentError(
                f"{source} is not a valid rollout state ({why}): restore it from a backup or the deployments table "
                "(`feedback-loop history`), or remove it to start over from the versions in the store"
            ) from None


class RolloutConflict(DeploymentError):
    """The rollout state changed between a run's read and its write: re-read and decide again."""


@dataclass(frozen=True)
class Transition:
    """One decision of the rollout; `traffic` is the share `version` serves afterwards.

    `analysis` is the evidence the decision rested on (not kept in the state's history).
    """

    at: str
    action: str
    version: str
    traffic: int
    reason: str
    analysis: Analysis | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "action": self.action, "version": self.version, "traffic": self.traffic, "reason": self.reason}

    @property
    def changed(self) -> bool:
        return self.action not in NO_OPS


def schedule(steps: Sequence[float], bake_hours: Sequence[float]) -> tuple[list[int], list[float]]:
    """Checks a canary schedule by the settings' rule and returns it as whole percents and hours.

    KFP hands list parameters over as JSON numbers through a protobuf Struct, so [10, 50, 100]
    arrives as [10.0, 50.0, 100.0]; canaryTrafficPercent must be an integer.
    """
    if any(float(s) != int(s) for s in steps):
        raise SettingsError(f"rollout_steps {list(steps)} must be whole percents, e.g. 10,50,100")
    percents = [int(s) for s in steps]
    if not percents or percents[-1] != 100 or any(not 0 < s <= 100 for s in percents) or percents != sorted(set(percents)):
        raise SettingsError(f"rollout_steps {percents} must rise strictly from above 0 to 100, e.g. 10,50,100")
    if len(bake_hours) != len(percents) - 1 or any(h < 0 for h in bake_hours):
        raise SettingsError(
            f"bake_hours {list(bake_hours)} needs {len(percents) - 1} non-negative values, one per step before 100"
        )
    return percents, [float(h) for h in bake_hours]


def traffic(state: RolloutState) -> int:
    """The canary's share of traffic in percent; 0 when no rollout is in progress."""
    return state.steps[state.step_index] if state.canary is not None else 0


def bake_ends_at(state: RolloutState) -> datetime | None:
    """When the current canary step has baked long enough to move on: its bake after it began serving."""
    began = state.serving_since or state.step_started_at
    if state.canary is None or began is None:
        return None
    return parse_time(began) + timedelta(hours=state.bake_hours[state.step_index])


def leeway(state: RolloutState, bake_tolerance: float) -> timedelta:
    """How early a run may come and still count as past the current step's bake (and its deadlines)."""
    if not 0 <= bake_tolerance < 1:
        raise SettingsError(f"bake_tolerance must be at least 0 and below 1, got {bake_tolerance}")
    hours = state.bake_hours[state.step_index] if state.canary is not None and state.step_index < len(state.bake_hours) else 0.0
    return timedelta(hours=hours * bake_tolerance)


def is_baked(state: RolloutState, now: datetime, bake_tolerance: float = 0.0) -> bool:
    """Whether the current step's bake has ended, or ends within the tolerance after `now`."""
    due = bake_ends_at(state)
    return due is None or now >= due - leeway(state, bake_tolerance)


# --- transitions (pure) ---------------------------------------------------------------


def start(state: RolloutState, release: Release, now: datetime) -> tuple[RolloutState, Transition]:
    """Begins serving `release`: at once when nothing serves yet, else as a canary at steps[0] %."""
    for current, share in ((state.stable, 100 - traffic(state)), (state.canary, traffic(state))):
        if current is not None and current.version == release.version:
            return state, _transition(now, UNCHANGED, release.version, share, f"{release.version} already serves {share} %")
    if state.canary is not None:
        raise DeploymentError(
            f"a rollout of {state.canary.version} is in progress ({traffic(state)} % of traffic); "
            f"let advance_rollout promote or roll it back before deploying {release.version}"
        )
    if state.stable is None or state.steps[0] == 100:
        reason = "first deployment" if state.stable is None else f"replaces {state.stable.version} (no canary step)"
        return _move(state, now, DEPLOYED, release.version, 100, reason, stable=release, **_NO_CANARY)
    percent = state.steps[0]
    reason = f"canary beside {state.stable.version}: {percent} % for {format_hours(state.bake_hours[0])}"
    changes = {"canary": release, "step_index": 0, "step_started_at": format_time(now), "serving_since": None}
    return _move(state, now, CANARY_STARTED, release.version, percent, reason, **changes)


def advance(
    state: RolloutState,
    now: datetime,
    verdict: str = HEALTHY,
    *,
    evidence: str = "",
    max_wait_hours: float | None = None,
    bake_tolerance: float = 0.0,
) -> tuple[RolloutState, Transition]:
    """Moves a canary one step on, once its current step has baked, or rolls it back.

    The verdict comes from the analysis (`analysis.analyse`): "unhealthy" rolls back at once;
    "inconclusive" holds the step, and past its bake time by more than `max_wait_hours`
    (None: no limit) rolls back, since a canary that cannot be judged is not promoted;
    "healthy" lets the schedule decide. `evidence` explains the verdict in the reason.
    Both deadlines are met by a run up to `bake_tolerance` x the step's bake early.
    """
    if verdict not in (HEALTHY, UNHEALTHY, INCONCLUSIVE):
        raise ValueError(f"verdict must be healthy, unhealthy or inconclusive, got {verdict!r}")
    canary = state.canary
    if canary is None:
        return state, _idle(state, now, "no rollout in progress")
    because = f": {evidence}" if evidence else ""
    if verdict == UNHEALTHY:
        return rollback(state, now, f"canary judged unhealthy{because}")
    current, due, early = traffic(state), bake_ends_at(state), leeway(state, bake_tolerance)
    if verdict == INCONCLUSIVE:
        if due is not None and max_wait_hours is not None and now >= due + timedelta(hours=max_wait_hours) - early:
            return rollback(state, now, f"no verdict {format_hours(max_wait_hours)} after the bake time{because}")
        limit = f" (at most until {format_time(due + timedelta(hours=max_wait_hours))})" if due and max_wait_hours is not None else ""
        return state, _transition(now, WAITING, canary.version, current, f"holding {current} %: not enough evidence yet{limit}{because}")
    if due is not None and now < due - early:
        return state, _transition(now, WAITING, canary.version, current, f"{current} % until {format_time(due)}{because}")
    baked = f"healthy at {current} % for {format_hours(state.bake_hours[state.step_index])}{because}"
    following = state.step_index + 1
    if state.steps[following] >= 100:
        return _move(state, now, PROMOTED, canary.version, 100, baked, stable=canary, **_NO_CANARY)
    changes = {"step_index": following, "step_started_at": format_time(now), "serving_since": None}
    return _move(state, now, ADVANCED, canary.version, state.steps[following], baked, **changes)


def rollback(state: RolloutState, now: datetime, reason: str) -> tuple[RolloutState, Transition]:
    """Drops the canary; the stable version serves all traffic again (also the operator's kill switch)."""
    if state.canary is None or state.stable is None:
        last = state.history[-1] if state.history else None
        since = f" (last move: {last['action']} {last['version']} at {last['at']})" if last else ""
        return state, _idle(state, now, f"no rollout in progress: nothing to roll back{since}")
    reason = f"{reason}; {state.stable.version} serves 100 %"
    return _move(state, now, ROLLED_BACK, state.canary.version, 0, reason, **_NO_CANARY)


def restore(state: RolloutState, release: Release, now: datetime, reason: str) -> tuple[RolloutState, list[Transition]]:
    """Puts an earlier version back at 100 % (the undo of a promotion); a canary in progress is dropped first.

    Recorded as "rolled_back" of the version that served (traffic 0) and "deployed" of
    `release` (traffic 100), so the records read like any other roll-back and deployment,
    and a target replaces the serving version outright rather than pinning a canary split.
    """
    moves: list[Transition] = []
    if state.canary is not None:
        state, aborted = rollback(state, now, reason)
        moves.append(aborted)
    current = state.stable
    if current is not None and current.version == release.version:
        if not moves:
            moves.append(_transition(now, UNCHANGED, release.version, 100, f"{release.version} already serves 100 %"))
        return state, moves
    if current is not None:
        state, demoted = _move(state, now, ROLLED_BACK, current.version, 0, f"{reason}; {release.version} serves 100 % again")
        moves.append(demoted)
    replaced = f" in place of {current.version}" if current is not None else ""
    why = f"{reason}: {release.version} restored to 100 %{replaced}"
    state, restored = _move(state, now, DEPLOYED, release.version, 100, why, stable=release, **_NO_CANARY)
    return state, [*moves, restored]


def nothing_deployed(now: datetime) -> Transition:
    """The no-op of a target that holds no rollout state yet."""
    return _transition(now, IDLE, "", 0, "nothing deployed yet")


_NO_CANARY: dict[str, Any] = {"canary": None, "step_index": 0, "step_started_at": None, "serving_since": None}


def _transition(now: datetime, action: str, version: str, share: int, reason: str) -> Transition:
    return Transition(format_time(now), action, version, share, reason)


def _idle(state: RolloutState, now: datetime, reason: str) -> Transition:
    stable = state.stable
    return _transition(now, IDLE, stable.version if stable else "", 100 if stable else 0, reason)


def _move(
    state: RolloutState, now: datetime, action: str, version: str, share: int, reason: str, **changes: Any
) -> tuple[RolloutState, Transition]:
    moved = _transition(now, action, version, share, reason)
    history = [*state.history, moved.to_dict()][-HISTORY_LIMIT:]
    return replace(state, history=history, **changes), moved


# --- time, as the state and the records spell it ---------------------------------------


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC, to the second; a naive timestamp is refused rather than guessed."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def parse_time(text: str) -> datetime:
    """An ISO 8601 timestamp; one without a zone is taken as UTC."""
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def format_hours(hours: float) -> str:
    return f"{hours:g} h"
