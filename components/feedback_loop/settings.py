"""One typed settings object: defaults < JSON file (--config) < environment (RETRAIN_*) < CLI flags.

Loaded once at the edge (the CLI, or a component body) and passed down. The pipeline's
parameters carry the same names, so a value means the same thing everywhere.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from feedback_loop.decide import rules
from feedback_loop.deploy.targets import TARGETS
from feedback_loop.errors import SettingsError

ENV_PREFIX = "RETRAIN_"
# Settings that are no pipeline parameter: the DSN is a secret. (The log level is one: every
# component takes it, since KFP cannot set a task's environment from a parameter.)
NOT_PIPELINE_PARAMETERS = ("database_url",)


def _rule_names() -> list[str]:
    return list(rules.NAMES)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # What is served and where its versions live.
    model_name: str = Field("cats-vs-dogs", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=45, description="Name of the served model (and of its InferenceService).")
    model_store_uri: str = Field("file://local_outputs/model-store", description="Model store root (file:// or gs://).")

    # Feedback window and the retrain policy.
    days_back: int = Field(30, ge=1, le=3650, description="Length of the feedback window, in days, ending now.")
    min_feedback: int = Field(100, ge=0, description="Fewest answers the feedback rules judge on (user_feedback, error_rate, new_data).")
    min_negative: int = Field(20, ge=0, description="user_feedback: fewest negative answers.")
    min_positive_rate: float = Field(0.70, ge=0.0, le=1.0, description="user_feedback: retrain when satisfaction is below this share.")
    drift_p_value: float = Field(0.05, gt=0.0, lt=1.0, description="Significance level before the correction for the number of features.")
    min_drift_rows: int = Field(30, ge=2, description="Fewest current rows (and labelled rows, for residual drift) worth testing.")
    drift_correction: Literal["bonferroni", "fdr"] = Field("bonferroni", description="\"bonferroni\" or \"fdr\" (Benjamini-Hochberg).")
    drift_engine: Literal["alibi", "scipy"] = Field("alibi", description="\"alibi\" (alibi-detect) or \"scipy\"; the same tests and p-values.")
    drift_effect_threshold: float = Field(0.10, ge=0.0, le=1.0, description="A feature drifts only when its effect size is above this too: Wasserstein distance / reference std (numbers), Jensen-Shannon distance (categories).")
    drift_share_threshold: float = Field(0.0, ge=0.0, lt=1.0, description="Dataset drift when the share of drifted features is above this; 0: any.")
    drift_max_rows: int = Field(1_000_000, ge=100, description="Most rows tested per side; above it a seeded uniform sample (recorded in the report).")
    drift_feature_types: dict[str, Literal["numeric", "categorical", "ignore"]] = Field(default_factory=dict, description="Declared feature types, name -> \"numeric\", \"categorical\" or \"ignore\".")
    force: bool = Field(False, description="Retrain whatever the signals say (still not during a rollout).")
    # e.g. RETRAIN_RULES=user_feedback,input_drift
    rules: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(rules.DEFAULT_RULES), description="The enabled retrain rules: performance and first_model by default; any registered rule may be named.")
    performance_margin: float = Field(0.05, ge=0.0, le=10.0, description="performance: retrain when production's error on fresh feedback exceeds its validated error by more than this share of it (0.05 = 5 % worse).")
    performance_alpha: float = Field(0.05, gt=0.0, lt=0.5, description="performance: level of the one-sided test that the fresh error is above the validated error plus the margin.")
    baseline_days: float = Field(2.0, ge=0.0, le=365.0, description="performance: production's baseline pools its validated error with its own answers over its first this many days of service, once they are over (a validation split alone is too few rows); 0: the validated error alone.")
    max_error_rate: float = Field(0.05, ge=0.0, le=1.0, description="error_rate: retrain when the negative share of the recent answers is above this.")
    error_rate_days: int = Field(7, ge=1, le=365, description="Length of the sliding window of the error rate, in days.")
    max_recent_latency_ratio: float = Field(1.5, gt=0.0, description="latency: retrain when the last 50 predictions' mean latency is above this multiple of the baseline.")
    latency_baseline_ms: float = Field(0.0, ge=0.0, description="Latency baseline in ms; 0 takes the window's earlier predictions.")
    keywords: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["flou", "mauvais", "incorrect", "wrong", "blurry"], description="Words that, in a negative comment, count as a keyword hit.")
    max_keyword_hits: int = Field(10, ge=0, description="keywords: retrain when more negative comments than this name a keyword.")
    min_new_data_share: float = Field(0.20, ge=0.0, description="new_data: retrain when the new labelled rows reach this share of the training data.")
    max_model_age_days: float = Field(90.0, gt=0.0, description="model_age: retrain a model older than this many days.")
    max_feature_columns: int = Field(1000, ge=1, le=100_000, description="Most feature columns the extract keeps (JSONB keys, the most frequent first); the other keys are left out and counted.")
    known_labels: Annotated[list[str], NoDecode] = Field(default_factory=list, description="The labels a prediction or correction may name (empty: any).")
    dry_run: bool = Field(False, description="Train and evaluate, but neither publish nor deploy.")
    retention_days: int = Field(180, ge=1, description="How long predictions and feedback are kept, in days.")
    inputs_uri: str = Field("", description="Where the serving app stores raw inputs (file:// or gs://): the retention purge deletes expired ones under it; \"\" deletes none.")

    # Training and the evaluation gate.
    epochs: int = Field(8, ge=1, le=1000, description="Most epochs to run; early stopping on the newest rows may end sooner.")
    learning_rate: float = Field(1e-3, gt=0.0, lt=1.0, description="Adam's initial learning rate (halved on plateaus; scaled down to fine-tune).")
    batch_size: int = Field(64, ge=1, description="Rows per step and per GPU (the global batch grows with the GPUs).")
    holdout_fraction: float = Field(0.3, gt=0.0, lt=1.0, description="Share of the newest rows held out for candidate vs production.")
    min_improvement: float = Field(0.02, ge=0.0, description="Relative gain of the primary metric over production needed (0.02 = 2 %).")
    seed: int = Field(42, description="Seed of every random choice (drift's row sample, weights, shuffling, dropout, sampled negatives).")

    # Model family, training strategy, data window and split.
    family: str = Field(
        "auto",
        pattern=r"^(auto|image_classifier|tabular_classifier|tabular_regressor|recommender|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$",
        description="auto, image_classifier, tabular_classifier, tabular_regressor, recommender, or module:function.",
    )
    strategy: Literal["auto", "scratch", "fine_tune"] = Field("auto", description="scratch, fine_tune, or auto (from scratch when drift is broad or the new data large).")
    auto_drift_share: float = Field(0.5, ge=0.0, le=1.0, description="Share of drifted features from which `auto` trains from scratch.")
    auto_new_data_fraction: float = Field(0.5, ge=0.0, le=1.0, description="Share of rows newer than production from which `auto` trains from scratch.")
    window: Literal["expanding", "sliding", "weighted"] = Field("expanding", description="expanding (all history), sliding (last `window_days`), or weighted (rows weighted by age with `half_life_days`).")
    window_days: float = Field(90.0, gt=0.0, description="Length of a sliding window, in days before the holdout starts.")
    half_life_days: float = Field(30.0, gt=0.0, description="Age at which a row counts half, for the weighted window.")
    split: Literal["recent_feedback", "time_series", "random"] = Field("recent_feedback", description="recent_feedback (the holdout is one in two of the newest feedback rows), time_series for time-ordered data, or random (a seeded draw of the feedback, for rows that do not depend on time).")
    # Training hardware (accelerator type and count are compile options).
    mixed_precision: bool = Field(False, description="float16 (GPU) or bfloat16 (CPU) compute with float32 weights.")
    xla: bool = Field(False, description="Compile the training step with XLA.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the training pod must match (JSON object).")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Tolerations of the training pod (JSON list of Kubernetes tolerations).")
    workers: int = Field(1, ge=1, le=64, description="Training nodes: 1 trains in the task's own pod; more makes the task launch a Kubeflow Trainer TrainJob of that many nodes (MultiWorkerMirroredStrategy on the feedback-loop-tensorflow runtime), each with the task's accelerators, node selector and tolerations.")
    # Evaluation gates beside min_improvement.
    max_test_regression: float = Field(0.01, ge=0.0, le=1.0, description="Points of the guard metric (accuracy, R², precision@k) the candidate may lose on the guard set (0.01 = 1 point).")
    max_latency_ratio: float = Field(1.5, ge=0.0, description="Latency gate: refuse a candidate slower than this multiple of production (median of paired ratios over interleaved rounds) and by more than latency_margin_ms; 0 turns the gate off.")
    latency_margin_ms: float = Field(2.0, ge=0.0, description="Latency gate: milliseconds per request the candidate may be slower whatever the ratio (a ratio of two sub-millisecond models is noise).")
    require_significant: bool = Field(True, description="Bless only when the paired bootstrap confidence interval of the improvement lies above 0.")
    guard_retire_alpha: float = Field(0.05, gt=0.0, lt=0.5, description="Level of the one-sided test that production's error is higher on the fresh holdout than on the guard set.")
    guard_retire_margin: float = Field(0.02, ge=0.0, description="Retire the guard set when that increase is above this margin at that level (points of error, 0.02 = 2 points; for regressors a share of the guard's MSE); the fresh holdout replaces it.")
    confidence_level: float = Field(0.95, gt=0.5, lt=1.0, description="Level of the paired bootstrap confidence interval.")
    top_k: int = Field(10, ge=1, description="k of precision@k and recall@k for recommenders.")

    # Rollout.
    deploy_target: str = Field("kserve", description="\"local\" (state in the model store) or \"kserve\" (an InferenceService).")
    namespace: str = Field("default", description="Kubernetes namespace of the InferenceService.")
    service_account: str = Field("", description="ServiceAccount the predictor reads the model store with; \"\" keeps the current one.")
    rollout_steps: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [10, 50, 100], description="Canary traffic percentages, rising to 100.")
    bake_hours: Annotated[list[float], NoDecode] = Field(default_factory=lambda: [24.0, 48.0], description="Hours at each step before the next, one per step below 100.")
    # Canary analysis (deploy/analysis.py): Prometheus when its URL is set, feedback per version from DATABASE_URL.
    prometheus_url: str = Field("", description="Prometheus base URL for the canary metrics; \"\" skips them.")
    canary_metrics: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Name -> {query, min, max_increase, max_ratio}; PromQL templates with {revision}, {version}, {namespace}, {model_name}, {window}; lower is better. {} uses Knative's request count, error rate and p95 latency per revision.")
    min_feedback_samples: int = Field(50, ge=0, description="Answers each version needs before feedback counts; 0 turns the feedback check off.")
    feedback_alpha: float = Field(0.05, gt=0.0, lt=1.0, description="Error level of the always-valid confidence sequence of canary minus stable satisfaction, over every look at a step.")
    canary_margin: float = Field(0.02, gt=0.0, lt=1.0, description="Non-inferiority margin: a step advances only when the canary is shown at most this much worse than stable (0.02 = 2 points of satisfaction).")
    ready_timeout_minutes: float = Field(30.0, gt=0.0, description="Roll back a canary not Ready this long after its step began.")
    max_wait_hours: float = Field(24.0, ge=0.0, description="Roll back a canary still without a verdict this long after its bake time.")
    bake_tolerance: float = Field(0.1, ge=0.0, lt=1.0, description="Share of a step's bake a run may come early and still move the step on (0.1: 2.4 h of a 24 h step), so a step lasts its bake under a schedule of that period.")
    canary_guard_min_predictions: int = Field(30, ge=0, description="Predictions each version needs in a step before the label-free guard compares them; 0 turns the guard off.")
    canary_collapse_share: float = Field(0.95, gt=0.0, le=1.0, description="Roll back a canary that gives one label (or value) for at least this share of its predictions when stable does not.")
    canary_max_label_distance: float = Field(0.3, gt=0.0, le=1.0, description="Roll back when the Jensen-Shannon distance (base 2) between the canary's and stable's predicted-label mix is above this.")
    canary_max_confidence_distance: float = Field(0.2, gt=0.0, le=1.0, description="Roll back when the Wasserstein distance between the canary's and stable's confidences is above this.")
    canary_max_value_distance: float = Field(0.5, gt=0.0, description="Regressors: roll back when the Wasserstein distance between the canary's and stable's predicted values, in stable's standard deviations, is above this.")

    # Housekeeping.
    cleanup: bool = Field(False, description="Delete old model versions and personal data past the retention period on every run.")
    keep_versions: int = Field(5, ge=1, description="How many of the newest versions stay.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="DEBUG, INFO, WARNING or ERROR; every process honours it.")

    # A secret: read from DATABASE_URL (a Kubernetes Secret on a cluster), never printed.
    database_url: SecretStr | None = Field(None, validation_alias="DATABASE_URL", description="PostgreSQL DSN of the feedback store; a secret, never logged.")

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

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(_rule_names()))
        if unknown:
            raise ValueError(f"unknown retrain rule(s) {', '.join(unknown)}: choose among {', '.join(_rule_names())}")
        return value

    @field_validator("deploy_target")
    @classmethod
    def _known_target(cls, value: str) -> str:
        if value not in TARGETS:
            raise ValueError(f"choose one of: {', '.join(TARGETS)}")
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


def default_of(name: str) -> Any:
    """A setting's default (a fresh copy for lists and dicts)."""
    field = Settings.model_fields[name]
    return field.default_factory() if field.default_factory else field.default


