"""Kubeflow Trainer's real CRDs (../shared/trainer-crds beside the repository; absent in a user's own clone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

from kserve_crds import closed

CRD_DIR = Path(__file__).resolve().parents[2] / "shared" / "trainer-crds"


def schema(plural: str, version: str = "v1alpha1") -> dict[str, Any] | None:
    """The openAPIV3Schema of one served version, or None when the CRDs are not here."""
    path = CRD_DIR / f"trainer.kubeflow.org_{plural}.yaml"
    if not path.exists():
        return None
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]


def validator(plural: str) -> jsonschema.Draft7Validator | None:
    """A validator of the schema as the API server applies it (unknown fields refused), or None."""
    found = schema(plural)
    return None if found is None else jsonschema.Draft7Validator(closed(found))
