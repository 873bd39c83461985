"""The KServe target: an InferenceService whose predictor the rollout updates, its state in an annotation."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from feedback_loop.deploy import isvc
from feedback_loop.deploy.analysis import Observation
from feedback_loop.deploy.rollout import ROLLED_BACK, RolloutConflict, RolloutState, parse_time, traffic
from feedback_loop.errors import DeploymentError

ROLLOUT_ANNOTATION = "feedback-loop.dev/rollout"
# The conditions whose last transition to True marks a new revision or route serving.
SERVING_CONDITIONS = ("Ready", "PredictorReady", "PredictorConfigurationReady", "PredictorRouteReady", "IngressReady")


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
        runtime: str = isvc.RUNTIME,
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

    @classmethod
    def from_settings(cls, *, model_name: str, namespace: str, service_account: str = "", api: Any = None, **_: Any) -> KServeTarget:
        """What `make_target` calls: the InferenceService is named after the model."""
        return cls(model_name, namespace, api, service_account=service_account)

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
        if existing is not None and not raw:
            # Without state the loop would see "nothing serves" and replace production outright.
            raise DeploymentError(
                f"InferenceService {self.namespace}/{self.name} serves without rollout state: run "
                "`feedback-loop adopt --model <file.keras> --data <training data> --label <column>` first, "
                "so the loop knows the model in production and never replaces it unchecked"
            )
        self._seen = (existing["metadata"].get("resourceVersion", ""), raw) if existing else None
        return RolloutState.from_json(raw, f"annotation {ROLLOUT_ANNOTATION} of InferenceService {self.namespace}/{self.name}") if raw else None

    def serving_uri(self) -> str:
        """The storageUri of an InferenceService the loop does not manage yet (what `adopt` takes over)."""
        existing = self._get()
        if existing is None:
            raise DeploymentError(f"no InferenceService {self.namespace}/{self.name} to adopt: apply it first, or adopt on the local target")
        if _annotation(existing):
            raise DeploymentError(f"InferenceService {self.namespace}/{self.name} is already managed (it has rollout state): nothing to adopt")
        predictor = (existing.get("spec") or {}).get("predictor") or {}
        uri = (predictor.get("model") or {}).get("storageUri")
        if not uri:
            raise DeploymentError(
                f"InferenceService {self.namespace}/{self.name} has no spec.predictor.model.storageUri, which the rollout "
                "writes: declare the predictor as `model:` with a storageUri (KServe's current form) and adopt again"
            )
        if predictor.get("canaryTrafficPercent") not in (None, 100):
            raise DeploymentError(
                f"InferenceService {self.namespace}/{self.name} is in a canary ({predictor['canaryTrafficPercent']} %): "
                "finish or remove it, then adopt the version that serves"
            )
        self._seen = (existing["metadata"].get("resourceVersion", ""), None)
        return str(uri)

    def adopt(self, state: RolloutState, *, repoint: bool = False) -> None:
        """Records `state` on the InferenceService `serving_uri` read: only the annotation changes, so
        traffic, runtime and replicas stay; with `repoint`, the storageUri moves to the adopted copy."""
        seen_version = self._seen[0] if self._seen else ""
        patch: dict[str, Any] = {"metadata": {"annotations": {ROLLOUT_ANNOTATION: state.to_json()}}}
        if seen_version:
            patch["metadata"]["resourceVersion"] = seen_version  # compare-and-swap with what serving_uri read
        if repoint and state.stable is not None:
            patch["spec"] = {"predictor": {"model": {"storageUri": state.stable.storage_uri}}}
        try:
            self._call("patch", name=self.name, body=patch)
        except _Conflict:
            raise RolloutConflict(f"InferenceService {self.namespace}/{self.name} changed while it was adopted: run adopt again") from None
        self._seen = None

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

    def serving_since(self, state: RolloutState) -> datetime | None:
        """When the step began serving as KServe reports it; None while it does not.

        The latest time one of SERVING_CONDITIONS turned True, once the canary's revision is
        ready with its share: the revision's Ready for a new canary. A step that changed only
        the traffic split may flip no condition: then the step's own start stands.
        """
        if not self.observe(state).ready:
            return None
        conditions = ((self._get() or {}).get("status") or {}).get("conditions") or []
        times = [
            parse_time(str(c["lastTransitionTime"]).replace("Z", "+00:00"))
            for c in conditions
            if c.get("type") in SERVING_CONDITIONS and c.get("status") == "True" and c.get("lastTransitionTime")
        ]
        began = parse_time(state.step_started_at) if state.step_started_at else None
        return max([*times, *([began] if began else [])], default=None)

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
                raise RolloutConflict(
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
        # An API server restarting or overloaded answers 5xx or 429 for a moment: a read, and a patch
        # (compare-and-swap on resourceVersion, or the same merge again) are safe to send again.
        attempts = API_ATTEMPTS if verb in ("get", "patch") else 1
        for attempt in range(1, attempts + 1):
            try:
                return method(isvc.GROUP, isvc.VERSION, self.namespace, isvc.PLURAL, **kwargs)
            except (ApiException, HTTPError) as err:  # HTTPError: the API server is unreachable
                status = getattr(err, "status", None)
                if attempt < attempts and (status in _TRANSIENT or (status is None and isinstance(err, HTTPError))):
                    time.sleep(min(0.5 * 2 ** (attempt - 1), 4.0))
                    continue
                return self._failed(verb, err)

    def _failed(self, verb: str, err: Exception) -> None:
        """The answer that ends the attempts: 404 on a get is "none", the rest one line."""
        status = getattr(err, "status", None)
        if verb == "get" and status == 404:
            return None
        if verb == "patch" and status == 409:
            raise _Conflict() from None
        cause = " ".join(str(p) for p in (status, _api_message(err)) if p)
        hint = _HINTS.get(status, "check the cluster and the KServe controller")
        raise DeploymentError(f"{verb} InferenceService {self.namespace}/{self.name} failed ({cause}): {hint}") from None


API_ATTEMPTS = 4
_TRANSIENT = (429, 500, 502, 503, 504)


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
    from feedback_loop.kube import custom_objects_api

    return custom_objects_api(DeploymentError, "run in the cluster with the deploy ServiceAccount, or set KUBECONFIG")
