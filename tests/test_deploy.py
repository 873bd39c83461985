"""Deployment stage: the InferenceService builder against KServe's CRD, the rollout state
machine, publishing to the model store, the local and KServe targets, and the two components."""

from __future__ import annotations

import copy
import functools
import json
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.protocols import Validator
import pytest
from kfp.dsl import Markdown, Model
from kubernetes.client.exceptions import ApiException

import kserve_crds

from feedback_loop import storage
from feedback_loop.deploy import core, isvc
from feedback_loop.deploy.component import advance_rollout, deploy_canary
from feedback_loop.errors import DeploymentError, ModelNotFound, SettingsError
from feedback_loop.images import DEPLOY_IMAGE

CRD_FILE = kserve_crds.crd_file("inferenceservices")
closed = kserve_crds.closed
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


@pytest.fixture(autouse=True)
def _no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)


# --- helpers ----------------------------------------------------------------------------


def make_model_dir(root: Path, version: str, trained_through: str = "2025-02-28T00:00:00+00:00") -> Path:
    """A version directory shaped like train_model's output (the SavedModel is a dummy file)."""
    model_dir = root / "candidates" / version
    (model_dir / "saved_model" / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "saved_model" / "1" / "saved_model.pb").write_bytes(b"not a real graph")
    (model_dir / "model.keras").write_bytes(b"keras")
    (model_dir / "training_data.parquet").write_bytes(b"PAR1")
    lineage = {
        "version": version, "trained_through": trained_through, "classes": ["cat", "dog"],
        "data_hash": "abc", "parent_version": None,
    }
    (model_dir / "lineage.json").write_text(json.dumps(lineage))
    return model_dir


def release(version: str) -> core.Release:
    return core.Release.at(version, f"file:///store/m/{version}")


@functools.cache
def load_crd_schema() -> dict[str, Any] | None:
    return kserve_crds.schema("inferenceservices", "v1beta1")


@pytest.fixture(scope="module")
def crd_schema() -> dict[str, Any]:
    schema = load_crd_schema()
    if schema is None:
        pytest.skip(f"KServe CRDs not found at {CRD_FILE.parent}")
    return schema


@pytest.fixture(scope="module")
def strict_validator(crd_schema: dict[str, Any]) -> Validator:
    return jsonschema.Draft7Validator(closed(crd_schema))


@pytest.fixture(scope="module")
def api_validator() -> Validator | None:
    """The fake API server checks objects against the CRD where it is available."""
    schema = load_crd_schema()
    return jsonschema.Draft7Validator(closed(schema)) if schema is not None else None


def merge_patch(target: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386), what the client sends for patch_namespaced_custom_object."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


class FakeCustomObjectsApi:
    """An in-memory `kubernetes.client.CustomObjectsApi` for namespaced get/create/patch.

    A real API server cannot run here; a kmock-based Kubernetes emulator replaces this fake
    in later work. Like the API server with fieldValidation=Strict, it refuses an object the
    CRD schema rejects (when a validator is given).
    """

    def __init__(self, validator: Validator | None = None) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.validator = validator

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str) -> dict[str, Any]:
        self.calls.append(("get", {"name": name}))
        if (namespace, name) not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.objects[(namespace, name)])

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: dict[str, Any], **kwargs: Any
    ) -> dict[str, Any]:
        assert (group, version, plural) == ("serving.kserve.io", "v1beta1", "inferenceservices")
        self.calls.append(("create", {"body": copy.deepcopy(body), **kwargs}))
        key = (namespace, body["metadata"]["name"])
        if key in self.objects:
            raise ApiException(status=409, reason="Conflict")
        self._check(body)
        self.objects[key] = copy.deepcopy(body)
        return copy.deepcopy(body)

    def patch_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: dict[str, Any], **kwargs: Any
    ) -> dict[str, Any]:
        self.calls.append(("patch", {"body": copy.deepcopy(body), **kwargs}))
        if (namespace, name) not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        merged = merge_patch(self.objects[(namespace, name)], body)
        self._check(merged)
        self.objects[(namespace, name)] = merged
        return copy.deepcopy(merged)

    def _check(self, obj: dict[str, Any]) -> None:
        if self.validator is not None:
            errors = [e.message for e in self.validator.iter_errors({k: v for k, v in obj.items() if k != "status"})]
            if errors:
                raise ApiException(status=422, reason="; ".join(errors))


