"""Deployment stage: the InferenceService builder against KServe's CRD, the rollout state
machine, publishing to the model store, the local and KServe targets, and the two components."""

from __future__ import annotations

import copy
import functools
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import kmock
from jsonschema.protocols import Validator
import pytest
from click.testing import CliRunner
from kfp.dsl import Markdown, Model

import kserve_crds
from kserve_emulator import GROUP, PLURAL, VERSION, ApiServerThread, kubernetes_api

from feedback_loop import storage
from feedback_loop.cli import main
from feedback_loop.deploy import core, isvc, rollout
from feedback_loop.deploy.component import advance_rollout, deploy_canary
from feedback_loop.deploy.publish import publish
from feedback_loop.deploy.record import record_deployments
from feedback_loop.deploy.targets import make_target
from feedback_loop.deploy.targets.kserve import KServeTarget
from feedback_loop.deploy.targets.local import LocalTarget
from feedback_loop.errors import DeploymentError, ModelNotFound, SettingsError
from feedback_loop.feedback import store as feedback_store
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


def release(version: str) -> rollout.Release:
    return rollout.Release.at(version, f"file:///store/m/{version}")


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
    """The API emulator checks objects against the CRD where it is available, as the API server does under Strict."""
    schema = load_crd_schema()
    return jsonschema.Draft7Validator(closed(schema)) if schema is not None else None


@pytest.fixture
def kube(api_validator: Validator | None) -> Iterator[tuple[ApiServerThread, Any]]:
    """The Kubernetes API emulator (tests/kserve_emulator.py) and the official client pointed at it."""
    with kubernetes_api(api_validator) as (server, api):
        yield server, api


def isvc_of(api: Any, name: str = "cats-vs-dogs", namespace: str = "ml") -> dict[str, Any]:
    return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def predictor_of(api: Any, name: str = "cats-vs-dogs", namespace: str = "ml") -> dict[str, Any]:
    return isvc_of(api, name, namespace)["spec"]["predictor"]


def requests_to(server: ApiServerThread) -> list[tuple[kmock.action, str]]:
    """What the API server was asked, in order: the action and the fieldValidation sent with it."""
    return [(request.action, request.params.get("fieldValidation", "")) for request in server.handler]


# --- the InferenceService builder against KServe's CRD ------------------------------------------


@pytest.mark.parametrize("canary", [None, 10, 0])
def test_inference_service_is_valid_against_the_crd(strict_validator: Validator, canary: int | None) -> None:
    manifest = isvc.inference_service(
        "cats-vs-dogs", "ml", "gs://bucket/models/cats-vs-dogs/v1/saved_model", canary_percent=canary,
        service_account="model-reader", annotations={"a.b/c": "d"},
    )
    strict_validator.validate(manifest)
    predictor = manifest["spec"]["predictor"]
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    # Our ServingRuntime (manifests/serving-runtime.yaml) serves this format, for every family.
    assert predictor["model"]["modelFormat"] == {"name": "feedback-loop", "version": "1"}
    assert predictor["model"]["runtime"] == "feedback-loop-serve"
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
    state, moved = rollout.start(rollout.RolloutState(), release("v1"), T0)
    assert (moved.action, moved.traffic) == ("deployed", 100)
    assert state.stable == release("v1") and state.canary is None and rollout.traffic(state) == 0
    assert state.stable.storage_uri == "file:///store/m/v1/saved_model"


def test_canary_walks_the_schedule_then_promotes() -> None:
    state, _ = rollout.start(rollout.RolloutState(), release("v1"), T0)
    state, moved = rollout.start(state, release("v2"), T0)
    assert (moved.action, moved.traffic, rollout.traffic(state)) == ("canary_started", 10, 10)

    state, moved = rollout.advance(state, T0 + 23 * HOUR)
    assert moved.action == "waiting" and rollout.traffic(state) == 10

    state, moved = rollout.advance(state, T0 + 24 * HOUR)
    assert (moved.action, rollout.traffic(state), state.step_started_at) == ("advanced", 50, (T0 + 24 * HOUR).isoformat())

    state, moved = rollout.advance(state, T0 + (24 + 47) * HOUR)
    assert moved.action == "waiting" and rollout.traffic(state) == 50

    state, moved = rollout.advance(state, T0 + (24 + 48) * HOUR)
    assert (moved.action, moved.version, moved.traffic) == ("promoted", "v2", 100)
    assert state.stable == release("v2") and state.canary is None

    state, moved = rollout.advance(state, T0 + 100 * HOUR)
    assert moved.action == "idle"
    assert [h["action"] for h in state.history] == ["deployed", "canary_started", "advanced", "promoted"]
    assert rollout.RolloutState.from_json(state.to_json()) == state


