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
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from feedback_loop import storage
from feedback_loop.deploy import isvc
from feedback_loop.deploy.analysis import Analysis, AnalysisConfig, Observation, Prometheus, analyse
from feedback_loop.errors import DeploymentError, ModelNotFound, SettingsError

log = logging.getLogger(__name__)

LINEAGE_FILE = "lineage.json"
SAVED_MODEL_DIR = "saved_model"
TRAINING_DATA_FILE = "training_data.parquet"
ROLLOUT_FILE = "rollout.json"
ROLLOUT_ANNOTATION = "feedback-loop.dev/rollout"
# Published beside each version by deploy_canary, quoted in the promotion record.
EVIDENCE_DIR = "evidence"
EVIDENCE_FILES = ("drift.md", "evaluation.md")
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


def advance(
    state: RolloutState, now: datetime, verdict: str = HEALTHY, *, evidence: str = "", max_wait_hours: float | None = None
) -> tuple[RolloutState, Transition]:
    """Moves a canary one step on, once its current step has baked, or rolls it back.

    The verdict comes from the analysis (`analysis.analyse`): "unhealthy" rolls back at once;
    "inconclusive" holds the step, and past its bake time by more than `max_wait_hours`
    (None: no limit) rolls back, since a canary that cannot be judged is not promoted;
    "healthy" lets the schedule decide. `evidence` explains the verdict in the reason.
    """
    if verdict not in (HEALTHY, UNHEALTHY, INCONCLUSIVE):
        raise ValueError(f"verdict must be healthy, unhealthy or inconclusive, got {verdict!r}")
    canary = state.canary
    if canary is None:
        return state, _idle(state, now, "no rollout in progress")
    because = f": {evidence}" if evidence else ""
    if verdict == UNHEALTHY:
        return rollback(state, now, f"canary judged unhealthy{because}")
    current, due = traffic(state), bake_ends_at(state)
    if verdict == INCONCLUSIVE:
        if due is not None and max_wait_hours is not None and now >= due + timedelta(hours=max_wait_hours):
            return rollback(state, now, f"no verdict {_hours(max_wait_hours)} after the bake time{because}")
        limit = f" (at most until {_iso(due + timedelta(hours=max_wait_hours))})" if due and max_wait_hours is not None else ""
        return state, _transition(now, WAITING, canary.version, current, f"holding {current} %: not enough evidence yet{limit}{because}")
    if due is not None and now < due:
        return state, _transition(now, WAITING, canary.version, current, f"{current} % until {_iso(due)}{because}")
    baked = f"healthy at {current} % for {_hours(state.bake_hours[state.step_index])}{because}"
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
    history = [*state.history, moved.to_dict()][-HISTORY_LIMIT:]
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


def publish(
    model_dir: Path, store_uri: str, model_name: str, version: str, evidence: dict[str, str] | None = None
) -> Release:
    """Uploads a version directory to `<store>/<model_name>/<version>`; a complete one is left alone.

    `evidence` (file name in EVIDENCE_FILES -> Markdown) is published under `evidence/`. The
    lineage is also copied into each SavedModel's `assets.extra/` (which TF Serving ignores),
    so a predictor given only the SavedModel directory (KServe's storageUri) knows its version.
    """
    model_dir = Path(model_dir)
    if not (model_dir / SAVED_MODEL_DIR).is_dir():
        raise ModelNotFound(f"{model_dir} has no {SAVED_MODEL_DIR}/ directory: the serving runtime would load nothing")
    uri = version_dir_uri(store_uri, model_name, version)
    if storage.is_complete(uri):
        log.info("%s %s is already in the model store at %s", model_name, version, uri)
        return Release.at(version, uri)
    with tempfile.TemporaryDirectory(prefix="publish-") as scratch:
        staged = Path(scratch) / version
        shutil.copytree(model_dir, staged)
        lineage = staged / LINEAGE_FILE
        for numbered in (p for p in (staged / SAVED_MODEL_DIR).iterdir() if p.is_dir() and lineage.is_file()):
            (numbered / "assets.extra").mkdir(exist_ok=True)
            shutil.copyfile(lineage, numbered / "assets.extra" / LINEAGE_FILE)
        for name, text in (evidence or {}).items():
            if name not in EVIDENCE_FILES:
                raise ValueError(f"evidence file {name!r} is not one of {EVIDENCE_FILES}")
            (staged / EVIDENCE_DIR).mkdir(exist_ok=True)
            (staged / EVIDENCE_DIR / name).write_text(text)
        storage.upload_dir(staged, uri)
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

    def observe(self, state: RolloutState) -> Observation: ...


