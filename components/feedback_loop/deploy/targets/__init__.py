"""Where a rollout is served and its state kept: one module per kind of target, picked by name.

A new target is one new module here (a class with `read`, `write`, `observe`,
`serving_since` and a `from_settings` class method) plus one line in `TARGETS`. `write`
applies only on top of the state `read` saw, else raises `rollout.RolloutConflict`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from feedback_loop.deploy.analysis import Observation
from feedback_loop.deploy.rollout import RolloutState
from feedback_loop.deploy.targets.kserve import KServeTarget
from feedback_loop.deploy.targets.local import LocalTarget
from feedback_loop.errors import SettingsError


class Target(Protocol):
    """Where a rollout is served and its state kept."""

    def read(self) -> RolloutState | None: ...

    def write(self, state: RolloutState) -> None: ...

    def observe(self, state: RolloutState) -> Observation: ...

    def serving_since(self, state: RolloutState) -> datetime | None: ...


# deploy_target -> the factory `make_target` calls with keywords store_uri, model_name,
# namespace, service_account and api (each takes what it needs). The order is the one
# the error message lists.
TARGETS: dict[str, Callable[..., Target]] = {
    "local": LocalTarget.from_settings,
    "kserve": KServeTarget.from_settings,
}


def make_target(
    deploy_target: str, store_uri: str, model_name: str, namespace: str = "default", service_account: str = "", api: Any = None
) -> Target:
    """The target named `deploy_target`, configured for one model."""
    factory = TARGETS.get(deploy_target)
    if factory is None:
        raise SettingsError(f"deploy_target {deploy_target!r} is not one of: {', '.join(TARGETS)}")
    return factory(store_uri=store_uri, model_name=model_name, namespace=namespace, service_account=service_account, api=api)
