"""The local target: the rollout state as `<store>/<model_name>/rollout.json`, which the local model server follows."""

from __future__ import annotations

from typing import Any

from feedback_loop import storage
from feedback_loop.deploy.analysis import Observation
from feedback_loop.deploy.rollout import RolloutState
from feedback_loop.layout import ROLLOUT_FILE


class LocalTarget:
    """The state as `<store>/<model_name>/rollout.json`; the local model server serves what it says."""

    def __init__(self, store_uri: str, model_name: str) -> None:
        self.uri = storage.join(storage.normalize(store_uri), model_name, ROLLOUT_FILE)

    @classmethod
    def from_settings(cls, *, store_uri: str, model_name: str, **_: Any) -> LocalTarget:
        """What `make_target` calls; the namespace and the Kubernetes client mean nothing here."""
        return cls(store_uri, model_name)

    def read(self) -> RolloutState | None:
        return RolloutState.from_json(storage.read_bytes(self.uri)) if storage.exists(self.uri) else None

    def write(self, state: RolloutState) -> None:
        storage.write_bytes(self.uri, (state.to_json(indent=2) + "\n").encode())

    def observe(self, state: RolloutState) -> Observation:
        """The local model server serves any complete version; its revisions are the versions."""
        if state.canary is None:
            return Observation(None)
        if not storage.is_complete(state.canary.uri):
            return Observation(False, detail=f"{state.canary.uri} is not complete in the model store")
        stable = state.stable.version if state.stable else ""
        return Observation(True, state.canary.version, stable, f"{state.canary.version} complete in the model store")

    def __str__(self) -> str:
        return f"local ({self.uri})"