def predictor_of(api: FakeCustomObjectsApi, name: str = "cats-vs-dogs", namespace: str = "ml") -> dict[str, Any]:
    return api.objects[(namespace, name)]["spec"]["predictor"]


# --- the InferenceService builder against KServe's CRD ------------------------------------------


@pytest.mark.parametrize("canary", [None, 10, 0])
def test_inference_service_is_valid_against_the_crd(strict_validator: Validator, canary: int | None) -> None:
    manifest = isvc.inference_service(
        "cats-vs-dogs", "ml", "gs://bucket/models/cats-vs-dogs/v1/saved_model", canary_percent=canary,
        runtime="kserve-tensorflow-serving", service_account="model-reader", annotations={"a.b/c": "d"},
    )
    strict_validator.validate(manifest)
    predictor = manifest["spec"]["predictor"]
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    assert predictor["model"]["modelFormat"] == {"name": "tensorflow"}
    assert predictor["model"]["storageUri"].endswith("/v1/saved_model")
    assert predictor["model"]["resources"]["requests"] and predictor["serviceAccountName"] == "model-reader"
    assert predictor.get("canaryTrafficPercent") == canary and "canaryTrafficPercent" not in manifest["spec"]


def test_misplaced_canary_fails_validation(crd_schema: dict[str, Any], strict_validator: Validator) -> None:
    manifest = isvc.inference_service("cats-vs-dogs", "ml", "gs://b/m/v2/saved_model")
    misplaced = copy.deepcopy(manifest)
    misplaced["spec"]["canaryTrafficPercent"] = 10
    assert not strict_validator.is_valid(misplaced)
    # The CRD as published does not say additionalProperties: false, so plain JSON Schema
    # accepts the misplaced field; the API server would prune it (or refuse it under Strict).
    assert jsonschema.Draft7Validator(crd_schema).is_valid(misplaced)
    # A wrong type is refused by the published schema as it is.
    wrong_type = copy.deepcopy(manifest)
    wrong_type["spec"]["predictor"]["canaryTrafficPercent"] = "10"
    assert not jsonschema.Draft7Validator(crd_schema).is_valid(wrong_type)


def test_builder_refuses_what_kserve_would() -> None:
    with pytest.raises(ValueError, match="starting with a letter"):
        isvc.inference_service("1model", "ml", "gs://b/m")
    with pytest.raises(ValueError, match="between 0 and 100"):
        isvc.inference_service("model", "ml", "gs://b/m", canary_percent=101)


# --- the rollout state machine ---------------------------------------------------------------


def test_first_deploy_serves_everything_at_once() -> None:
    state, moved = core.start(core.RolloutState(), release("v1"), T0)
    assert (moved.action, moved.traffic) == ("deployed", 100)
    assert state.stable == release("v1") and state.canary is None and core.traffic(state) == 0
    assert state.stable.storage_uri == "file:///store/m/v1/saved_model"


def test_canary_walks_the_schedule_then_promotes() -> None:
    state, _ = core.start(core.RolloutState(), release("v1"), T0)
    state, moved = core.start(state, release("v2"), T0)
    assert (moved.action, moved.traffic, core.traffic(state)) == ("canary_started", 10, 10)

    state, moved = core.advance(state, T0 + 23 * HOUR)
    assert moved.action == "waiting" and core.traffic(state) == 10

    state, moved = core.advance(state, T0 + 24 * HOUR)
    assert (moved.action, core.traffic(state), state.step_started_at) == ("advanced", 50, (T0 + 24 * HOUR).isoformat())

    state, moved = core.advance(state, T0 + (24 + 47) * HOUR)
    assert moved.action == "waiting" and core.traffic(state) == 50

    state, moved = core.advance(state, T0 + (24 + 48) * HOUR)
    assert (moved.action, moved.version, moved.traffic) == ("promoted", "v2", 100)
    assert state.stable == release("v2") and state.canary is None

    state, moved = core.advance(state, T0 + 100 * HOUR)
    assert moved.action == "idle"
    assert [h["action"] for h in state.history] == ["deployed", "canary_started", "advanced", "promoted"]
    assert core.RolloutState.from_json(state.to_json()) == state


