"""A Kubernetes API for the rollout tests: kmock's emulator on 127.0.0.1, made closer to the
real API server where the rollout depends on it, plus a small KServe controller.

No Kubernetes API server can run here, so this is the one fake of the rollout tests. What
the real server does and kmock does not, added below: `201 Created` on create;
`metadata.resourceVersion` bumped on every write and compared on a patch that carries it
(409 Conflict, the compare-and-swap the rollout relies on); `metadata.generation` bumped on
spec changes only; a `status` subresource (a patch of the object ignores status, a patch of
/status changes nothing else); merge patches only (custom resources refuse strategic merge);
and, with a validator, the CRD schema under fieldValidation=Strict.

`KServeController` plays KServe in Serverless mode (Knative): every new predictor template is
a new revision; a revision becomes ready unless its storageUri is marked broken; traffic
goes `canaryTrafficPercent` to the latest ready revision and the rest to the latest rolled-out
one (none set: all to the latest ready); `latestRolledoutRevision` follows KServe's
`PropagateStatus` (the latest ready revision at 100 %; back to the previous one when a rolled
out revision drops below 100 %).
"""

from __future__ import annotations

import asyncio
import copy
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kmock

from kmock_adapter import HookedEmulator, merge_patch, replace_data

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


class ApiServerEmulator(HookedEmulator):
    def __init__(self, validator: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._revision = 0
        self._write_lock = asyncio.Lock()
        self.validator = validator

    def _fail(self, status: int, reason: str, message: str) -> None:
        raise kmock.KubernetesError(status=status, reason=reason, message=message, details={})

    async def handle(self, request: kmock.Request) -> Any:
        if request.resource is None or request.action not in (kmock.action.CREATE, kmock.action.UPDATE):
            return await self.emulate(request)
        async with self._write_lock:  # writes are serialised, as etcd's compare-and-swap makes them
            data = copy.deepcopy(request.data) or {}
            if request.action == kmock.action.CREATE:
                meta = data.setdefault("metadata", {})
                meta.update({"uid": str(uuid.uuid4()), "generation": 1, "resourceVersion": self._next_version()})
                data.pop("status", None)
                self._validate(data)
                replace_data(request, data)
                response = await self.emulate(request)
                if response.status == 200:
                    response.set_status(201)  # kmock answers 200; clients check for 201
                return response
            content_type = request.headers.get("Content-Type", "")
            if content_type != "application/merge-patch+json":
                self._fail(415, "UnsupportedMediaType", f"the body of the request was in an unsupported format: {content_type}")
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                return await self.emulate(request)  # kmock's 404
            current = dict(self.objects[key].raw)
            meta = data.get("metadata") or {}
            expected = meta.pop("resourceVersion", None)
            if expected is not None and expected != current["metadata"]["resourceVersion"]:
                self._fail(409, "Conflict", f"Operation cannot be fulfilled on {request.resource.plural} \"{request.name}\": "
                           "the object has been modified; please apply your changes to the latest version and try again")
            if request.subresource == "status":
                data = {"status": data.get("status")}
            else:
                data.pop("status", None)
            merged = merge_patch(current, data)
            self._validate(merged)
            new_meta = {"resourceVersion": self._next_version()}
            if merged.get("spec") != current.get("spec"):
                new_meta["generation"] = int(current["metadata"].get("generation", 1)) + 1
            data.setdefault("metadata", {}).update(new_meta)
            replace_data(request, data)
            return await self.emulate(request)

    def _next_version(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _validate(self, obj: dict[str, Any]) -> None:
        if self.validator is not None:
            body = {k: v for k, v in obj.items() if k != "status"}
            body["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k in ("name", "namespace", "annotations", "labels")}
            errors = [e.message for e in self.validator.iter_errors(body)]
            if errors:
                self._fail(422, "Invalid", "; ".join(errors))


class ApiServerThread:
    """Runs the emulator on 127.0.0.1 in a background event loop; `url` for the kubernetes client."""

    def __init__(self, validator: Any = None) -> None:
        self.handler = ApiServerEmulator(validator)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.url = ""
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with self.handler, kmock.Server(self.handler, host="127.0.0.1") as server:
            self.url = f"http://127.0.0.1:{server.port}"
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ApiServerThread:
        self.thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the Kubernetes API emulator did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


def custom_objects_api(url: str) -> Any:
    """The official client, configured for the emulator (no credentials, plain HTTP)."""
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = url
    return client.CustomObjectsApi(client.ApiClient(configuration))


class KServeController:
    """Reconciles InferenceService status as KServe (Serverless) would; call `reconcile()` to let it run."""

    def __init__(self, api: Any, namespace: str, name: str) -> None:
        self.api, self.namespace, self.name = api, namespace, name
        self.revisions: list[dict[str, Any]] = []  # {"name", "template", "ready"}
        self.broken_uris: set[str] = set()

    def reconcile(self) -> dict[str, Any]:
        obj = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)
        predictor_spec = obj["spec"]["predictor"]
        template = {k: v for k, v in predictor_spec.items() if k != "canaryTrafficPercent"}
        if not self.revisions or self.revisions[-1]["template"] != template:
            number = len(self.revisions) + 1
            uri = template["model"]["storageUri"]
            self.revisions.append({"name": f"{self.name}-predictor-{number:05d}", "template": copy.deepcopy(template),
                                   "ready": uri not in self.broken_uris})
        status = copy.deepcopy(obj.get("status") or {})
        component = status.setdefault("components", {}).setdefault("predictor", {})
        latest_created = self.revisions[-1]
        ready = [r for r in self.revisions if r["ready"]]
        latest_ready = ready[-1]["name"] if ready else ""
        canary = predictor_spec.get("canaryTrafficPercent")
        rolled_out = component.get("latestRolledoutRevision", "")
        if canary is not None and rolled_out:
            traffic = [
                {"tag": "latest", "latestRevision": True, "revisionName": latest_ready, "percent": canary},
                {"tag": "prev", "latestRevision": False, "revisionName": rolled_out, "percent": 100 - canary},
            ]
        else:
            traffic = [{"tag": "latest", "latestRevision": True, "revisionName": latest_ready, "percent": 100}]
        traffic = [t for t in traffic if t["revisionName"]]
        # KServe's PropagateStatus, for the predictor.
        shares: dict[str, int] = {}
        for t in traffic:
            shares[t["revisionName"]] = shares.get(t["revisionName"], 0) + t["percent"]
        for t in traffic:
            if t["revisionName"] == latest_ready and t["latestRevision"]:
                if rolled_out != latest_ready:
                    if t["percent"] == 100:
                        component["previousRolledoutRevision"] = rolled_out
                        component["latestRolledoutRevision"] = latest_ready
                elif latest_ready == latest_created["name"] and t["percent"] < 100:
                    if shares.get(t["revisionName"]) == 100 and component.get("previousRolledoutRevision"):
                        component["latestRolledoutRevision"] = component["previousRolledoutRevision"]
        component.update({"latestCreatedRevision": latest_created["name"], "latestReadyRevision": latest_ready, "traffic": traffic})
        healthy = latest_created["ready"]
        ready_condition = {"type": "Ready", "status": "True" if healthy else "False"}
        if not healthy:
            ready_condition.update({"reason": "RevisionFailed", "message": f"Revision \"{latest_created['name']}\" failed with message: model not loadable."})
        status["conditions"] = [ready_condition, {**ready_condition, "type": "PredictorReady"}]
        status["observedGeneration"] = obj["metadata"]["generation"]
        self.api.patch_namespaced_custom_object_status(GROUP, VERSION, self.namespace, PLURAL, self.name, {"status": status})
        return status

    def serving(self) -> dict[str, int]:
        """storageUri -> percent of traffic it receives now, from the reconciled status."""
        obj = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)
        by_name = {r["name"]: r["template"]["model"]["storageUri"] for r in self.revisions}
        result: dict[str, int] = {}
        for t in obj["status"]["components"]["predictor"]["traffic"]:
            uri = by_name[t["revisionName"]]
            result[uri] = result.get(uri, 0) + t["percent"]
        return {uri: share for uri, share in result.items() if share}


@contextmanager
def kubernetes_api(validator: Any = None) -> Iterator[tuple[ApiServerThread, Any]]:
    with ApiServerThread(validator) as server:
        yield server, custom_objects_api(server.url)


@contextmanager
def emulated_inference_service(namespace: str, name: str) -> Iterator[tuple[Any, "KServeController"]]:
    """The API server fake (validating InferenceServices against the real CRD where it is found)
    and the emulated KServe controller of one InferenceService: (CustomObjectsApi, controller)."""
    import jsonschema

    import kserve_crds

    schema = kserve_crds.schema("inferenceservices", "v1beta1")
    validator = jsonschema.Draft7Validator(kserve_crds.closed(schema)) if schema else None
    with kubernetes_api(validator) as (_, api):
        yield api, KServeController(api, namespace, name)
