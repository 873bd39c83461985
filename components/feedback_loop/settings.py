"""One typed settings object: defaults < JSON file (--config) < environment (RETRAIN_*) < CLI flags.

Loaded once at the edge (the CLI, or a component body) and passed down. The pipeline's
parameters carry the same names, so a value means the same thing everywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from feedback_loop.errors import SettingsError

ENV_PREFIX = "RETRAIN_"
RULE_NAMES = ("user_feedback", "error_rate", "latency", "keywords", "new_data", "input_drift", "model_age")
RuleName = Literal["user_feedback", "error_rate", "latency", "keywords", "new_data", "input_drift", "model_age"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # What is served and where its versions live.
    model_name: str = Field("cats-vs-dogs", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=45)
    model_store_uri: str = "file://local_outputs/model-store"

    # Feedback window and the retrain policy.
    days_back: int = Field(30, ge=1, le=3650)
    min_feedback: int = Field(100, ge=0)
    min_negative: int = Field(20, ge=0)
    min_positive_rate: float = Field(0.70, ge=0.0, le=1.0)
    drift_p_value: float = Field(0.05, gt=0.0, lt=1.0)
    min_drift_rows: int = Field(30, ge=2)
    drift_correction: Literal["bonferroni", "fdr"] = "bonferroni"
    drift_engine: Literal["alibi", "scipy"] = "alibi"  # scipy: same p-values without alibi-detect's licence
    drift_share_threshold: float = Field(0.0, ge=0.0, lt=1.0)  # dataset drift when this share of features is exceeded; 0: any
    drift_max_rows: int = Field(1_000_000, ge=100)  # per side; above it a seeded uniform sample is tested
    drift_feature_types: dict[str, Literal["numeric", "categorical", "ignore"]] = Field(default_factory=dict)
    force: bool = False
    # The other retrain rules; `rules` lists the enabled ones, e.g. RETRAIN_RULES=user_feedback,input_drift.
    rules: Annotated[list[RuleName], NoDecode] = Field(default_factory=lambda: list(RULE_NAMES))
    max_error_rate: float = Field(0.05, ge=0.0, le=1.0)
    error_rate_days: int = Field(7, ge=1, le=365)
    max_recent_latency_ratio: float = Field(1.5, gt=0.0)  # mean of the last 50 served vs the baseline
    latency_baseline_ms: float = Field(0.0, ge=0.0)  # 0: the window's earlier predictions
    keywords: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["flou", "mauvais", "incorrect", "wrong", "blurry"])
    max_keyword_hits: int = Field(10, ge=0)
    min_new_data_share: float = Field(0.20, ge=0.0)
    max_model_age_days: float = Field(90.0, gt=0.0)
    known_labels: Annotated[list[str], NoDecode] = Field(default_factory=list)  # empty: any non-blank label
    dry_run: bool = False  # train and evaluate, but neither publish nor deploy
    retention_days: int = Field(180, ge=1)  # `feedback-loop purge` and the clean-up step delete older rows

    # Training and the evaluation gate.
    epochs: int = Field(8, ge=1, le=1000)
    learning_rate: float = Field(1e-3, gt=0.0, lt=1.0)
    batch_size: int = Field(64, ge=1)
    holdout_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    min_improvement: float = Field(0.02, ge=0.0)
    seed: int = 42

    # Model family, training strategy, data window and split.
    family: str = Field(
        "auto",
        pattern=r"^(auto|image_classifier|tabular_classifier|tabular_regressor|recommender|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$",
    )
    strategy: Literal["auto", "scratch", "fine_tune"] = "auto"
    auto_drift_share: float = Field(0.5, ge=0.0, le=1.0)  # auto: from scratch when this share of features drifted
    auto_new_data_fraction: float = Field(0.5, ge=0.0, le=1.0)  # ...or this share of rows is new to production
    window: Literal["expanding", "sliding", "weighted"] = "expanding"
    window_days: float = Field(90.0, gt=0.0)  # sliding window length
    half_life_days: float = Field(30.0, gt=0.0)  # weighted window: a row this old counts half
    split: Literal["recent_feedback", "time_series"] = "recent_feedback"
    # Training hardware (accelerator type and count are compile options).
    mixed_precision: bool = False
    xla: bool = False
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    # Evaluation gates beside min_improvement.
    max_test_regression: float = Field(0.01, ge=0.0, le=1.0)  # points lost on the original test set
    max_latency_ratio: float = Field(1.5, ge=0.0)  # candidate / production p95; 0: off
    require_significant: bool = False  # the improvement's bootstrap CI must exclude 0
    confidence_level: float = Field(0.95, gt=0.5, lt=1.0)
    top_k: int = Field(10, ge=1)  # recommenders: precision@k, recall@k

    # Rollout.
    deploy_target: Literal["local", "kserve"] = "kserve"
    namespace: str = "default"
    service_account: str = ""
    rollout_steps: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [10, 50, 100])
    bake_hours: Annotated[list[float], NoDecode] = Field(default_factory=lambda: [24.0, 48.0])
    # Canary analysis (deploy/analysis.py): Prometheus when its URL is set, feedback per version from DATABASE_URL.
    prometheus_url: str = ""
    canary_metrics: dict[str, dict[str, Any]] = Field(default_factory=dict)  # {}: Knative's request metrics
    min_feedback_samples: int = Field(50, ge=0)
    feedback_alpha: float = Field(0.05, gt=0.0, lt=1.0)
    ready_timeout_minutes: float = Field(30.0, gt=0.0)
    max_wait_hours: float = Field(24.0, ge=0.0)

    # Housekeeping.
    cleanup: bool = False
    keep_versions: int = Field(5, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # A secret: read from DATABASE_URL (a Kubernetes Secret on a cluster), never printed.
    database_url: SecretStr | None = Field(None, validation_alias="DATABASE_URL")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("rollout_steps", "bake_hours", "rules", "keywords", "known_labels", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        # RETRAIN_ROLLOUT_STEPS=10,50,100 reads better than a JSON list in a shell.
        if isinstance(value, str) and not value.strip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _rollout_shape(self) -> "Settings":
        steps = self.rollout_steps
        if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError("rollout_steps must rise strictly from above 0 to 100, e.g. 10,50,100")
        if len(self.bake_hours) != len(steps) - 1 or any(h < 0 for h in self.bake_hours):
            raise ValueError(f"bake_hours needs {len(steps) - 1} non-negative values, one per step before 100")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # CLI flags arrive as init kwargs; the JSON file is merged under them in load().
        return (init_settings, env_settings)


def load(config: Path | str | None = None, **overrides: Any) -> Settings:
    """Builds the settings; `overrides` are CLI flags (None means "not given")."""
    values: dict[str, Any] = {}
    if config:
        path = Path(config)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise SettingsError(f"config file {path} not found: pass an existing JSON file to --config") from None
        except json.JSONDecodeError as err:
            raise SettingsError(f"config file {path} is not valid JSON (line {err.lineno}): fix it or drop --config") from None
        if not isinstance(values, dict):
            raise SettingsError(f"config file {path} must hold a JSON object of settings")
    cli = {k: v for k, v in overrides.items() if v is not None}
    try:
        # Env must beat the file but lose to flags: drop file keys that the environment sets.
        merged = {k: v for k, v in values.items() if not _env_has(k)}
        return Settings(**{**merged, **cli})
    except ValidationError as err:
        raise SettingsError(describe(err)) from None


def _env_has(field: str) -> bool:
    return f"{ENV_PREFIX}{field}".upper() in {k.upper() for k in os.environ}


def describe(err: ValidationError) -> str:
    """One line naming the first bad setting, its environment variable, and the rule."""
    first = err.errors()[0]
    if not first["loc"]:
        return f"invalid settings: {first['msg'].removeprefix('Value error, ')}"
    name = ".".join(str(p) for p in first["loc"]) or "settings"
    field = name.split(".")[0]
    env = "DATABASE_URL" if field == "database_url" else f"{ENV_PREFIX}{field.upper()}"
    given = first.get("input")
    shown = "" if field == "database_url" or isinstance(given, dict) else f"={given}"
    return f"invalid setting {field}{shown} (env {env}): {first['msg']}"
