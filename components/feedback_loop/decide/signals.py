"""What the earlier stages measured, as the retrain rules read it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from feedback_loop.decide.evidence import Evidence


@dataclass(frozen=True)
class Signals:
    """The figures the rules read (names as in the feedback stage's metrics)."""

    feedback_count: int
    negative_count: int
    satisfaction_rate: float
    is_drift: bool
    rollout_in_progress: bool = False
    force: bool = False
    error_rate: float = 0.0
    error_rate_feedback: int = 0
    latency_ratio: float = 0.0  # 0.0: unknown
    recent_latency_ms: float = 0.0
    baseline_latency_ms: float = 0.0
    keyword_hits: int = 0
    new_rows: int = 0  # labelled rows since the last training attempt
    new_data_share: float = 0.0
    days_since_training: float = -1.0  # -1: no model trained yet
    has_production: bool = True  # False only when it is known that no model serves
    # From detect_drift's metrics: the production model's outputs and errors vs its validation rows.
    prediction_tested: bool = False
    prediction_drift: bool = False
    residual_p_value: float = -1.0  # -1: residual drift not tested
    residual_reference_rate: float = 0.0
    residual_current_rate: float = 0.0
    residual_drift: bool = False
    evidence: Evidence | None = None  # the performance rule's (decide.gather builds it)

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float], *, is_drift: bool, rollout_in_progress: bool = False, force: bool = False) -> "Signals":
        """Builds the signals from the feedback stage's metrics (missing figures take their defaults)."""
        values: dict = {"is_drift": is_drift, "rollout_in_progress": rollout_in_progress, "force": force}
        for f in fields(cls):
            if f.name in values or f.name not in metrics or f.type not in ("int", "float"):
                continue
            values[f.name] = int(metrics[f.name]) if f.type == "int" else float(metrics[f.name])
        for name in ("feedback_count", "negative_count"):
            values.setdefault(name, 0)
        values.setdefault("satisfaction_rate", 0.0)
        return cls(**values)