class LocalTarget:
    """The state as `<store>/<model_name>/rollout.json`; the local model server serves what it says."""

    def __init__(self, store_uri: str, model_name: str) -> None:
        self.uri = storage.join(storage.normalize(store_uri), model_name, ROLLOUT_FILE)

    def read(self) -> RolloutState | None:
        return RolloutState.from_json(storage.read_bytes(self.uri)) if storage.exists(self.uri) else None

    def write(self, state: RolloutState) -> None:
        storage.write_bytes(self.uri, (state.to_json(indent=2) + "\n").encode())

    def observe(self, state: RolloutState) -> Observation:
        """The local model server serves any complete version; its revisions are the versions."""
        if state.canary is None:
            return Observation(None)
        if not storage.is_complete(state.canary.uri):
            return Observation(False, detail=f"{state.canary.uri} is not complete in the model store")
        stable = state.stable.version if state.stable else ""
        return Observation(True, state.canary.version, stable, f"{state.canary.version} complete in the model store")

    def __str__(self) -> str:
        return f"local ({self.uri})"


class KServeTarget:
    """An InferenceService; the rollout state rides in its `feedback-loop.dev/rollout` annotation.

    `write` creates the service when absent, else merge-patches only the fields the rollout
    owns (storageUri, canaryTrafficPercent, the annotation, the ServiceAccount when given), so
    replicas or resources tuned on the cluster survive. `api` is a
    `kubernetes.client.CustomObjectsApi`; built from the in-cluster or kube config on first use.

    One rollout at a time: `write` applies only on top of the state `read` saw. The patch
    carries the resourceVersion read; when the API server answers 409 because the object
    changed meanwhile, the write is retried on the new version only if the rollout
    annotation is still the one read (KServe's own status updates also bump the version),
    else it fails: another run moved the rollout.
    """

    CONFLICT_RETRIES = 3

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
        self._seen: tuple[str, str | None] | None = None  # (resourceVersion, annotation) at read()

    def __str__(self) -> str:
        return f"kserve (InferenceService {self.namespace}/{self.name})"

    @property
    def api(self) -> Any:
        if self._api is None:
            self._api = _custom_objects_api()
        return self._api

    def read(self) -> RolloutState | None:
        existing = self._get()
        raw = _annotation(existing)
        self._seen = (existing["metadata"].get("resourceVersion", ""), raw) if existing else None
        return RolloutState.from_json(raw) if raw else None

    def observe(self, state: RolloutState) -> Observation:
        """Whether the canary's revision is ready and carries its share, as KServe reports it.

        KServe (Serverless) sends canaryTrafficPercent to the latest *ready* revision and the
        rest to the latest *rolled-out* one. Until the revision created for the canary's
        storageUri is the latest ready one, the "canary" share still reaches the old model.
        """
        obj = self._get()
        if obj is None or state.canary is None:
            return Observation(None, detail="no InferenceService" if obj is None else "no canary")
        status = obj.get("status") or {}
        generation, observed = (obj.get("metadata") or {}).get("generation"), status.get("observedGeneration")
        if generation is not None and observed is not None and observed < generation:
            return Observation(False, detail=f"KServe has not reconciled generation {generation} yet (status is of {observed})")
        predictor = (status.get("components") or {}).get("predictor") or {}
        created, ready = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        if not created or created != ready:
            why = next((f"{c.get('reason') or ''} {c.get('message') or ''}".strip() for c in conditions.values()
                        if c.get("status") == "False"), "")
            detail = f"revision {created or '(none yet)'} is not ready, latest ready is {ready or '(none)'}"
            return Observation(False, detail=f"{detail}: {why}" if why else detail)
        shares: dict[str, int] = {}
        for route in predictor.get("traffic") or []:
            shares[route.get("revisionName", "")] = shares.get(route.get("revisionName", ""), 0) + int(route.get("percent") or 0)
        expected = traffic(state)
        if shares.get(ready, 0) != expected:
            return Observation(False, detail=f"revision {ready} has {shares.get(ready, 0)} % of traffic, not {expected} % yet")
        stable = predictor.get("latestRolledoutRevision", "")
        return Observation(True, ready, stable, f"revision {ready} ready with {expected} % (stable revision {stable or '-'})")

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
        patch: dict[str, Any] = {"metadata": {"annotations": {ROLLOUT_ANNOTATION: state.to_json()}}, "spec": {"predictor": predictor}}
        seen_version, seen_state = self._seen if self._seen else (existing["metadata"].get("resourceVersion", ""), _annotation(existing))
        for _ in range(self.CONFLICT_RETRIES):
            if _annotation(existing) != seen_state:
                raise DeploymentError(
                    f"the rollout on InferenceService {self.namespace}/{self.name} was changed by another run since this one read it; "
                    "one rollout at a time: let the next run pick up the new state"
                )
            if seen_version:
                patch["metadata"]["resourceVersion"] = seen_version  # compare-and-swap
            try:
                self._call("patch", name=self.name, body=patch)
            except _Conflict:
                existing = self._get() or {}
                seen_version = (existing.get("metadata") or {}).get("resourceVersion", "")
                continue
            self._seen = None  # a write consumes what read() saw
            return
        raise DeploymentError(f"InferenceService {self.namespace}/{self.name} kept changing while the rollout was written; run again")

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
            if verb == "patch" and status == 409:
                raise _Conflict() from None
            cause = " ".join(str(p) for p in (status, _api_message(err)) if p)
            hint = _HINTS.get(status, "check the cluster and the KServe controller")
            raise DeploymentError(f"{verb} InferenceService {self.namespace}/{self.name} failed ({cause}): {hint}") from None


