"""Publish a model version to the model store, then move traffic to it in steps.

A rollout is a small state machine, kept where the model is served (a target):

    nothing ──start──────────────────────────► stable at 100 %                "deployed"
    stable ──start(new version)──────────────► canary at steps[0] %           "canary_started"
    canary ──advance, bake time elapsed──────► canary at the next step        "advanced"
    canary ──advance after the last step─────► the canary becomes stable      "promoted"
    canary ──advance(unhealthy) or rollback──► stable alone at 100 %          "rolled_back"

Transitions are pure functions of the state and an injected clock. Targets persist the
state: `LocalTarget` as JSON in the model store (what the local model server serves),
`KServeTarget` in an annotation of the InferenceService whose predictor it updates.
No process waits for a bake to end: each pipeline run calls `advance_rollout` once.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from feedback_loop import storage
from feedback_loop.deploy import isvc
from feedback_loop.errors import DeploymentError, ModelNotFound, SettingsError

log = logging.getLogger(__name__)

LINEAGE_FILE = "lineage.json"
SAVED_MODEL_DIR = "saved_model"
TRAINING_DATA_FILE = "training_data.parquet"
ROLLOUT_FILE = "rollout.json"
ROLLOUT_ANNOTATION = "feedback-loop.dev/rollout"
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

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


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
    step_started_at: str | None = None  # ISO 8601, UTC
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> RolloutState:
        data = json.loads(text)
        return cls(
            stable=Release.from_dict(data.get("stable")),
            canary=Release.from_dict(data.get("canary")),
            steps=[int(s) for s in data["steps"]],
            bake_hours=[float(h) for h in data["bake_hours"]],
            step_index=int(data.get("step_index", 0)),
            step_started_at=data.get("step_started_at"),
            history=list(data.get("history", [])),
        )


@dataclass(frozen=True)
class Transition:
    """One decision of the rollout; `traffic` is the share `version` serves afterwards."""

    at: str
    action: str
    version: str
    traffic: int
    reason: str

    @property
    def changed(self) -> bool:
        return self.action not in NO_OPS


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
    """When the current canary step has baked long enough to move on."""
    if state.canary is None or state.step_started_at is None:
        return None
    return _parse(state.step_started_at) + timedelta(hours=state.bake_hours[state.step_index])


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
    reason = f"canary beside {state.stable.version}: {percent} % for {_hours(state.bake_hours[0])}"
    changes = {"canary": release, "step_index": 0, "step_started_at": _iso(now)}
    return _move(state, now, CANARY_STARTED, release.version, percent, reason, **changes)


def advance(state: RolloutState, now: datetime, verdict: str = HEALTHY) -> tuple[RolloutState, Transition]:
    """Moves a canary one step on, once its current step has baked, or rolls it back.

    The verdict comes from outside: "unhealthy" rolls back at once, "inconclusive" holds the
    current step, "healthy" lets the schedule decide. Judging the canary from its serving
    metrics and user feedback is not implemented yet; until it is, callers (the
    `advance_rollout` component included) pass "healthy", so a canary is promoted on the
    schedule alone unless an operator rolls it back.
    """
    if verdict not in (HEALTHY, UNHEALTHY, INCONCLUSIVE):
        raise ValueError(f"verdict must be healthy, unhealthy or inconclusive, got {verdict!r}")
    canary = state.canary
    if canary is None:
        return state, _idle(state, now, "no rollout in progress")
    if verdict == UNHEALTHY:
        return rollback(state, now, "canary judged unhealthy")
    current, due = traffic(state), bake_ends_at(state)
    if verdict == INCONCLUSIVE:
        return state, _transition(now, WAITING, canary.version, current, f"holding {current} %: not enough evidence yet")
    if due is not None and now < due:
        return state, _transition(now, WAITING, canary.version, current, f"{current} % until {_iso(due)}")
    baked = f"healthy at {current} % for {_hours(state.bake_hours[state.step_index])}"
    following = state.step_index + 1
    if state.steps[following] >= 100:
        return _move(state, now, PROMOTED, canary.version, 100, baked, stable=canary, **_NO_CANARY)
    changes = {"step_index": following, "step_started_at": _iso(now)}
    return _move(state, now, ADVANCED, canary.version, state.steps[following], baked, **changes)


def rollback(state: RolloutState, now: datetime, reason: str) -> tuple[RolloutState, Transition]:
    """Drops the canary; the stable version serves all traffic again (also the operator's kill switch)."""
    if state.canary is None or state.stable is None:
        return state, _idle(state, now, "no rollout in progress: nothing to roll back")
    reason = f"{reason}; {state.stable.version} serves 100 %"
    return _move(state, now, ROLLED_BACK, state.canary.version, 0, reason, **_NO_CANARY)


_NO_CANARY: dict[str, Any] = {"canary": None, "step_index": 0, "step_started_at": None}


def _transition(now: datetime, action: str, version: str, share: int, reason: str) -> Transition:
    return Transition(_iso(now), action, version, share, reason)


def _idle(state: RolloutState, now: datetime, reason: str) -> Transition:
    stable = state.stable
    return _transition(now, IDLE, stable.version if stable else "", 100 if stable else 0, reason)


def _move(
    state: RolloutState, now: datetime, action: str, version: str, share: int, reason: str, **changes: Any
) -> tuple[RolloutState, Transition]:
    moved = _transition(now, action, version, share, reason)
    history = [*state.history, asdict(moved)][-HISTORY_LIMIT:]
    return replace(state, history=history, **changes), moved


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def _parse(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _hours(hours: float) -> str:
    return f"{hours:g} h"


# --- model store ------------------------------------------------------------------------


def version_dir_uri(store_uri: str, model_name: str, version: str) -> str:
    return storage.join(storage.normalize(store_uri), model_name, version)


def candidate_version(model_dir: Path) -> str:
    """The version a trained model directory declares in its lineage.json."""
    path = Path(model_dir) / LINEAGE_FILE
    if not path.is_file():
        raise ModelNotFound(f"{path} not found: the candidate must be a version directory written by train_model")
    version = str(json.loads(path.read_text()).get("version") or "")
    if not _VERSION.match(version):
        raise DeploymentError(f"{path} declares version {version!r}: a version must be letters, digits, '.', '_' or '-'")
    return version


def publish(model_dir: Path, store_uri: str, model_name: str, version: str) -> Release:
    """Uploads a version directory to `<store>/<model_name>/<version>`; a complete one is left alone."""
    model_dir = Path(model_dir)
    if not (model_dir / SAVED_MODEL_DIR).is_dir():
        raise ModelNotFound(f"{model_dir} has no {SAVED_MODEL_DIR}/ directory: the serving runtime would load nothing")
    uri = version_dir_uri(store_uri, model_name, version)
    if storage.is_complete(uri):
        log.info("%s %s is already in the model store at %s", model_name, version, uri)
    else:
        storage.upload_dir(model_dir, uri)
        log.info("published %s %s to %s", model_name, version, uri)
    return Release.at(version, uri)


def read_lineage(version_uri: str) -> dict[str, Any]:
    uri = storage.join(version_uri, LINEAGE_FILE)
    if not storage.exists(uri):
        raise ModelNotFound(f"{uri} not found: the model store lost a version the rollout uses; restore it or deploy another")
    return json.loads(storage.read_bytes(uri))


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
        "trained_through": max(trained, key=_parse) if trained else "",
        "rollout_in_progress": canary is not None,
    }


# --- targets ----------------------------------------------------------------------------


class Target(Protocol):
    """Where a rollout is served and its state kept."""

    def read(self) -> RolloutState | None: ...

    def write(self, state: RolloutState) -> None: ...


class LocalTarget:
    """The state as `<store>/<model_name>/rollout.json`; the local model server serves what it says."""

    def __init__(self, store_uri: str, model_name: str) -> None:
        self.uri = storage.join(storage.normalize(store_uri), model_name, ROLLOUT_FILE)

    def read(self) -> RolloutState | None:
        return RolloutState.from_json(storage.read_bytes(self.uri)) if storage.exists(self.uri) else None

    def write(self, state: RolloutState) -> None:
        storage.write_bytes(self.uri, (state.to_json(indent=2) + "\n").encode())

    def __str__(self) -> str:
        return f"local ({self.uri})"


class KServeTarget:
    """An InferenceService; the rollout state rides in its `feedback-loop.dev/rollout` annotation.

    `write` creates the service when absent, else merge-patches only the fields the rollout
    owns (storageUri, canaryTrafficPercent, the annotation, the ServiceAccount when given), so
    replicas or resources tuned on the cluster survive. `api` is a
    `kubernetes.client.CustomObjectsApi`; built from the in-cluster or kube config on first use.
    """

    def __init__(
        self,
        name: str,
        namespace: str,
        api: Any = None,
        *,
        service_account: str = "",
        runtime: str = "",
        min_replicas: int = 1,
        resources: dict[str, Any] | None = None,
        deployment_mode: str = "Serverless",
    ) -> None:
        self.name, self.namespace = name, namespace
        self.service_account, self.runtime = service_account, runtime
        self.min_replicas, self.resources = min_replicas, resources
        # Canary traffic splitting needs Knative revisions; "Serverless" is the name every
        # KServe release accepts (0.20 also reads it as "Knative"). Set on create only:
        # KServe refuses to change the mode of an existing service.
        self.deployment_mode = deployment_mode
        self._api = api

    def __str__(self) -> str:
        return f"kserve (InferenceService {self.namespace}/{self.name})"

    @property
    def api(self) -> Any:
        if self._api is None:
            self._api = _custom_objects_api()
        return self._api

    def read(self) -> RolloutState | None:
        existing = self._get()
        raw = (((existing or {}).get("metadata") or {}).get("annotations") or {}).get(ROLLOUT_ANNOTATION)
        return RolloutState.from_json(raw) if raw else None

    def write(self, state: RolloutState) -> None:
        serving = state.canary or state.stable
        if serving is None:
            raise DeploymentError(f"nothing to serve on {self}: the rollout has no version")
        percent = spec_canary_percent(state)
        existing = self._get()
        if existing is None:
            annotations = {ROLLOUT_ANNOTATION: state.to_json()}
            if self.deployment_mode:
                annotations[isvc.DEPLOYMENT_MODE_ANNOTATION] = self.deployment_mode
            body = isvc.inference_service(
                self.name, self.namespace, serving.storage_uri, canary_percent=percent, runtime=self.runtime,
                service_account=self.service_account, annotations=annotations,
                min_replicas=self.min_replicas, resources=self.resources,
            )
            self._call("create", body=body)
            return
        mode = deployment_mode(existing)
        if percent and percent < 100 and mode in isvc.RAW_MODES:
            raise DeploymentError(
                f"InferenceService {self.namespace}/{self.name} runs in {mode} mode, where canaryTrafficPercent is ignored; "
                f"recreate it with annotation {isvc.DEPLOYMENT_MODE_ANNOTATION}: Serverless (needs Knative), "
                "or set rollout_steps to 100 to replace versions without a canary"
            )
        # In a merge patch, None (null) deletes canaryTrafficPercent.
        predictor: dict[str, Any] = {"model": {"storageUri": serving.storage_uri}, "canaryTrafficPercent": percent}
        if self.service_account:
            predictor["serviceAccountName"] = self.service_account
        patch = {"metadata": {"annotations": {ROLLOUT_ANNOTATION: state.to_json()}}, "spec": {"predictor": predictor}}
        self._call("patch", name=self.name, body=patch)

    def _get(self) -> dict[str, Any] | None:
        return self._call("get", name=self.name)

    def _call(self, verb: str, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        method = getattr(self.api, f"{verb}_namespaced_custom_object")
        if verb != "get":
            # Refuse, rather than silently prune, a field the CRD does not know.
            kwargs["field_validation"] = "Strict"
        try:
            return method(isvc.GROUP, isvc.VERSION, self.namespace, isvc.PLURAL, **kwargs)
        except (ApiException, HTTPError) as err:  # HTTPError: the API server is unreachable
            status = getattr(err, "status", None)
            if verb == "get" and status == 404:
                return None
            cause = " ".join(str(p) for p in (status, _api_message(err)) if p)
            hint = _HINTS.get(status, "check the cluster and the KServe controller")
            raise DeploymentError(f"{verb} InferenceService {self.namespace}/{self.name} failed ({cause}): {hint}") from None


def _api_message(err: Exception) -> str:
    """The API server's own message (a Status object in the body), else the HTTP reason."""
    try:
        return str(json.loads(getattr(err, "body", None) or "")["message"])
    except (ValueError, TypeError, KeyError):
        return str(getattr(err, "reason", None) or type(err).__name__)


_HINTS = {
    403: "grant the deploy ServiceAccount get, create and patch on inferenceservices in this namespace",
    404: "is KServe installed in this cluster?",
    422: "the API server refused the manifest; check the InferenceService CRD version",
}


def spec_canary_percent(state: RolloutState) -> int | None:
    """canaryTrafficPercent for the InferenceService: None removes the field.

    After a roll-back it is 0, not removed. Removed, KServe routes 100 % to the latest
    *ready* revision, which stays the canary's until the restored stable revision is ready;
    0 pins all traffic to the last rolled-out (stable) revision at once. The next rollout
    sets its own percent, and its promotion removes the field.
    """
    if state.canary is not None:
        return traffic(state)
    if state.history and state.history[-1].get("action") == ROLLED_BACK:
        return 0
    return None


def deployment_mode(obj: dict[str, Any]) -> str:
    """The mode an InferenceService asks for (annotation) or runs in (status, the cluster default)."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return annotations.get(isvc.DEPLOYMENT_MODE_ANNOTATION) or (obj.get("status") or {}).get("deploymentMode") or ""


def _custom_objects_api() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as err:
            raise DeploymentError(
                f"no Kubernetes credentials ({err}): run in the cluster with the deploy ServiceAccount, or set KUBECONFIG"
            ) from None
    return client.CustomObjectsApi()


def make_target(
    deploy_target: str, store_uri: str, model_name: str, namespace: str = "default", service_account: str = "", api: Any = None
) -> Target:
    if deploy_target == "local":
        return LocalTarget(store_uri, model_name)
    if deploy_target == "kserve":
        return KServeTarget(model_name, namespace, api, service_account=service_account)
    raise SettingsError(f"deploy_target {deploy_target!r} is not one of: local, kserve")


# --- what the components run ---------------------------------------------------------------


def deploy(
    model_dir: Path,
    store_uri: str,
    model_name: str,
    target: Target,
    now: datetime,
    *,
    steps: Sequence[float] = DEFAULT_STEPS,
    bake_hours: Sequence[float] = DEFAULT_BAKE_HOURS,
) -> tuple[RolloutState, Transition]:
    """Publishes the candidate and starts its rollout (or deploys it outright when nothing serves)."""
    percents, hours = schedule(steps, bake_hours)
    version = candidate_version(model_dir)
    state = target.read() or RolloutState()
    if state.canary is None:  # a new rollout follows today's schedule; one in progress keeps its own
        state = replace(state, steps=percents, bake_hours=hours)
    release = Release.at(version, version_dir_uri(store_uri, model_name, version))
    state, transition = start(state, release, now)  # refuses before anything is uploaded
    if transition.changed:
        publish(model_dir, store_uri, model_name, version)
        target.write(state)
    log.info("%s %s: %s (%s)", model_name, transition.version, transition.action, transition.reason)
    return state, transition


def advance_rollout(target: Target, now: datetime, verdict: str = HEALTHY) -> tuple[RolloutState | None, list[Transition]]:
    """Advances the rollout in progress as far as its bake times allow, and applies the result once.

    Steps with a zero bake time follow one another within the same call; a positive bake
    time always ends the call ("waiting"), since each step must be observed before the next.
    """
    state = target.read()
    if state is None:
        return None, [_transition(now, IDLE, "", 0, "nothing deployed yet")]
    transitions: list[Transition] = []
    while True:
        state, transition = advance(state, now, verdict)
        transitions.append(transition)
        if transition.action != ADVANCED:
            break
    if any(t.changed for t in transitions):
        target.write(state)
    for t in transitions:
        log.info("%s: %s (%s)", t.version or "-", t.action, t.reason)
    return state, transitions


def abort_rollout(target: Target, now: datetime, reason: str) -> tuple[RolloutState | None, Transition]:
    """The operator's kill switch: rolls the canary in progress back at once."""
    state = target.read()
    if state is None:
        return None, _transition(now, IDLE, "", 0, "nothing deployed yet")
    state, transition = rollback(state, now, reason)
    if transition.changed:
        target.write(state)
    return state, transition


def status_of(transitions: list[Transition]) -> str:
    """The action that changed something last, else the last no-op (e.g. "advanced" over "waiting")."""
    return next((t.action for t in reversed(transitions) if t.changed), transitions[-1].action)


def record(model_name: str, transitions: list[Transition], state: RolloutState | None = None) -> int:
    """Writes the transitions that changed something to the feedback database, when DATABASE_URL is set.

    Returns:
        How many rows were written (0 without a database).
    """
    dsn = os.environ.get("DATABASE_URL")
    changed = [t for t in transitions if t.changed]
    if not dsn or not changed:
        return 0
    from feedback_loop.feedback import store  # the feedback stage's client, only when a database is in use

    details = {
        "stable": state.stable.version if state and state.stable else None,
        "canary": state.canary.version if state and state.canary else None,
        "steps": state.steps if state else None,
        "bake_hours": state.bake_hours if state else None,
    }
    conn = store.connect(dsn)
    try:
        for t in changed:
            store.record_deployment(
                conn, model_name=model_name, version=t.version, action=t.action,
                traffic_percent=t.traffic, reason=t.reason, details={"at": t.at, **details},
            )
    finally:
        conn.close()
    return len(changed)


def write_record(
    path: Path | str, model_name: str, transitions: list[Transition], state: RolloutState | None, target: object
) -> None:
    """A Markdown record of what happened and what serves now."""
    lines = [
        f"# Rollout of `{model_name}`",
        "",
        f"Target: {_cell(target)}",
        "",
        "| time (UTC) | action | version | traffic | reason |",
        "|---|---|---|---:|---|",
        *(f"| {t.at} | {t.action} | {_cell(t.version)} | {t.traffic} % | {_cell(t.reason)} |" for t in transitions),
        "",
        "## Serving now",
        "",
    ]
    if state is None or state.stable is None:
        lines.append("Nothing is deployed yet.")
    else:
        share = traffic(state)
        lines.append(f"- stable: `{state.stable.version}` at {100 - share} % ({state.stable.uri})")
        if state.canary is not None:
            step = f"step {state.step_index + 1} of {len(state.steps)}"
            lines.append(f"- canary: `{state.canary.version}` at {share} % ({state.canary.uri}), {step}")
            due = bake_ends_at(state)
            lines.append(f"- next step due: {_iso(due) if due else 'now'}")
    lines += [
        "",
        "Steps: " + " → ".join(f"{s} %" for s in (state.steps if state else DEFAULT_STEPS))
        + "; bake: " + ", ".join(_hours(h) for h in (state.bake_hours if state else DEFAULT_BAKE_HOURS)),
        "",
    ]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines))


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|") or "-"
