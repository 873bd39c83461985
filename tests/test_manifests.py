"""The kustomize manifests: valid KServe objects, least-privilege RBAC, secrets without values."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

import kserve_crds
import trainer_crds

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"


def documents(folder: Path = MANIFESTS) -> list[dict]:
    docs = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def of_kind(kind: str) -> list[dict]:
    return [d for d in documents() if d["kind"] == kind]


@pytest.mark.parametrize("kind,plural,version", [("InferenceService", "inferenceservices", "v1beta1"), ("ServingRuntime", "servingruntimes", "v1alpha1")])
def test_kserve_objects_validate_against_the_real_crd(kind: str, plural: str, version: str) -> None:
    schema = kserve_crds.schema(plural, version)
    if schema is None:
        pytest.skip(f"KServe CRDs not found at {kserve_crds.CRD_DIR}")
    (obj,) = of_kind(kind)
    jsonschema.Draft7Validator(kserve_crds.closed(schema)).validate(obj)


def test_the_optional_tensorflow_serving_runtime_validates_too() -> None:
    schema = kserve_crds.schema("servingruntimes", "v1alpha1")
    if schema is None:
        pytest.skip(f"KServe CRDs not found at {kserve_crds.CRD_DIR}")
    (runtime,) = documents(MANIFESTS / "tensorflow-serving")
    jsonschema.Draft7Validator(kserve_crds.closed(schema)).validate(runtime)
    assert runtime["spec"]["supportedModelFormats"][0]["name"] == "tensorflow"
    assert "captures no prediction" in (MANIFESTS / "tensorflow-serving" / "serving-runtime.yaml").read_text()


def test_our_runtime_is_the_builders_and_serves_what_the_inference_services_ask_for() -> None:
    from feedback_loop.deploy import isvc, runtime

    (ours,) = of_kind("ServingRuntime")
    assert ours == runtime.serving_runtime(), "manifests/serving-runtime.yaml is stale: regenerate it from deploy.runtime.serving_runtime()"
    supported = {(f["name"], f["version"]) for f in ours["spec"]["supportedModelFormats"]}
    rendered = isvc.inference_service("cats-vs-dogs", "ml", "gs://b/m/v1/saved_model")["spec"]["predictor"]["model"]
    (committed,) = of_kind("InferenceService")
    for model in (rendered, committed["spec"]["predictor"]["model"]):
        assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in supported
        assert model["runtime"] == ours["metadata"]["name"]
    container = ours["spec"]["containers"][0]
    assert container["image"].split(":")[-1] != "latest" and {"v1", "v2"} <= set(ours["spec"]["protocolVersions"])
    # The DSN and the HMAC key come from the Secret the pipeline reads, never as values.
    from feedback_loop.pipelines.retraining_pipeline import DB_SECRET

    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]} == {DB_SECRET}
    assert all("value" not in e for e in container["env"])


def test_the_training_runtime_validates_against_the_trainer_crd() -> None:
    validator = trainer_crds.validator("clustertrainingruntimes")
    if validator is None:
        pytest.skip(f"Trainer CRDs not found at {trainer_crds.CRD_DIR}")
    (runtime,) = of_kind("ClusterTrainingRuntime")
    validator.validate(runtime)
    from feedback_loop.train.trainjob import RUNTIME

    assert runtime["metadata"]["name"] == RUNTIME


def test_roles_are_least_privilege() -> None:
    roles = {role["metadata"]["name"]: role["rules"] for role in of_kind("Role")}
    assert roles == {
        "feedback-loop-rollout": [
            {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"], "verbs": ["get", "list", "watch", "create", "patch"]}
        ],
        "feedback-loop-training": [
            {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"], "verbs": ["create", "get", "watch", "delete"]}
        ],
    }
    assert not of_kind("ClusterRole") and not of_kind("ClusterRoleBinding")
    account = of_kind("ServiceAccount")[0]["metadata"]["name"]
    bindings = of_kind("RoleBinding")
    assert sorted(b["roleRef"]["name"] for b in bindings) == sorted(roles)
    assert all(b["subjects"] == [{"kind": "ServiceAccount", "name": account}] for b in bindings)


def test_secret_templates_carry_no_values() -> None:
    for secret in of_kind("Secret"):
        assert not secret.get("data") and not secret.get("stringData"), secret["metadata"]["name"]


def test_the_pipeline_and_the_manifests_name_the_same_secret() -> None:
    from feedback_loop.pipelines.retraining_pipeline import DB_SECRET

    assert DB_SECRET in {s["metadata"]["name"] for s in of_kind("Secret")}


def test_kustomize_renders() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed here")
    rendered = subprocess.run([kubectl, "kustomize", str(MANIFESTS)], capture_output=True, text=True, check=True).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered) if d]
    assert sorted(kinds) == sorted(d["kind"] for d in documents())
