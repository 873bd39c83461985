"""The demo's scenarios by name: the settings each runs with and how it seeds its data.

A scenario's `seed(conn, settings, inputs_dir)` adds its traffic once (a second call adds
nothing) and returns the line the demo prints about it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedback_loop.demo.regression import SETTINGS
from feedback_loop.demo.scenario import RULES


@dataclass(frozen=True)
class Scenario:
    seed: Callable[[Any, Any, Path], str]
    settings: dict[str, Any] = field(default_factory=dict)  # the environment's RETRAIN_* win over these


def _cats_vs_dogs(conn: Any, settings: Any, inputs_dir: Path) -> str:
    from feedback_loop.demo import scenario

    seeded = scenario.seed(conn, settings.model_store_uri, settings.model_name, inputs_dir)
    if not seeded:
        return "already seeded: no new traffic since the last run"
    return (
        f"seeded: production {seeded.production_version} trained on {seeded.training_rows} images; "
        f"{seeded.predictions} predictions from a new camera, {seeded.feedback} answered, {seeded.negative} negative"
    )


def _regression(conn: Any, settings: Any, inputs_dir: Path) -> str:
    from feedback_loop.demo import regression

    return regression.seed(conn, settings, inputs_dir)


SCENARIOS: dict[str, Scenario] = {
    "cats-vs-dogs": Scenario(_cats_vs_dogs, {"rules": list(RULES)}),
    "regression": Scenario(_regression, dict(SETTINGS)),
}
