"""`feedback-loop check`: the decision a run would take now, computed without training.

Runs the same cores as the pipeline (rollout state, extraction, drift, decision) against
DATABASE_URL and the settings' model store, in a scratch folder that is removed after.
Nothing is recorded and nothing is deployed.
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from feedback_loop.decide import core, gather


def policy_of(settings: Any) -> core.Policy:
    """The retrain policy of a Settings object."""
    return core.Policy.of(settings.model_dump())


def check(
    settings: Any, dsn: str | None, now: datetime | None = None, target: Any = None, hmac_key: str | None = None
) -> dict[str, Any]:
    """The decision, the figures behind it and the production model it was taken against.

    `hmac_key` pseudonymises user ids in the scratch extract (None: they are left out)."""
    from feedback_loop.deploy import core as deploy
    from feedback_loop.deploy.targets import make_target
    from feedback_loop.drift import core as drift
    from feedback_loop.feedback import core as feedback
    from feedback_loop.feedback.pseudonyms import Pseudonymizer
    from feedback_loop.feedback.stats import Options

    target = target or make_target(settings.deploy_target, settings.model_store_uri, settings.model_name, settings.namespace)
    production = deploy.describe(target.read())
    options = Options(
        keywords=tuple(settings.keywords),
        known_labels=tuple(settings.known_labels),
        error_rate_days=settings.error_rate_days,
        latency_baseline_ms=settings.latency_baseline_ms,
        training_rows=feedback.training_rows(production["reference_data_uri"]),
    )
    window = feedback.Window.of(settings.model_name, settings.days_back, production["trained_through"], now=now)
    with tempfile.TemporaryDirectory() as scratch:
        current = Path(scratch) / "feedback.parquet"
        stats = feedback.extract(dsn, window, current, options, pseudonymizer=Pseudonymizer(hmac_key))
        drifted = drift.run(current, production["reference_data_uri"], **drift.options_of(settings.model_dump()))
        is_drift = bool(drifted.is_drift)
        # The component's own gathering: the same figures, hence the same decision.
        signals = gather.signals(
            stats.metrics(), is_drift=is_drift, rollout_in_progress=production["rollout_in_progress"], force=settings.force,
            drift=drifted.metrics(), feedback_path=current, production_model_uri=production["production_model_uri"],
            model_name=settings.model_name, dsn=dsn, baseline_days=settings.baseline_days,
        )
    decision = core.decide(signals, policy_of(settings))
    return {
        "model_name": settings.model_name,
        "production_version": production["production_version"],
        "rollout_in_progress": production["rollout_in_progress"],
        "window": {"start": stats.window_start, "end": stats.window_end},
        "stats": stats.metrics(),
        "drift": {"is_drift": is_drift, "drifted": [f.name for f in drifted.drifted]},
        "decision": decision.to_dict(),
    }


def render(result: dict[str, Any]) -> str:
    """A few lines for a terminal."""
    d, s = result["decision"], result["stats"]
    lines = [
        f"decision   {'RETRAIN' if d['retrain'] else 'no retrain'} ({result['model_name']}, production {result['production_version'] or 'none'})",
        f"window     {result['window']['start']} .. {result['window']['end']}",
        f"feedback   {int(s['feedback_count'])} answers on {int(s['rows'])} predictions, {int(s['negative_count'])} negative, "
        f"satisfaction {s['satisfaction_rate']:.1%}",
        f"drift      {'DRIFT in ' + ', '.join(result['drift']['drifted']) if result['drift']['is_drift'] else 'none'}",
    ]
    excluded = {k.removeprefix("excluded_"): int(v) for k, v in s.items() if k.startswith("excluded_") and v}
    if excluded:
        lines.append("excluded   " + ", ".join(f"{n} {reason}" for reason, n in excluded.items()))
    unlabelled = {k.removeprefix("unlabelled_"): int(v) for k, v in s.items() if k.startswith("unlabelled_") and v}
    if unlabelled:
        lines.append("no label   " + ", ".join(f"{n} negative answers: {reason}" for reason, n in unlabelled.items()))
    lines += [f"  - {reason}" for reason in d["reasons"]]
    return "\n".join(lines)
