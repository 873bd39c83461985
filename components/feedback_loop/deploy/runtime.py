"""A pure builder of our KServe `ServingRuntime` (serving.kserve.io/v1alpha1): the serve image's
predictor for the model format the rendered InferenceServices ask for, every family alike.

manifests/serving-runtime.yaml is this builder's output (tests/test_manifests.py compares
them). TensorFlow Serving (manifests/tensorflow-serving/) remains an option for a user who
wants it; it names no model version, captures nothing and takes no feedback, so the canary's
per-version feedback check has nothing to read there.
"""

from __future__ import annotations

from typing import Any

from feedback_loop.deploy import isvc
from feedback_loop.images import SERVE_IMAGE

API_VERSION = "serving.kserve.io/v1alpha1"
KIND = "ServingRuntime"
# The Secret the pipeline also reads (pipelines' DB_SECRET); optional keys: without them the
# predictor serves and captures nothing.
DB_SECRET, DSN_KEY, HMAC_KEY = "feedback-loop-db", "database-url", "hmac-key"
PORT = 8080


def serving_runtime(image: str = SERVE_IMAGE, name: str = isvc.RUNTIME, resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """Our ServingRuntime: `python -m feedback_loop.serving` on /mnt/models, v1 and v2 REST on PORT.

    KServe picks it for `modelFormat: {name: feedback-loop}` (autoSelect) and fills in
    `{{.Name}}` with the InferenceService's name, the model's name on the endpoints.
    """
    secret = lambda key: {"secretKeyRef": {"name": DB_SECRET, "key": key, "optional": True}}  # noqa: E731
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {
            "supportedModelFormats": [{"name": isvc.MODEL_FORMAT, "version": isvc.MODEL_FORMAT_VERSION, "autoSelect": True, "priority": 1}],
            "protocolVersions": ["v1", "v2"],
            "containers": [
                {
                    "name": "kserve-container",
                    "image": image,
                    "args": ["/mnt/models", "--model_name={{.Name}}", f"--http_port={PORT}"],
                    "env": [
                        {"name": "DATABASE_URL", "valueFrom": secret(DSN_KEY)},
                        {"name": "FEEDBACK_HMAC_KEY", "valueFrom": secret(HMAC_KEY)},
                    ],
                    "ports": [{"containerPort": PORT, "protocol": "TCP"}],
                    "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": PORT}, "periodSeconds": 5},
                    "resources": resources or {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
                }
            ],
        },
    }
