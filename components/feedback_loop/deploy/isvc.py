"""A pure builder of KServe `InferenceService` manifests (serving.kserve.io/v1beta1).

Nothing here talks to a cluster; the rollout (`targets.kserve.KServeTarget`) decides what to apply.
"""

from __future__ import annotations

import copy
import re
from typing import Any

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
# Our model format: a version directory's SavedModel with its lineage, served by our
# ServingRuntime (deploy/runtime.py: the serve image's predictor) for every family.
MODEL_FORMAT = "feedback-loop"
MODEL_FORMAT_VERSION = "1"
RUNTIME = "feedback-loop-serve"

DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# Modes without Knative revisions, where canaryTrafficPercent has no effect
# ("RawDeployment" is the pre-0.15 name of "Standard").
RAW_MODES = frozenset({"RawDeployment", "Standard"})

DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"cpu": "1", "memory": "2Gi"},
}

# KServe's admission webhook rejects other names (IsvcNameFmt in inference_service_validation.go).
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def inference_service(
    name: str,
    namespace: str,
    storage_uri: str,
    *,
    canary_percent: int | None = None,
    runtime: str = RUNTIME,
    service_account: str = "",
    annotations: dict[str, str] | None = None,
    min_replicas: int = 1,
    resources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An InferenceService serving the version at `storage_uri` with our ServingRuntime.

    Args:
        name: InferenceService name (a DNS label starting with a letter).
        namespace: Kubernetes namespace.
        storage_uri: Directory holding the numbered SavedModel versions (`<version uri>/saved_model`).
        canary_percent: Share of traffic for the latest revision; the rest stays on the last
            rolled-out revision. None leaves the field out, which sends 100 % to the latest.
        runtime: ServingRuntime name (ours, RUNTIME, by default); "" lets KServe pick one that supports the format.
        service_account: ServiceAccount whose secrets give access to the model store.
        annotations: Metadata annotations.
        min_replicas: Fewest predictor replicas (0 allows scale to zero in Knative mode).
        resources: Container requests/limits; defaults to DEFAULT_RESOURCES.

    Returns:
        The manifest as a plain dict, ready for the Kubernetes API or `yaml.safe_dump`.
    """
    if not _NAME.match(name):
        raise ValueError(f"InferenceService name {name!r} must be lowercase letters, digits and '-', starting with a letter")
    if canary_percent is not None and not 0 <= canary_percent <= 100:
        raise ValueError(f"canary_percent must be between 0 and 100, got {canary_percent}")
    if min_replicas < 0:
        raise ValueError(f"min_replicas must be 0 or more, got {min_replicas}")

    model: dict[str, Any] = {
        "modelFormat": {"name": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION},
        "storageUri": storage_uri,
        "resources": copy.deepcopy(resources if resources is not None else DEFAULT_RESOURCES),
    }
    if runtime:
        model["runtime"] = runtime
    predictor: dict[str, Any] = {"minReplicas": min_replicas, "model": model}
    if service_account:
        predictor["serviceAccountName"] = service_account
    if canary_percent is not None:
        # Under spec.predictor (a component extension), never under spec: the API server prunes it there.
        predictor["canaryTrafficPercent"] = canary_percent

    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": {"predictor": predictor}}