def test_rollback_restores_stable() -> None:
    state, _ = core.start(core.RolloutState(), release("v1"), T0)
    state, _ = core.start(state, release("v2"), T0)
    unhealthy, moved = core.advance(state, T0 + HOUR, verdict="unhealthy")
    assert (moved.action, moved.version, moved.traffic) == ("rolled_back", "v2", 0)
    assert unhealthy.stable == release("v1") and unhealthy.canary is None

    aborted, moved = core.rollback(state, T0 + HOUR, "operator: bad reviews")
    assert moved.action == "rolled_back" and "operator: bad reviews" in moved.reason and aborted.canary is None
    assert core.rollback(aborted, T0 + 2 * HOUR, "again")[1].action == "idle"
    # "inconclusive" holds the step even after the bake time.
    assert core.advance(state, T0 + 99 * HOUR, verdict="inconclusive")[1].action == "waiting"


def test_redeploying_a_serving_version_is_a_no_op() -> None:
    state, _ = core.start(core.RolloutState(), release("v1"), T0)
    same, moved = core.start(state, release("v1"), T0 + HOUR)
    assert moved.action == "unchanged" and same == state
    state, _ = core.start(state, release("v2"), T0)
    same, moved = core.start(state, release("v2"), T0 + HOUR)
    assert (moved.action, moved.traffic) == ("unchanged", 10) and same == state


def test_deploy_while_a_canary_is_in_progress_raises() -> None:
    state, _ = core.start(core.RolloutState(), release("v1"), T0)
    state, _ = core.start(state, release("v2"), T0)
    with pytest.raises(DeploymentError, match="a rollout of v2 is in progress"):
        core.start(state, release("v3"), T0 + HOUR)


def test_schedule_without_canary_steps_replaces_directly() -> None:
    state, _ = core.start(core.RolloutState(steps=[100], bake_hours=[]), release("v1"), T0)
    state, moved = core.start(state, release("v2"), T0)
    assert moved.action == "deployed" and state.stable == release("v2")
    # KFP passes list parameters through a protobuf Struct: whole numbers arrive as floats.
    assert core.schedule([10.0, 50.0, 100.0], [24, 48]) == ([10, 50, 100], [24.0, 48.0])
    with pytest.raises(SettingsError, match="whole percents"):
        core.schedule([12.5, 100], [1])
    with pytest.raises(SettingsError, match="rise strictly"):
        core.schedule([50, 10, 100], [1, 1])
    with pytest.raises(SettingsError, match="needs 2"):
        core.schedule([10, 50, 100], [1])


# --- publishing to the model store -----------------------------------------------------------


def test_publish_writes_a_complete_version_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = make_model_dir(tmp_path, "v1")
    store = f"file://{tmp_path / 'store'}"
    published = core.publish(model_dir, store, "m", "v1")
    assert published.uri == f"file://{tmp_path / 'store' / 'm' / 'v1'}"
    assert published.storage_uri == published.uri + "/saved_model"
    assert storage.is_complete(published.uri)
    assert (tmp_path / "store" / "m" / "v1" / "saved_model" / "1" / "saved_model.pb").exists()

    def no_upload(*_: Any) -> None:
        raise AssertionError("a complete version must not be uploaded again")

    monkeypatch.setattr(storage, "upload_dir", no_upload)
    assert core.publish(model_dir, store, "m", "v1") == published