def pipeline_parameters() -> list[str]:
    """The settings that are also the pipeline's parameters, in declaration order."""
    return [name for name in Settings.model_fields if name not in NOT_PIPELINE_PARAMETERS]


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
        except UnicodeDecodeError:
            raise SettingsError(f"config file {path} is not text (not UTF-8): pass a JSON file to --config") from None
        except OSError as err:
            raise SettingsError(f"config file {path} cannot be read ({err.strerror or type(err).__name__}): pass a readable JSON file to --config") from None
        if not isinstance(values, dict):
            raise SettingsError(f"config file {path} must hold a JSON object of settings")
    cli = {k: v for k, v in overrides.items() if v is not None}
    try:
        # Env must beat the file but lose to flags: drop file keys that the environment sets.
        merged = {k: v for k, v in values.items() if not _env_has(k)}
        return Settings(**{**merged, **cli})
    except ValidationError as err:
        raise SettingsError(describe(err, flags=set(cli), config=config)) from None
    except PydanticSettingsError as err:  # an environment value that is no JSON where JSON is expected
        field = re.search(r'field "(\w+)"', str(err))
        name = field.group(1) if field else "?"
        raise SettingsError(
            f"invalid setting {name} (env {ENV_PREFIX}{name.upper()}): not valid JSON; give e.g. "
            f"{'[...]' if isinstance(default_of(name), list) else '{...}'} as JSON, or unset it"
            if name in Settings.model_fields else f"invalid settings in the environment: {err}"
        ) from None


def _env_has(field: str) -> bool:
    return f"{ENV_PREFIX}{field}".upper() in {k.upper() for k in os.environ}


def describe(err: ValidationError, flags: set[str] = frozenset(), config: Path | str | None = None) -> str:
    """One line naming the first bad setting, where its value came from (the flag, the
    environment variable or the config file actually used), and the rule."""
    first = err.errors()[0]
    if not first["loc"]:
        return _printable(f"invalid settings: {first['msg'].removeprefix('Value error, ')}")
    name = ".".join(str(p) for p in first["loc"]) or "settings"
    field = name.split(".")[0]
    env = "DATABASE_URL" if field == "database_url" else f"{ENV_PREFIX}{field.upper()}"
    if field in flags:
        source = f"flag --{field.replace('_', '-')}"
    elif field in Settings.model_fields and not _env_has(field) and config and field != "database_url":
        source = f"config file {config}"
    else:
        source = f"env {env}"
    given = first.get("input")
    shown = "" if field == "database_url" or isinstance(given, dict) else f"={str(given)[:80]}"
    return _printable(f"invalid setting {field}{shown} ({source}): {first['msg']}")


def _printable(text: str) -> str:
    """One line whatever a value holds: a newline or other control character shows escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
