"""Judges a canary step: is the new version ready, does it answer sanely, and is it not worse?

Four kinds of evidence, each a `Check` with its own verdict:

- readiness: the target's view (for KServe, the canary revision is the latest ready one
  and carries its share of traffic). Not ready after `ready_timeout_minutes`: unhealthy.
- guard (label-free, from the predictions table): the canary's predicted-label mix and
  confidences (or predicted values) against stable's over the same time; a collapse or a
  distance above its threshold is unhealthy at once, before any feedback (`evidence.guard`).
- serving metrics: PromQL templates run once for the canary's revision and once for the
  stable one over the step's window (`{revision}`, `{version}`, `{namespace}`,
  `{model_name}` and `{window}` are filled in). Lower is better. A metric with `samples`
  (a query for the number of requests behind it) is a proportion and gets the same
  always-valid non-inferiority test as the feedback, with `max_increase` as its margin;
  otherwise it fails when the canary exceeds stable by more than `max_increase` and (when
  both are given) by more than `max_ratio` times. `min` asks for that much of the metric
  (e.g. requests) before the comparison counts as evidence.
- feedback: satisfaction of the predictions each version served since the step began (at
  least `min_feedback_samples` answers each). The always-valid interval of the difference
  (`evidence.difference_interval`, level `feedback_alpha` over every look) decides:
  entirely below 0, worse: unhealthy; entirely above -`margin`, non-inferior: healthy;
  else inconclusive.

Any unhealthy check rolls the canary back; otherwise any inconclusive one holds the step
(the rollout gives up after `max_wait_hours` past the bake time); else healthy. A step
therefore advances only on positive evidence.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from feedback_loop.deploy import evidence
from feedback_loop.deploy.evidence import GuardLimits
from feedback_loop.errors import SettingsError

HEALTHY, UNHEALTHY, INCONCLUSIVE = "healthy", "unhealthy", "inconclusive"

# Knative's queue-proxy metrics, which every KServe predictor pod in Serverless mode exports.
_REVISION = 'namespace_name="{namespace}",revision_name="{revision}"'
DEFAULT_METRICS: dict[str, dict[str, Any]] = {
    "requests": {"query": f"sum(increase(revision_request_count{{{_REVISION}}}[{{window}}]))", "min": 100},
    "error_rate": {
        "query": f'(sum(rate(revision_request_count{{{_REVISION},response_code_class="5xx"}}[{{window}}])) or vector(0))'
        f" / sum(rate(revision_request_count{{{_REVISION}}}[{{window}}]))",
        "max_increase": 0.01,
        # The requests behind the rate: the error rate is judged as a proportion (non-inferiority).
        "samples": f"sum(increase(revision_request_count{{{_REVISION}}}[{{window}}]))",
    },
    "p95_latency_ms": {
        "query": f"histogram_quantile(0.95, sum by (le) (rate(revision_request_latencies_bucket{{{_REVISION}}}[{{window}}])))",
        "max_increase": 25.0,
        "max_ratio": 1.25,
    },
}
_SPEC_KEYS = {"query", "min", "max_increase", "max_ratio", "samples"}
_PLACEHOLDERS = ("revision", "version", "namespace", "model_name", "window")


@dataclass(frozen=True)
class Observation:
    """What the serving target says about the canary; `ready` None when it cannot tell."""

    ready: bool | None = None
    canary_revision: str = ""
    stable_revision: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str
    detail: str
    canary: float | None = None
    stable: float | None = None


@dataclass(frozen=True)
class Analysis:
    verdict: str
    checks: tuple[Check, ...] = ()

    @property
    def reason(self) -> str:
        """The checks that decided the verdict, one clause each."""
        deciding = [c.detail for c in self.checks if c.verdict == self.verdict] or [c.detail for c in self.checks]
        return "; ".join(deciding)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "checks": [c.__dict__ for c in self.checks]}


@dataclass(frozen=True)
class AnalysisConfig:
    model_name: str
    namespace: str = "default"
    prometheus_url: str = ""
    metrics: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: DEFAULT_METRICS)
    min_feedback_samples: int = 50
    feedback_alpha: float = 0.05
    ready_timeout_minutes: float = 30.0
    margin: float = 0.02
    guard: GuardLimits = field(default_factory=GuardLimits)

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> "AnalysisConfig":
        """The analysis from settings, or advance_rollout's parameters of the same names."""
        return cls(
            values["model_name"], values["namespace"], values["prometheus_url"], values["canary_metrics"] or DEFAULT_METRICS,
            values["min_feedback_samples"], values["feedback_alpha"], values["ready_timeout_minutes"], values["canary_margin"],
            GuardLimits(
                values["canary_guard_min_predictions"], values["canary_collapse_share"], values["canary_max_label_distance"],
                values["canary_max_confidence_distance"], values["canary_max_value_distance"],
            ),
        )

    def __post_init__(self) -> None:
        validate_metrics(self.metrics)
        if not 0 < self.margin < 1:
            raise SettingsError(f"canary_margin must be between 0 and 1, got {self.margin}")
        if self.min_feedback_samples < 0:
            raise SettingsError(f"min_feedback_samples must be 0 (off) or more, got {self.min_feedback_samples}")
        if not 0 < self.feedback_alpha < 1:
            raise SettingsError(f"feedback_alpha must be between 0 and 1, got {self.feedback_alpha}")


