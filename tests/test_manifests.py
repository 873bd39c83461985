"""The kustomize manifests: valid KServe objects, least-privilege RBAC, secrets without values."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

import kserve_crds

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"


def documents() -> list[dict]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
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


def test_rollout_role_is_least_privilege() -> None:
    (role,) = of_kind("Role")
    assert role["rules"] == [
        {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"], "verbs": ["get", "list", "watch", "create", "patch"]}
    ]
    assert not of_kind("ClusterRole") and not of_kind("ClusterRoleBinding")
    (binding,) = of_kind("RoleBinding")
    assert binding["subjects"][0]["name"] == of_kind("ServiceAccount")[0]["metadata"]["name"]


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
