"""Judges a canary step: is the new version ready, and is it worse than the stable one?

Three kinds of evidence, each a `Check` with its own verdict:

- readiness: the target's view (for KServe, the canary revision is the latest ready one
  and carries its share of traffic). Not ready after `ready_timeout_minutes`: unhealthy.
- serving metrics: PromQL templates run once for the canary's revision and once for the
  stable one over the step's window (`{revision}`, `{version}`, `{namespace}`,
  `{model_name}` and `{window}` are filled in). Lower is better; a metric fails when the
  canary exceeds the stable value by more than `max_increase` and (when both are given)
  by more than `max_ratio` times; `min` asks for that much of the metric (e.g. requests)
  before the comparison counts as evidence.
- feedback: satisfaction of the predictions each version served in the window, at least
  `min_feedback_samples` answers each, and Fisher's exact test, one-sided: unhealthy when
  the canary's satisfaction is lower at level `feedback_alpha`.

Any unhealthy check rolls the canary back; otherwise any inconclusive one holds the step
(the rollout gives up after `max_wait_hours` past the bake time); else healthy.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

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
    },
    "p95_latency_ms": {
        "query": f"histogram_quantile(0.95, sum by (le) (rate(revision_request_latencies_bucket{{{_REVISION}}}[{{window}}])))",
        "max_increase": 25.0,
        "max_ratio": 1.25,
    },
}
_SPEC_KEYS = {"query", "min", "max_increase", "max_ratio"}
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

    def __post_init__(self) -> None:
        validate_metrics(self.metrics)
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


class MetricSource(Protocol):
    def query(self, promql: str, at: datetime) -> float | None: ...


FeedbackSource = Callable[[Sequence[str], datetime, datetime], Mapping[str, Any]]


class AnalysisUnavailable(Exception):
    """A source of evidence did not answer; the step waits rather than guesses."""


class Prometheus:
    """The instant-query API of a Prometheus server (`/api/v1/query`)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str, at: datetime) -> float | None:
        """One number: a scalar, or a vector of at most one series; None when empty or NaN."""
        params = urllib.parse.urlencode({"query": promql, "time": f"{at.timestamp():.3f}"})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{params}", timeout=self.timeout) as answer:
                body = json.loads(answer.read())
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read()).get("error", err.reason)
            except ValueError:
                message = err.reason
            raise AnalysisUnavailable(f"Prometheus refused a query ({err.code}: {message})") from None
        except (OSError, ValueError) as err:
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
) -> Analysis:
    """Judges the canary's current step from what is available; see the module docstring."""
    checks = [_readiness(observation, started, now, config)]
    if observation.ready is not False:
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
        try:
            for side, (revision, version) in sides.items():
                promql = fill(spec["query"], revision=revision, version=version, namespace=config.namespace,
                              model_name=config.model_name, window=span)
                values[side] = source.query(promql, now)
        except AnalysisUnavailable as err:
            checks.append(Check(name, INCONCLUSIVE, f"{name}: {err}"))
            continue
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


def _feedback_check(
    canary_version: str, stable_version: str, started: datetime, now: datetime, config: AnalysisConfig, source: FeedbackSource
) -> Check:
    from scipy.stats import fisher_exact

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
    # One-sided: is the canary's share of positive answers lower than the stable one's?
    table = [[canary.positive, canary.answered - canary.positive], [stable.positive, stable.answered - stable.positive]]
    p_value = float(fisher_exact(table, alternative="less").pvalue)
    if p_value < config.feedback_alpha:
        return Check("feedback", UNHEALTHY, f"{shown}: worse (one-sided Fisher p={p_value:.3g} < {config.feedback_alpha:g})", rate_c, rate_s)
    return Check("feedback", HEALTHY, f"{shown}: not worse (p={p_value:.3g})", rate_c, rate_s)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"