def test_rollback_restores_stable() -> None:
    state, _ = rollout.start(rollout.RolloutState(), release("v1"), T0)
    state, _ = rollout.start(state, release("v2"), T0)
    unhealthy, moved = rollout.advance(state, T0 + HOUR, verdict="unhealthy")
    assert (moved.action, moved.version, moved.traffic) == ("rolled_back", "v2", 0)
    assert unhealthy.stable == release("v1") and unhealthy.canary is None

    aborted, moved = rollout.rollback(state, T0 + HOUR, "operator: bad reviews")
    assert moved.action == "rolled_back" and "operator: bad reviews" in moved.reason and aborted.canary is None
    assert rollout.rollback(aborted, T0 + 2 * HOUR, "again")[1].action == "idle"
    # "inconclusive" holds the step even after the bake time.
    assert rollout.advance(state, T0 + 99 * HOUR, verdict="inconclusive")[1].action == "waiting"


def test_redeploying_a_serving_version_is_a_no_op() -> None:
    state, _ = rollout.start(rollout.RolloutState(), release("v1"), T0)
    same, moved = rollout.start(state, release("v1"), T0 + HOUR)
    assert moved.action == "unchanged" and same == state
    state, _ = rollout.start(state, release("v2"), T0)
    same, moved = rollout.start(state, release("v2"), T0 + HOUR)
    assert (moved.action, moved.traffic) == ("unchanged", 10) and same == state


def test_deploy_while_a_canary_is_in_progress_raises() -> None:
    state, _ = rollout.start(rollout.RolloutState(), release("v1"), T0)
    state, _ = rollout.start(state, release("v2"), T0)
    with pytest.raises(DeploymentError, match="a rollout of v2 is in progress"):
        rollout.start(state, release("v3"), T0 + HOUR)


def test_schedule_without_canary_steps_replaces_directly() -> None:
    state, _ = rollout.start(rollout.RolloutState(steps=[100], bake_hours=[]), release("v1"), T0)
    state, moved = rollout.start(state, release("v2"), T0)
    assert moved.action == "deployed" and state.stable == release("v2")
    # KFP passes list parameters through a protobuf Struct: whole numbers arrive as floats.
    assert rollout.schedule([10.0, 50.0, 100.0], [24, 48]) == ([10, 50, 100], [24.0, 48.0])
    with pytest.raises(SettingsError, match="whole percents"):
        rollout.schedule([12.5, 100], [1])
    with pytest.raises(SettingsError, match="rise strictly"):
        rollout.schedule([50, 10, 100], [1, 1])
    with pytest.raises(SettingsError, match="needs 2"):
        rollout.schedule([10, 50, 100], [1])


# --- publishing to the model store -----------------------------------------------------------


def test_publish_writes_a_complete_version_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = make_model_dir(tmp_path, "v1")
    store = f"file://{tmp_path / 'store'}"
    published = publish(model_dir, store, "m", "v1")
    assert published.uri == f"file://{tmp_path / 'store' / 'm' / 'v1'}"
    assert published.storage_uri == published.uri + "/saved_model"
    assert storage.is_complete(published.uri)
    assert (tmp_path / "store" / "m" / "v1" / "saved_model" / "1" / "saved_model.pb").exists()

    def no_upload(*_: Any) -> None:
        raise AssertionError("a complete version must not be uploaded again")

    monkeypatch.setattr(storage, "upload_dir", no_upload)
    assert publish(model_dir, store, "m", "v1") == published