def validate_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> None:
    for name, spec in metrics.items():
        if not isinstance(spec, Mapping) or not isinstance(spec.get("query"), str) or not spec["query"].strip():
            raise SettingsError(f"canary_metrics[{name!r}] needs a PromQL 'query' string")
        unknown = set(spec) - _SPEC_KEYS
        if unknown:
            raise SettingsError(f"canary_metrics[{name!r}] has unknown keys {sorted(unknown)}: use {sorted(_SPEC_KEYS)}")
        if not {"min", "max_increase", "max_ratio"} & set(spec):
            raise SettingsError(f"canary_metrics[{name!r}] needs at least one of min, max_increase, max_ratio")
        if "samples" in spec and "max_increase" not in spec:
            raise SettingsError(f"canary_metrics[{name!r}] has 'samples': it needs 'max_increase', the margin of its test")


class MetricSource(Protocol):
    def query(self, promql: str, at: datetime) -> float | None: ...


# version -> answered/positive counts (feedback.by_version.VersionFeedback) in [start, end).
FeedbackSource = Callable[[Sequence[str], datetime, datetime], Mapping[str, Any]]
# version -> what it answered in [start, end) (feedback.by_version.VersionPredictions).
PredictionSource = Callable[[Sequence[str], datetime, datetime], Mapping[str, Any]]


class AnalysisUnavailable(Exception):
    """A source of evidence did not answer; the step waits rather than guesses."""


class Prometheus:
    """The instant-query API of a Prometheus server (`/api/v1/query`)."""

    def __init__(self, url: str, timeout: float = 10.0, attempts: int = 3, backoff: float = 0.5) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.attempts, self.backoff = max(attempts, 1), backoff  # transient failures are asked again

    def query(self, promql: str, at: datetime) -> float | None:
        """One number: a scalar, or a vector of at most one series; None when empty or NaN."""
        params = urllib.parse.urlencode({"query": promql, "time": f"{at.timestamp():.3f}"})
        for attempt in range(1, self.attempts + 1):
            try:
                with urllib.request.urlopen(f"{self.url}/api/v1/query?{params}", timeout=self.timeout) as answer:
                    body = json.loads(answer.read())
                break
            except urllib.error.HTTPError as err:
                if err.code in (429, 502, 503, 504) and attempt < self.attempts:  # restarting or overloaded
                    time.sleep(self.backoff * 2 ** (attempt - 1))
                    continue
                try:
                    message = json.loads(err.read()).get("error", err.reason)
                except ValueError:
                    message = err.reason
                raise AnalysisUnavailable(f"Prometheus refused a query ({err.code}: {message})") from None
            except (OSError, ValueError) as err:
                if isinstance(err, OSError) and attempt < self.attempts:
                    time.sleep(self.backoff * 2 ** (attempt - 1))
                    continue
                # Down for good: the step holds (inconclusive), the run goes on.
                raise AnalysisUnavailable(f"Prometheus at {self.url} unreachable ({type(err).__name__})") from None
        data = body.get("data") or {}
        result = data.get("result")
        if data.get("resultType") == "scalar":
            value = result[1]
        elif not result:
            return None
        elif len(result) > 1:
            raise AnalysisUnavailable(f"a canary query returned {len(result)} series; aggregate it to one (e.g. sum(...))")
        else:
            value = result[0]["value"][1]
        number = float(value)
        return None if math.isnan(number) else number


