"""KServe's real CRDs (../shared/kserve-crds beside the repository; absent in a user's own clone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CRD_DIR = Path(__file__).resolve().parents[2] / "shared" / "kserve-crds"


def crd_file(plural: str) -> Path:
    return CRD_DIR / f"serving.kserve.io_{plural}.yaml"


def schema(plural: str, version: str) -> dict[str, Any] | None:
    """The openAPIV3Schema of one served version, or None when the CRDs are not here."""
    path = crd_file(plural)
    if not path.exists():
        return None
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]


def closed(schema: Any) -> Any:
    """The schema as the API server applies it: unknown fields are not allowed.

    A structural CRD schema prunes fields it does not list (or, with fieldValidation=Strict,
    refuses them); JSON Schema accepts them unless told otherwise. The InferenceService CRD
    sets neither `additionalProperties: false` nor, under `spec`, preserve-unknown-fields,
    so every object that lists its properties is closed here.
    """
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: closed(value) for key, value in schema.items()}
    lists_fields = isinstance(schema.get("properties"), dict)
    if lists_fields and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    return schema
