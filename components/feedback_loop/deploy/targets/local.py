"""The local target: the rollout state as `<store>/<model_name>/rollout.json`, which the local model server follows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from feedback_loop import storage
from feedback_loop.deploy.analysis import Observation
from feedback_loop.deploy.rollout import RolloutConflict, RolloutState, parse_time
from feedback_loop.layout import ROLLOUT_FILE


class LocalTarget:
    """The state as `<store>/<model_name>/rollout.json`; the local model server serves what it says.

    One rollout at a time, as on KServe: `write` applies only on top of the state `read`
    saw (a compare-and-swap under an exclusive lock file for `file://`, an object-generation
    precondition for `gs://`), else raises `RolloutConflict` and the runner reads again.
    """

    def __init__(self, store_uri: str, model_name: str) -> None:
        self.uri = storage.join(storage.normalize(store_uri), model_name, ROLLOUT_FILE)
        self._seen: str | None = None  # the state's token at read(); None: not read yet

    @classmethod
    def from_settings(cls, *, store_uri: str, model_name: str, **_: Any) -> LocalTarget:
        """What `make_target` calls; the namespace and the Kubernetes client mean nothing here."""
        return cls(store_uri, model_name)

    def read(self) -> RolloutState | None:
        data, self._seen = storage.read_versioned(self.uri)
        return RolloutState.from_json(data, self.uri) if data is not None else None

    def write(self, state: RolloutState) -> None:
        data = (state.to_json(indent=2) + "\n").encode()
        seen = self._seen if self._seen is not None else storage.read_versioned(self.uri)[1]
        written = storage.write_if_unchanged(self.uri, data, seen)
        if written is None:
            self._seen = None
            raise RolloutConflict(
                f"the rollout in {self.uri} was changed by another run since this one read it; "
                "one rollout at a time: read it again"
            )
        self._seen = written

    def observe(self, state: RolloutState) -> Observation:
        """The local model server serves any complete version; its revisions are the versions."""
        if state.canary is None:
            return Observation(None)
        if not storage.is_complete(state.canary.uri):
            return Observation(False, detail=f"{state.canary.uri} is not complete in the model store")
        stable = state.stable.version if state.stable else ""
        return Observation(True, state.canary.version, stable, f"{state.canary.version} complete in the model store")

    def serving_since(self, state: RolloutState) -> datetime | None:
        """The local model server follows the file: a step serves from the moment it is written."""
        return parse_time(state.step_started_at) if state.canary is not None and state.step_started_at else None

    def __str__(self) -> str:
        return f"local ({self.uri})"