def fill(template: str, **values: str) -> str:
    """Replaces only the known `{placeholders}`: PromQL's own braces stay as they are."""
    for key in _PLACEHOLDERS:
        template = template.replace("{" + key + "}", values.get(key, ""))
    return template


def window(start: datetime, now: datetime) -> str:
    return f"{max(1, int((now - start).total_seconds()))}s"


def analyse(
    canary_version: str,
    stable_version: str,
    started: datetime,
    now: datetime,
    observation: Observation,
    config: AnalysisConfig,
    *,
    metrics: MetricSource | None = None,
    feedback: FeedbackSource | None = None,
    predictions: PredictionSource | None = None,
) -> Analysis:
    """Judges the canary's current step from what is available; see the module docstring."""
    checks = [_readiness(observation, started, now, config)]
    if observation.ready is not False:
        if predictions is not None and config.guard.min_predictions > 0:
            checks.append(_guard_check(canary_version, stable_version, started, now, config, predictions))
        if metrics is not None:
            checks += _metric_checks(canary_version, stable_version, started, now, observation, config, metrics)
        if feedback is not None and config.min_feedback_samples > 0:
            checks.append(_feedback_check(canary_version, stable_version, started, now, config, feedback))
    if len(checks) == 1 and checks[0].verdict == HEALTHY:
        checks.append(Check("analysis", HEALTHY, "no metrics or feedback source configured: the schedule alone decides"))
    verdicts = {c.verdict for c in checks}
    verdict = UNHEALTHY if UNHEALTHY in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else HEALTHY
    return Analysis(verdict, tuple(checks))


def _readiness(observation: Observation, started: datetime, now: datetime, config: AnalysisConfig) -> Check:
    if observation.ready is not False:
        return Check("ready", HEALTHY, observation.detail or "canary ready")
    waited = (now - started).total_seconds() / 60
    if waited >= config.ready_timeout_minutes:
        return Check("ready", UNHEALTHY, f"canary not Ready within {config.ready_timeout_minutes:g} min ({observation.detail})")
    return Check("ready", INCONCLUSIVE, f"canary not Ready yet after {waited:.0f} min ({observation.detail})")


def _metric_checks(
    canary_version: str, stable_version: str, started: datetime, now: datetime,
    observation: Observation, config: AnalysisConfig, source: MetricSource,
) -> list[Check]:
    span = window(started, now)
    sides = {
        "canary": (observation.canary_revision or canary_version, canary_version),
        "stable": (observation.stable_revision or stable_version, stable_version),
    }
    checks = []
    for name, spec in config.metrics.items():
        values: dict[str, float | None] = {}
        samples: dict[str, float | None] = {}
        try:
            for side, (revision, version) in sides.items():
                filled = {"revision": revision, "version": version, "namespace": config.namespace,
                          "model_name": config.model_name, "window": span}
                values[side] = source.query(fill(spec["query"], **filled), now)
                if "samples" in spec:
                    samples[side] = source.query(fill(spec["samples"], **filled), now)
        except AnalysisUnavailable as err:
            checks.append(Check(name, INCONCLUSIVE, f"{name}: {err}"))
            continue
        if "samples" in spec:
            checks.append(_compare_proportions(name, spec, values, samples, config.feedback_alpha))
        else:
            checks.append(_compare(name, spec, values["canary"], values["stable"]))
    return checks