def test_failed_upload_leaves_no_version_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = make_model_dir(tmp_path, "v1")

    copytree = shutil.copytree

    def disk_full(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        if str(tmp_path / "store") in str(target):  # the upload into the store, not publish's own staging copy
            raise OSError(28, "No space left on device")
        copytree(source, target, *args, **kwargs)

    monkeypatch.setattr(shutil, "copytree", disk_full)
    with pytest.raises(OSError, match="No space left"):
        core.publish(model_dir, str(tmp_path / "store"), "m", "v1")
    assert list((tmp_path / "store" / "m").iterdir()) == []  # no version, no staging directory


def test_publish_needs_a_saved_model(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path, "v1")
    shutil.rmtree(model_dir / "saved_model")
    with pytest.raises(ModelNotFound, match="saved_model"):
        core.publish(model_dir, str(tmp_path / "store"), "m", "v1")


def test_describe_reads_lineage_of_stable_and_canary(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    v1 = core.publish(make_model_dir(tmp_path, "v1", "2025-01-31T00:00:00+00:00"), store, "m", "v1")
    v2 = core.publish(make_model_dir(tmp_path, "v2", "2025-02-28T06:00:00+00:00"), store, "m", "v2")
    assert core.describe(None) == {
        "production_version": "", "production_model_uri": "", "reference_data_uri": "",
        "trained_through": "", "rollout_in_progress": False,
    }
    state = core.RolloutState(stable=v1, canary=v2, step_started_at=T0.isoformat())
    assert core.describe(state) == {
        "production_version": "v1",
        "production_model_uri": v1.uri,
        "reference_data_uri": v1.uri + "/training_data.parquet",
        "trained_through": "2025-02-28T06:00:00+00:00",
        "rollout_in_progress": True,
    }


# --- targets ---------------------------------------------------------------------------------


def test_local_target_keeps_the_state_in_the_store(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    target = core.LocalTarget(store, "m")
    assert target.read() is None
    state, transition = core.deploy(make_model_dir(tmp_path, "v1"), store, "m", target, T0)
    assert transition.action == "deployed"
    assert target.read() == state
    assert json.loads((tmp_path / "store" / "m" / "rollout.json").read_text())["stable"]["version"] == "v1"
    assert storage.list_dirs(f"file://{tmp_path / 'store' / 'm'}") == ["v1"]


def test_refused_deploy_uploads_nothing(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    target = core.LocalTarget(store, "m")
    core.deploy(make_model_dir(tmp_path, "v1"), store, "m", target, T0)
    core.deploy(make_model_dir(tmp_path, "v2"), store, "m", target, T0)
    with pytest.raises(DeploymentError, match="in progress"):
        core.deploy(make_model_dir(tmp_path, "v3"), store, "m", target, T0 + HOUR)
    assert storage.list_dirs(f"file://{tmp_path / 'store' / 'm'}") == ["v1", "v2"]


def test_kserve_target_creates_then_patches_the_predictor(tmp_path: Path, api_validator: Validator | None) -> None:
    api = FakeCustomObjectsApi(api_validator)
    target = core.KServeTarget("cats-vs-dogs", "ml", api, service_account="model-reader")
    store = str(tmp_path / "store")

    core.deploy(make_model_dir(tmp_path, "v1"), store, "cats-vs-dogs", target, T0)
    created = api.objects[("ml", "cats-vs-dogs")]
    assert [c[0] for c in api.calls] == ["get", "get", "create"]
    assert created["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert "canaryTrafficPercent" not in created["spec"]["predictor"]
    assert created["spec"]["predictor"]["model"]["storageUri"].endswith("/cats-vs-dogs/v1/saved_model")

    state, _ = core.deploy(make_model_dir(tmp_path, "v2"), store, "cats-vs-dogs", target, T0)
    verb, call = api.calls[-1]
    assert verb == "patch" and call["field_validation"] == "Strict"
    predictor = predictor_of(api)
    assert predictor["canaryTrafficPercent"] == 10
    assert "canaryTrafficPercent" not in api.objects[("ml", "cats-vs-dogs")]["spec"]
    assert predictor["model"]["storageUri"].endswith("/v2/saved_model")
    assert predictor["model"]["resources"] == isvc.DEFAULT_RESOURCES  # not owned by the patch, kept
    assert target.read() == state

    core.advance_rollout(target, T0 + 24 * HOUR)
    assert predictor_of(api)["canaryTrafficPercent"] == 50
    state, transitions = core.advance_rollout(target, T0 + 72 * HOUR)
    assert [t.action for t in transitions] == ["promoted"]
    assert "canaryTrafficPercent" not in predictor_of(api)
    assert predictor_of(api)["model"]["storageUri"].endswith("/v2/saved_model")
    assert target.read() == state and state.stable.version == "v2"


def test_kserve_rollback_pins_traffic_to_the_stable_revision(tmp_path: Path, api_validator: Validator | None) -> None:
    api = FakeCustomObjectsApi(api_validator)
    target = core.KServeTarget("cats-vs-dogs", "ml", api)
    store = str(tmp_path / "store")
    core.deploy(make_model_dir(tmp_path, "v1"), store, "cats-vs-dogs", target, T0)
    core.deploy(make_model_dir(tmp_path, "v2"), store, "cats-vs-dogs", target, T0)

    state, transition = core.abort_rollout(target, T0 + HOUR, "operator kill switch")
    assert transition.action == "rolled_back" and state.canary is None
    predictor = predictor_of(api)
    assert predictor["model"]["storageUri"].endswith("/v1/saved_model")
    # 0, not removed: removed would send 100 % to the latest *ready* revision (the canary's)
    # until the restored revision is ready.
    assert predictor["canaryTrafficPercent"] == 0

    core.deploy(make_model_dir(tmp_path, "v3"), store, "cats-vs-dogs", target, T0 + 2 * HOUR, steps=[50, 100], bake_hours=[0])
    assert predictor_of(api)["canaryTrafficPercent"] == 50
    core.advance_rollout(target, T0 + 2 * HOUR)
    assert "canaryTrafficPercent" not in predictor_of(api)


@pytest.mark.parametrize(
    ("annotation", "status_mode"),
    [("RawDeployment", None), ("Standard", None), (None, "Standard")],  # the last: the cluster's default mode
)
def test_kserve_raw_deployment_refuses_a_canary(tmp_path: Path, annotation: str | None, status_mode: str | None) -> None:
    api = FakeCustomObjectsApi()
    target = core.KServeTarget("cats-vs-dogs", "ml", api)
    store = str(tmp_path / "store")
    core.deploy(make_model_dir(tmp_path, "v1"), store, "cats-vs-dogs", target, T0)
    obj = api.objects[("ml", "cats-vs-dogs")]
    obj["metadata"]["annotations"].pop("serving.kserve.io/deploymentMode")
    if annotation:
        obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = annotation
    if status_mode:
        obj["status"] = {"deploymentMode": status_mode}
    before = copy.deepcopy(obj)

    with pytest.raises(DeploymentError, match=r"runs in (RawDeployment|Standard) mode, where canaryTrafficPercent is ignored"):
        core.deploy(make_model_dir(tmp_path, "v2"), store, "cats-vs-dogs", target, T0)
    assert api.objects[("ml", "cats-vs-dogs")] == before
    # Without a canary step the same service takes the new version.
    core.deploy(make_model_dir(tmp_path, "v2"), store, "cats-vs-dogs", target, T0, steps=[100], bake_hours=[])
    assert predictor_of(api)["model"]["storageUri"].endswith("/v2/saved_model")


def test_kserve_api_errors_say_what_to_do() -> None:
    class Forbidden(FakeCustomObjectsApi):
        def get_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            raise ApiException(status=403, reason="Forbidden")

    with pytest.raises(DeploymentError, match="403 Forbidden.*grant the deploy ServiceAccount"):
        core.KServeTarget("cats-vs-dogs", "ml", Forbidden()).read()
    with pytest.raises(SettingsError, match="deploy_target 'k8s'"):
        core.make_target("k8s", "file:///s", "m")


def test_kubernetes_client_is_built_only_when_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    target = core.KServeTarget("cats-vs-dogs", "ml")  # no config read yet
    with pytest.raises(DeploymentError, match="no Kubernetes credentials"):
        target.read()
    code = "import sys, feedback_loop.deploy.core; print(sorted({'kfp', 'kubernetes'} & set(sys.modules)))"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]"  # core imports neither KFP nor the Kubernetes client


def test_record_is_a_no_op_without_a_database() -> None:
    _, moved = core.start(core.RolloutState(), release("v1"), T0)
    assert core.record("m", [moved]) == 0


# --- the components, with real artifacts on disk ----------------------------------------------------


def run_deploy(tmp_path: Path, version: str, **kwargs: Any) -> tuple[Any, str]:
    record = Markdown(uri=str(tmp_path / f"deploy-{version}.md"))
    outputs = deploy_canary.python_func(
        candidate=Model(uri=str(make_model_dir(tmp_path, version))), record=record,
        model_name="m", model_store_uri=f"file://{tmp_path / 'store'}", deploy_target="local", **kwargs,
    )
    return outputs, Path(record.path).read_text()


def run_advance(tmp_path: Path, name: str) -> tuple[Any, str]:
    record = Markdown(uri=str(tmp_path / f"advance-{name}.md"))
    outputs = advance_rollout.python_func(
        record=record, model_name="m", model_store_uri=f"file://{tmp_path / 'store'}", deploy_target="local"
    )
    return outputs, Path(record.path).read_text()


def test_components_deploy_and_advance_locally(tmp_path: Path) -> None:
    outputs, text = run_advance(tmp_path, "empty")
    assert outputs.status == "idle" and outputs.production_version == "" and outputs.rollout_in_progress is False
    assert "Nothing is deployed yet" in text

    outputs, text = run_deploy(tmp_path, "v1")
    assert (outputs.status, outputs.version, outputs.traffic_percent) == ("deployed", "v1", 100)
    assert "| deployed | v1 | 100 % | first deployment |" in text

    # As a KFP run passes them: list numbers come through a protobuf Struct as floats.
    outputs, text = run_deploy(tmp_path, "v2", rollout_steps=[10.0, 50.0, 100.0], bake_hours=[24.0, 48.0])
    assert (outputs.status, outputs.version, outputs.traffic_percent) == ("canary_started", "v2", 10)
    assert type(outputs.traffic_percent) is int
    assert "10 % → 50 % → 100 %" in text and "24 h, 48 h" in text
    rollout = json.loads((tmp_path / "store" / "m" / "rollout.json").read_text())
    assert (rollout["stable"]["version"], rollout["canary"]["version"], rollout["step_index"]) == ("v1", "v2", 0)
    assert rollout["canary"]["storage_uri"] == f"file://{tmp_path / 'store' / 'm' / 'v2' / 'saved_model'}"

    outputs, text = run_advance(tmp_path, "waiting")
    v1_uri = f"file://{tmp_path / 'store' / 'm' / 'v1'}"
    assert outputs == ("waiting", "v1", v1_uri, v1_uri + "/training_data.parquet", "2025-02-28T00:00:00+00:00", True)
    assert "- canary: `v2` at 10 %" in text


def test_zero_bake_times_complete_within_one_run(tmp_path: Path) -> None:
    run_deploy(tmp_path, "v1")
    run_deploy(tmp_path, "v2", bake_hours=[0.0, 0.0])
    outputs, text = run_advance(tmp_path, "promote")
    assert (outputs.status, outputs.production_version, outputs.rollout_in_progress) == ("promoted", "v2", False)
    assert "| advanced | v2 | 50 % |" in text and "| promoted | v2 | 100 % |" in text
    rollout = json.loads((tmp_path / "store" / "m" / "rollout.json").read_text())
    assert rollout["canary"] is None and rollout["stable"]["version"] == "v2"
    assert [h["action"] for h in rollout["history"]] == ["deployed", "canary_started", "advanced", "promoted"]
    outputs, _ = run_deploy(tmp_path, "v2")
    assert (outputs.status, outputs.traffic_percent) == ("unchanged", 100)


def test_component_interfaces() -> None:
    outputs = advance_rollout.component_spec.outputs
    assert {name: spec.type for name, spec in outputs.items()} == {
        "record": "system.Markdown@0.0.1",
        "status": "String",
        "production_version": "String",
        "production_model_uri": "String",
        "reference_data_uri": "String",
        "trained_through": "String",
        "rollout_in_progress": "Boolean",
    }
    outputs = deploy_canary.component_spec.outputs
    assert {name: spec.type for name, spec in outputs.items()} == {
        "record": "system.Markdown@0.0.1", "status": "String", "version": "String", "traffic_percent": "Integer",
    }
    assert all(spec.description for spec in outputs.values())
    inputs = deploy_canary.component_spec.inputs
    assert inputs["candidate"].type == "system.Model@0.0.1"
    assert (inputs["rollout_steps"].default, inputs["bake_hours"].default) == ([10, 50, 100], [24.0, 48.0])
    assert inputs["deploy_target"].default == "local"
    assert deploy_canary.component_spec.implementation.container.image == DEPLOY_IMAGE
