"""Make an adopted version production: stable at 100 % on a target that holds no rollout state yet.

Locally the state file is written at once. On KServe the InferenceService already serves the
model: its current storageUri becomes the stable release (so a later roll-back returns to
exactly what served), only the rollout annotation is added, and traffic is not touched;
with `repoint`, the storageUri moves to the adopted copy in the model store.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from feedback_loop import storage
from feedback_loop.deploy.publish import publish, version_dir_uri
from feedback_loop.deploy.rollout import DEPLOYED, Release, RolloutState, Transition, format_time
from feedback_loop.deploy.targets import Target
from feedback_loop.deploy.targets.kserve import KServeTarget
from feedback_loop.errors import DeploymentError


def adopt(
    model_dir: Path, store_uri: str, model_name: str, version: str, target: Target, now: datetime, *, repoint: bool = False
) -> tuple[RolloutState, Transition]:
    """Publishes `model_dir` as `version` (its marker last) and records it as the stable version of `target`."""
    kserve = isinstance(target, KServeTarget)
    serving_uri = check(target, model_name)  # read again: the InferenceService may have moved meanwhile
    if storage.is_complete(version_dir_uri(store_uri, model_name, version)):
        raise DeploymentError(f"{model_name} {version} is already in the model store: adopt it under another --version")
    release = publish(model_dir, store_uri, model_name, version)
    if kserve and not repoint:
        release = Release(version, release.uri, serving_uri)  # what serves stays what serves
    where = f"storageUri {release.storage_uri}" + (" (re-pointed to the adopted copy)" if kserve and repoint else "")
    reason = f"adopted: the model in production, {where}" + ("; traffic unchanged" if kserve else "")
    transition = Transition(format_time(now), DEPLOYED, version, 100, reason)
    state = RolloutState(stable=release, history=[transition.to_dict()])
    if kserve:
        target.adopt(state, repoint=repoint)
    else:
        target.write(state)
    return state, transition


def check(target: Target, model_name: str) -> str:
    """Refuses a target the loop already manages; returns what an InferenceService serves ("" locally).

    Cheap: run it before building the version, and again (inside `adopt`) before writing.
    """
    if isinstance(target, KServeTarget):
        return target.serving_uri()
    state = target.read()
    if state is not None and state.stable is not None:
        raise DeploymentError(
            f"{model_name} already has rollout state on {target} ({state.stable.version} serves): adopt registers a model the "
            "loop does not manage yet; use `feedback-loop rollback --to VERSION` to serve another version"
        )
    return ""
