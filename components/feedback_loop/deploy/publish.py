"""Publishing to the model store: `<store>/<model>/<version>/`, its completion marker written last."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from feedback_loop import storage
from feedback_loop.deploy.rollout import Release
from feedback_loop.errors import DeploymentError, ModelNotFound
from feedback_loop.layout import COMPLETE_MARKER, EVIDENCE_DIR, EVIDENCE_FILES, LINEAGE_FILE, SAVED_MODEL_DIR, TEST_DATA_FILE

log = logging.getLogger(__name__)

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SCRATCH_PREFIX = "feedback-loop-publish-"


def version_dir_uri(store_uri: str, model_name: str, version: str) -> str:
    return storage.join(storage.normalize(store_uri), model_name, version)


def candidate_version(model_dir: Path) -> str:
    """The version a trained model directory declares in its lineage.json."""
    path = Path(model_dir) / LINEAGE_FILE
    if not path.is_file():
        raise ModelNotFound(f"{path} not found: the candidate must be a version directory written by train_model")
    version = str(json.loads(path.read_text()).get("version") or "")
    if not _VERSION.match(version):
        raise DeploymentError(f"{path} declares version {version!r}: a version must be letters, digits, '.', '_' or '-'")
    return version


def publish(
    model_dir: Path, store_uri: str, model_name: str, version: str, evidence: dict[str, str] | None = None
) -> Release:
    """Uploads a version directory to `<store>/<model_name>/<version>`; a complete one is left alone.

    `evidence` (file name in EVIDENCE_FILES -> Markdown) is published under `evidence/`. The
    lineage is also copied into each SavedModel's `assets.extra/` (which TF Serving ignores),
    so a predictor given only the SavedModel directory (KServe's storageUri) knows its version,
    and `saved_model/` gets its own completion marker, so that directory alone proves it is
    whole to the model server (TF Serving ignores a name that is not a number).
    """
    model_dir = Path(model_dir)
    if not (model_dir / SAVED_MODEL_DIR).is_dir():
        raise ModelNotFound(f"{model_dir} has no {SAVED_MODEL_DIR}/ directory: the serving runtime would load nothing")
    uri = version_dir_uri(store_uri, model_name, version)
    if storage.is_complete(uri):
        log.info("%s %s is already in the model store at %s", model_name, version, uri)
        return Release.at(version, uri)
    # A known prefix: the scratch of a publish killed outright (no `finally` runs) is swept by clean-up.
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX) as scratch:
        staged = Path(scratch) / version
        shutil.copytree(model_dir, staged)
        lineage = staged / LINEAGE_FILE
        for numbered in (p for p in (staged / SAVED_MODEL_DIR).iterdir() if p.is_dir() and lineage.is_file()):
            (numbered / "assets.extra").mkdir(exist_ok=True)
            shutil.copyfile(lineage, numbered / "assets.extra" / LINEAGE_FILE)
        (staged / SAVED_MODEL_DIR / COMPLETE_MARKER).write_bytes(b"")
        for name, text in (evidence or {}).items():
            if name not in EVIDENCE_FILES:
                raise ValueError(f"evidence file {name!r} is not one of {EVIDENCE_FILES}")
            (staged / EVIDENCE_DIR).mkdir(exist_ok=True)
            (staged / EVIDENCE_DIR / name).write_text(text)
        storage.upload_dir(staged, uri)
    log.info("published %s %s to %s", model_name, version, uri)
    return Release.at(version, uri)


def with_guard(model_dir: Path, guard: Path, scratch: Path) -> Path:
    """A copy of `model_dir` under `scratch` whose guard set is `guard`.

    The evaluation may retire the guard set train_model copied (the concept moved); the
    set the candidate was judged on is the one the next versions must be held to.
    """
    staged = Path(scratch) / Path(model_dir).name
    shutil.copytree(model_dir, staged)
    shutil.copyfile(guard, staged / TEST_DATA_FILE)
    return staged


def complete_release(store_uri: str, model_name: str, version: str) -> Release:
    """A version already in the store, as a rollout serves it; refused unless its upload completed."""
    if not _VERSION.match(version):
        raise DeploymentError(f"version {version!r} must be letters, digits, '.', '_' or '-'")
    uri = version_dir_uri(store_uri, model_name, version)
    if storage.is_complete(uri):
        return Release.at(version, uri)
    model_uri = storage.join(storage.normalize(store_uri), model_name)
    if version in storage.list_dirs(model_uri):
        raise ModelNotFound(f"{uri} is incomplete (no {COMPLETE_MARKER}: an interrupted upload); it cannot serve")
    known = ", ".join(v for v in storage.list_dirs(model_uri) if storage.is_complete(storage.join(model_uri, v))) or "none"
    raise ModelNotFound(f"{version} is not in the model store at {model_uri} (complete versions: {known})")


def read_lineage(version_uri: str) -> dict[str, Any]:
    uri = storage.join(version_uri, LINEAGE_FILE)
    if not storage.exists(uri):
        raise ModelNotFound(f"{uri} not found: the model store lost a version the rollout uses; restore it or deploy another")
    return json.loads(storage.read_bytes(uri))