def test_failed_upload_leaves_no_version_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = make_model_dir(tmp_path, "v1")

    copytree = shutil.copytree

    def disk_full(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        if str(tmp_path / "store") in str(target):  # the upload into the store, not publish's own staging copy
            raise OSError(28, "No space left on device")
        copytree(source, target, *args, **kwargs)

    monkeypatch.setattr(shutil, "copytree", disk_full)
    with pytest.raises(OSError, match="No space left"):
        publish(model_dir, str(tmp_path / "store"), "m", "v1")
    assert list((tmp_path / "store" / "m").iterdir()) == []  # no version, no staging directory


def test_publish_needs_a_saved_model(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path, "v1")
    shutil.rmtree(model_dir / "saved_model")
    with pytest.raises(ModelNotFound, match="saved_model"):
        publish(model_dir, str(tmp_path / "store"), "m", "v1")


def test_describe_reads_lineage_of_stable_and_canary(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    v1 = publish(make_model_dir(tmp_path, "v1", "2025-01-31T00:00:00+00:00"), store, "m", "v1")
    v2 = publish(make_model_dir(tmp_path, "v2", "2025-02-28T06:00:00+00:00"), store, "m", "v2")
    assert core.describe(None) == {
        "production_version": "", "production_model_uri": "", "reference_data_uri": "",
        "trained_through": "", "rollout_in_progress": False,
    }
    state = rollout.RolloutState(stable=v1, canary=v2, step_started_at=T0.isoformat())
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
    target = LocalTarget(store, "m")
    assert target.read() is None
    state, transition = core.deploy(make_model_dir(tmp_path, "v1"), store, "m", target, T0)
    assert transition.action == "deployed"
    assert target.read() == state
    assert json.loads((tmp_path / "store" / "m" / "rollout.json").read_text())["stable"]["version"] == "v1"
    assert storage.list_dirs(f"file://{tmp_path / 'store' / 'm'}") == ["v1"]


def test_refused_deploy_uploads_nothing(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    target = LocalTarget(store, "m")
    core.deploy(make_model_dir(tmp_path, "v1"), store, "m", target, T0)
    core.deploy(make_model_dir(tmp_path, "v2"), store, "m", target, T0)
    with pytest.raises(DeploymentError, match="in progress"):
        core.deploy(make_model_dir(tmp_path, "v3"), store, "m", target, T0 + HOUR)
    assert storage.list_dirs(f"file://{tmp_path / 'store' / 'm'}") == ["v1", "v2"]


def test_kserve_target_creates_then_patches_the_predictor(tmp_path: Path, kube: tuple[ApiServerThread, Any]) -> None:
    server, api = kube
    target = KServeTarget("cats-vs-dogs", "ml", api, service_account="model-reader")
    store = str(tmp_path / "store")

    core.deploy(make_model_dir(tmp_path, "v1"), store, "cats-vs-dogs", target, T0)
    # Read by deploy, read again by write, then created; a write refuses a field the CRD does not know.
    assert requests_to(server) == [(kmock.action.FETCH, ""), (kmock.action.FETCH, ""), (kmock.action.CREATE, "Strict")]
    created = isvc_of(api)
    assert created["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert "canaryTrafficPercent" not in created["spec"]["predictor"]
    assert created["spec"]["predictor"]["model"]["storageUri"].endswith("/cats-vs-dogs/v1/saved_model")
    assert created["spec"]["predictor"]["serviceAccountName"] == "model-reader"

    state, _ = core.deploy(make_model_dir(tmp_path, "v2"), store, "cats-vs-dogs", target, T0)
    assert requests_to(server)[-1] == (kmock.action.UPDATE, "Strict")
    predictor = predictor_of(api)
    assert predictor["canaryTrafficPercent"] == 10
    assert "canaryTrafficPercent" not in isvc_of(api)["spec"]
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


def test_kserve_rollback_pins_traffic_to_the_stable_revision(tmp_path: Path, kube: tuple[ApiServerThread, Any]) -> None:
    _, api = kube
    target = KServeTarget("cats-vs-dogs", "ml", api)
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
def test_kserve_raw_deployment_refuses_a_canary(
    tmp_path: Path, kube: tuple[ApiServerThread, Any], annotation: str | None, status_mode: str | None
) -> None:
    _, api = kube
    target = KServeTarget("cats-vs-dogs", "ml", api)
    store = str(tmp_path / "store")
    core.deploy(make_model_dir(tmp_path, "v1"), store, "cats-vs-dogs", target, T0)
    # The mode the service asks for (None removes the annotation), or the one KServe reports.
    mode = {"metadata": {"annotations": {isvc.DEPLOYMENT_MODE_ANNOTATION: annotation}}}
    api.patch_namespaced_custom_object(GROUP, VERSION, "ml", PLURAL, "cats-vs-dogs", mode)
    if status_mode:
        api.patch_namespaced_custom_object_status(GROUP, VERSION, "ml", PLURAL, "cats-vs-dogs", {"status": {"deploymentMode": status_mode}})
    before = isvc_of(api)

    with pytest.raises(DeploymentError, match=r"runs in (RawDeployment|Standard) mode, where canaryTrafficPercent is ignored"):
        core.deploy(make_model_dir(tmp_path, "v2"), store, "cats-vs-dogs", target, T0)
    assert isvc_of(api) == before
    # Without a canary step the same service takes the new version.
    core.deploy(make_model_dir(tmp_path, "v2"), store, "cats-vs-dogs", target, T0, steps=[100], bake_hours=[])
    assert predictor_of(api)["model"]["storageUri"].endswith("/v2/saved_model")


def test_kserve_api_errors_say_what_to_do(kube: tuple[ApiServerThread, Any]) -> None:
    server, api = kube
    # What the API server answers a ServiceAccount without RBAC on inferenceservices.
    server.handler[kmock.action.FETCH, kmock.resource(GROUP, VERSION, PLURAL)] << 403 << {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": 'inferenceservices.serving.kserve.io "cats-vs-dogs" is forbidden: '
        'User "system:serviceaccount:ml:default" cannot get resource "inferenceservices" in API group "serving.kserve.io"',
    }

    with pytest.raises(DeploymentError, match=r"get InferenceService ml/cats-vs-dogs failed \(403 .* is forbidden: .*\): grant the deploy ServiceAccount"):
        KServeTarget("cats-vs-dogs", "ml", api).read()
    with pytest.raises(SettingsError, match="deploy_target 'k8s'"):
        make_target("k8s", "file:///s", "m")



def test_kubernetes_client_is_built_only_when_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    target = KServeTarget("cats-vs-dogs", "ml")  # no config read yet
    with pytest.raises(DeploymentError, match="no Kubernetes credentials"):
        target.read()
    code = "import sys, feedback_loop.deploy.core; print(sorted({'kfp', 'kubernetes'} & set(sys.modules)))"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]"  # core imports neither KFP nor the Kubernetes client


def test_record_is_a_no_op_without_a_database() -> None:
    _, moved = rollout.start(rollout.RolloutState(), release("v1"), T0)
    assert record_deployments(None, "m", [moved]) == 0
    assert record_deployments("", "m", [moved]) == 0


def deployment_rows(database_url: str) -> list[tuple[Any, ...]]:
    conn = feedback_store.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT model_name, version, action, traffic_percent, details->>'stable' FROM deployments ORDER BY id")
            return cur.fetchall()
    finally:
        conn.close()


def test_record_writes_a_row_per_change_to_the_database_it_is_given(database_url: str) -> None:
    state, moved = rollout.start(rollout.RolloutState(), release("v1"), T0)
    _, waiting = rollout.advance(state, T0 + HOUR)  # a no-op: not recorded
    assert record_deployments(database_url, "m", [moved, waiting], state) == 1
    assert deployment_rows(database_url) == [("m", "v1", "deployed", 100, "v1")]


def test_cli_rollback_records_the_roll_back(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store_uri = str(tmp_path / "store")
    target = LocalTarget(store_uri, "m")
    core.deploy(make_model_dir(tmp_path, "v1"), store_uri, "m", target, T0)
    core.deploy(make_model_dir(tmp_path, "v2"), store_uri, "m", target, T0)
    for name, value in {"RETRAIN_MODEL_STORE_URI": store_uri, "RETRAIN_MODEL_NAME": "m", "DATABASE_URL": database_url}.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["rollback", "--target", "local", "--reason", "bad reviews"])
    assert result.exit_code == 0, result.output
    assert "rolled_back: bad reviews; v1 serves 100 %" in result.output
    assert deployment_rows(database_url) == [("m", "v2", "rolled_back", 0, "v1")]


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
    assert inputs["deploy_target"].default == "kserve"  # the settings' default
    assert deploy_canary.component_spec.implementation.container.image == DEPLOY_IMAGE