class _Conflict(Exception):
    """409 on a patch: the object changed since its resourceVersion was read."""


def _annotation(obj: dict[str, Any] | None) -> str | None:
    return (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(ROLLOUT_ANNOTATION)


def _api_message(err: Exception) -> str:
    """The API server's own message (a Status object in the body), else the HTTP reason."""
    try:
        return str(json.loads(getattr(err, "body", None) or "")["message"])
    except (ValueError, TypeError, KeyError):
        return str(getattr(err, "reason", None) or type(err).__name__)


_HINTS = {
    403: "grant the deploy ServiceAccount get, create and patch on inferenceservices in this namespace",
    409: "another run created or changed it at the same time; one rollout at a time: run again",
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
        return None, [_transition(now, IDLE, "", 0, "nothing deployed yet")]
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
            state.canary.version, state.stable.version, _parse(state.step_started_at), now, observation, config,
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
            analysis = {"analysis": t.analysis.to_dict()} if t.analysis else {}
            store.record_deployment(
                conn, model_name=model_name, version=t.version, action=t.action,
                traffic_percent=t.traffic, reason=t.reason, details={"at": t.at, **details, **analysis},
            )
    finally:
        conn.close()
    return len(changed)


def write_record(
    path: Path | str,
    model_name: str,
    transitions: list[Transition],
    state: RolloutState | None,
    target: object,
    evidence_uris: Sequence[str] = (),
) -> None:
    """A Markdown record of what happened and what serves now: the promotion record.

    It holds each transition and its reason, the analysis behind it, the rollout's history,
    and the evidence published with the versions in `evidence_uris` (drift report and
    evaluation verdict, from `deploy_canary`).
    """
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
    analysed = [t for t in transitions if t.analysis is not None]
    if analysed:
        lines += ["## Analysis", "", "| version | check | verdict | canary | stable | detail |", "|---|---|---|---:|---:|---|"]
        for t in analysed:
            for c in t.analysis.checks:
                lines.append(
                    f"| {_cell(t.version)} | {c.name} | {c.verdict} | {_cell(_num(c.canary))} | {_cell(_num(c.stable))} | {_cell(c.detail)} |"
                )
        lines.append("")
    if state is not None and state.history:
        lines += ["## History", "", "| time (UTC) | action | version | traffic | reason |", "|---|---|---|---:|---|"]
        lines += [f"| {h['at']} | {h['action']} | {_cell(h['version'])} | {h['traffic']} % | {_cell(h['reason'])} |" for h in state.history]
        lines.append("")
    for version_uri in evidence_uris or []:
        for name in EVIDENCE_FILES:
            uri = storage.join(version_uri, EVIDENCE_DIR, name)
            if storage.exists(uri):
                lines += [f"## Evidence of `{version_uri.rsplit('/', 1)[-1]}`: {name}", "", storage.read_bytes(uri).decode().strip(), ""]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines))


def evidence_for(transitions: list[Transition], state: RolloutState | None, before: RolloutState | None) -> list[str]:
    """The version directories whose evidence belongs in the record: the canary that moved."""
    uris = []
    for candidate in (before.canary if before else None, state.canary if state else None):
        if candidate is not None and candidate.uri not in uris and any(t.changed and t.version == candidate.version for t in transitions):
            uris.append(candidate.uri)
    return uris


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|") or "-"