def _compare(name: str, spec: Mapping[str, Any], canary: float | None, stable: float | None) -> Check:
    shown = f"{name} canary {_num(canary)} vs stable {_num(stable)}"
    if canary is None or stable is None:
        return Check(name, INCONCLUSIVE, f"{shown}: no data yet", canary, stable)
    if "min" in spec and min(canary, stable) < float(spec["min"]):
        return Check(name, INCONCLUSIVE, f"{shown}: below the {spec['min']:g} needed as evidence", canary, stable)
    limits = []
    if "max_increase" in spec:
        limits.append(canary - stable > float(spec["max_increase"]))
    if "max_ratio" in spec:
        limits.append(canary > stable * float(spec["max_ratio"]))
    if limits and all(limits):
        allowed = ", ".join(f"{k} {spec[k]:g}" for k in ("max_increase", "max_ratio") if k in spec)
        return Check(name, UNHEALTHY, f"{shown}: worse than allowed ({allowed})", canary, stable)
    return Check(name, HEALTHY, f"{shown}: within limits", canary, stable)


def _compare_proportions(
    name: str, spec: Mapping[str, Any], values: Mapping[str, float | None], samples: Mapping[str, float | None], alpha: float
) -> Check:
    """A rate with its request counts: non-inferiority with `max_increase` as the margin (lower is better)."""
    canary, stable = values["canary"], values["stable"]
    n_c, n_s = samples["canary"] or 0.0, samples["stable"] or 0.0
    shown = f"{name} canary {_num(canary)} of {n_c:.0f} vs stable {_num(stable)} of {n_s:.0f}"
    if canary is None or stable is None or n_c < 1 or n_s < 1:
        return Check(name, INCONCLUSIVE, f"{shown}: no data yet", canary, stable)
    if not (0 <= canary <= 1 and 0 <= stable <= 1):
        return Check(name, INCONCLUSIVE, f"{shown}: not a proportion, so 'samples' does not apply", canary, stable)
    if "min" in spec and min(n_c, n_s) < float(spec["min"]):
        return Check(name, INCONCLUSIVE, f"{shown}: below the {spec['min']:g} samples needed as evidence", canary, stable)
    margin = float(spec["max_increase"])
    interval = evidence.difference_interval(canary * n_c, n_c, stable * n_s, n_s, alpha)
    verdict = evidence.non_inferiority(interval, margin, higher_is_better=False)
    said = {UNHEALTHY: "worse", HEALTHY: "not worse than the margin", INCONCLUSIVE: "not enough evidence either way"}[verdict]
    detail = f"{shown}: {said} ({interval.shown()}; margin +{100 * margin:g} pts)"
    return Check(name, verdict, detail, canary, stable)


def _guard_check(
    canary_version: str, stable_version: str, started: datetime, now: datetime, config: AnalysisConfig,
    source: PredictionSource,
) -> Check:
    summaries = source([canary_version, stable_version], started, now)
    result = evidence.guard(summaries[canary_version], summaries[stable_version], config.guard)
    return Check("guard", result.verdict, result.detail, result.canary, result.stable)


def _feedback_check(
    canary_version: str, stable_version: str, started: datetime, now: datetime, config: AnalysisConfig, source: FeedbackSource
) -> Check:
    counts = source([canary_version, stable_version], started, now)
    canary, stable = counts[canary_version], counts[stable_version]
    shown = (
        f"satisfaction canary {_pct(canary.positive, canary.answered)} of {canary.answered}"
        f" vs stable {_pct(stable.positive, stable.answered)} of {stable.answered}"
    )
    rate_c = canary.positive / canary.answered if canary.answered else None
    rate_s = stable.positive / stable.answered if stable.answered else None
    need = config.min_feedback_samples
    if min(canary.answered, stable.answered) < need:
        return Check("feedback", INCONCLUSIVE, f"{shown}: fewer than {need} answers", rate_c, rate_s)
    interval = evidence.difference_interval(canary.positive, canary.answered, stable.positive, stable.answered, config.feedback_alpha)
    verdict = evidence.non_inferiority(interval, config.margin)
    said = {
        UNHEALTHY: "worse",
        HEALTHY: "not worse than the margin (non-inferior)",
        INCONCLUSIVE: "neither shown worse nor within the margin yet",
    }[verdict]
    detail = f"{shown}: {said} ({interval.shown()}; margin -{100 * config.margin:g} pts)"
    return Check("feedback", verdict, detail, rate_c, rate_s)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"
