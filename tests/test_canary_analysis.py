"""The canary's judge: non-inferiority at its boundaries, the label-free guard, validity over
repeated looks, proportion metrics from Prometheus, and the predictions query on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from feedback_loop.deploy import analysis, core, evidence
from feedback_loop.deploy.analysis import AnalysisConfig, Observation, analyse
from feedback_loop.deploy.evidence import GuardLimits, Interval, non_inferiority
from feedback_loop.deploy.targets.local import LocalTarget
from feedback_loop.errors import SettingsError
from feedback_loop.feedback.by_version import QUANTILE_GRID, VersionFeedback, VersionPredictions

NAME = "cats"
T0 = datetime(2026, 3, 2, tzinfo=timezone.utc)
READY = Observation(True, "v2", "v1", "ready")
MIX = {"cat": 0.5, "dog": 0.35, "bird": 0.15}


def counts(canary: tuple[int, int], stable: tuple[int, int]) -> Any:
    """A feedback source answering (positive, answered) for the canary v2 and stable v1."""
    def read(versions: Sequence[str], start: datetime, end: datetime) -> dict[str, VersionFeedback]:
        return {"v2": VersionFeedback("v2", canary[1], canary[0]), "v1": VersionFeedback("v1", stable[1], stable[0])}

    return read


def summary(version: str, labels: dict[str, int], conf: np.ndarray | None = None, values: np.ndarray | None = None) -> VersionPredictions:
    n = sum(labels.values())
    cq = tuple(float(q) for q in np.quantile(conf, QUANTILE_GRID)) if conf is not None else ()
    vq = tuple(float(q) for q in np.quantile(values, QUANTILE_GRID)) if values is not None else ()
    return VersionPredictions(version, n, labels, len(labels), values is not None, cq, vq)


def classifier(version: str, n: int, rng: np.random.Generator, mix: dict[str, float] = MIX, beta: tuple[float, float] = (8, 2)) -> VersionPredictions:
    labels = {k: int(c) for k, c in zip(mix, rng.multinomial(n, list(mix.values()))) if c}
    return summary(version, labels, rng.beta(*beta, size=n))


def regressor(version: str, values: np.ndarray) -> VersionPredictions:
    labels: dict[str, int] = {}
    for v in values:
        labels[f"{v:.3f}"] = labels.get(f"{v:.3f}", 0) + 1
    return summary(version, labels, values=values)


def judge(canary: tuple[int, int], stable: tuple[int, int], **config: Any) -> analysis.Analysis:
    return analyse("v2", "v1", T0, T0 + timedelta(days=1), READY, AnalysisConfig(NAME, **config), feedback=counts(canary, stable))


# --- non-inferiority ------------------------------------------------------------------


@pytest.mark.parametrize(
    "low,high,expected",
    [
        (-0.019, 0.01, "healthy"),  # entirely above -margin
        (-0.020, 0.01, "inconclusive"),  # touching the margin is not evidence
        (-0.05, 0.01, "inconclusive"),  # too wide
        (-0.05, -0.001, "unhealthy"),  # entirely below 0: worse
        (-0.05, 0.0, "inconclusive"),  # touching 0 is not worse
        (-0.015, -0.001, "unhealthy"),  # worse, even within the margin: worse wins
    ],
)
def test_non_inferiority_at_its_boundaries(low: float, high: float, expected: str) -> None:
    assert non_inferiority(Interval((low + high) / 2, low, high, 0.05), 0.02) == expected
    # An error rate (lower is better) mirrors it.
    assert non_inferiority(Interval(-(low + high) / 2, -high, -low, 0.05), 0.02, higher_is_better=False) == expected


def test_the_interval_is_the_normal_mixture_boundary_and_narrows_with_answers() -> None:
    got = evidence.difference_interval(850, 1000, 8500, 10000, 0.05, rho=300)
    pc, ps = 851 / 1002, 8501 / 10002
    info = 1 / (pc * (1 - pc) / 1000 + ps * (1 - ps) / 10000)
    half = np.sqrt((info + 300) * np.log((info + 300) / (300 * 0.05**2))) / info
    assert got.estimate == pytest.approx(0.0) and got.high - got.estimate == pytest.approx(half)
    wider = evidence.difference_interval(85, 100, 850, 1000, 0.05)
    assert wider.high - wider.low > 2 * (got.high - got.low)
    # Zero errors on both sides: a finite, non-degenerate interval, never NaN.
    zero = evidence.difference_interval(0, 500, 0, 5000, 0.05)
    assert zero.low < 0 < zero.high and all(np.isfinite([zero.low, zero.high]))


def test_promotion_needs_positive_evidence_and_shows_it() -> None:
    # 355 answers each, 3.6 points worse: the case. Not proven worse, but not promoted either.
    verdict = judge((284, 355), (297, 355))
    assert verdict.verdict == "inconclusive"
    (check,) = [c for c in verdict.checks if c.name == "feedback"]
    assert "of 355" in check.detail and "margin -2 pts" in check.detail and "always-valid interval [" in check.detail
    # Plenty of answers and equal satisfaction: non-inferior.
    healthy = judge((8500, 10000), (85000, 100000))
    assert healthy.verdict == "healthy" and "not worse than the margin" in healthy.reason
    # Clearly worse: rolled back.
    worse = judge((40, 80), (240, 300))
    assert worse.verdict == "unhealthy" and "satisfaction canary 50.0% of 80 vs stable 80.0% of 300: worse" in worse.reason
    # Too few answers: never a verdict either way.
    few = judge((2, 10), (150, 200))
    assert few.verdict == "inconclusive" and "fewer than 50 answers" in few.reason


def test_a_wider_margin_promotes_sooner() -> None:
    assert judge((1700, 2000), (17000, 20000)).verdict == "inconclusive"
    assert judge((1700, 2000), (17000, 20000), margin=0.05).verdict == "healthy"
    with pytest.raises(SettingsError, match="canary_margin"):
        AnalysisConfig(NAME, margin=0)


# --- always valid over repeated looks ----------------------------------------------------


def test_an_equal_canary_looked_at_daily_is_rolled_back_in_at_most_alpha_of_seeds() -> None:
    """30 daily looks at the same step, the data accumulating: the always-valid interval calls an
    equal canary worse in at most alpha of seeds, where a fixed-sample test looked at as often does not."""
    alpha, looks, seeds = 0.05, 30, 400
    rng = np.random.default_rng(13)
    ever_worse = naive_ever_worse = 0
    config = AnalysisConfig(NAME, feedback_alpha=alpha)
    for _ in range(seeds):
        n_c = rng.binomial(1, 0.8, size=(looks, 60)).sum(axis=1).cumsum()  # answers per day, cumulated
        n_s = rng.binomial(1, 0.8, size=(looks, 540)).sum(axis=1).cumsum()
        k_c = np.cumsum([rng.binomial(n, 0.85) for n in np.diff(n_c, prepend=0)])
        k_s = np.cumsum([rng.binomial(n, 0.85) for n in np.diff(n_s, prepend=0)])
        verdicts = [
            analyse("v2", "v1", T0, T0 + timedelta(days=d + 1), READY, config,
                    feedback=counts((int(k_c[d]), int(n_c[d])), (int(k_s[d]), int(n_s[d])))).verdict
            for d in range(looks)
        ]
        ever_worse += "unhealthy" in verdicts
        # The same looks with a fixed-sample one-sided z-test at alpha: its error grows with the looks.
        rates_c, rates_s = k_c / n_c, k_s / n_s
        se = np.sqrt(rates_c * (1 - rates_c) / n_c + rates_s * (1 - rates_s) / n_s)
        naive_ever_worse += bool(np.any((rates_c - rates_s) / se < -1.645))
    assert ever_worse / seeds <= alpha
    assert naive_ever_worse / seeds > 2 * alpha


# --- the label-free guard ----------------------------------------------------------------


def test_a_constant_predictor_is_rolled_back_at_the_first_look_before_any_feedback(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)

    def predictions(versions: Sequence[str], start: datetime, end: datetime) -> dict[str, VersionPredictions]:
        return {"v2": summary("v2", {"cat": 50}, np.full(50, 0.51)), "v1": classifier("v1", 450, rng)}

    store = (tmp_path / "store").as_uri()
    for version, at in (("v1", T0 - timedelta(days=9)), ("v2", T0)):
        folder = tmp_path / version
        (folder / "saved_model" / "1").mkdir(parents=True)
        (folder / "lineage.json").write_text(json.dumps({"version": version}))
        core.deploy(folder, store, NAME, LocalTarget(store, NAME), at)
    now = T0 + timedelta(hours=6)  # long before the bake ends, and no feedback at all
    judge_ = core.make_judge(AnalysisConfig(NAME), now, feedback=counts((0, 0), (0, 0)), predictions=predictions)
    state, moved = core.advance_rollout(LocalTarget(store, NAME), now, judge=judge_, max_wait_hours=24)
    assert [(t.action, t.version) for t in moved] == [("rolled_back", "v2")]
    assert "guard: collapse, 100.0% of 50 canary answers are 'cat'" in moved[0].reason
    assert state.canary is None and state.stable.version == "v1"


def test_the_guard_passes_an_equal_canary_and_catches_shifts() -> None:
    rng = np.random.default_rng(5)
    limits = GuardLimits()
    stable = classifier("v1", 2000, rng)
    assert evidence.guard(classifier("v2", 40, rng), stable, limits).verdict == "healthy"
    assert evidence.guard(classifier("v2", 20, rng), stable, limits).verdict == "inconclusive"  # too few to compare
    shifted = classifier("v2", 300, rng, {"cat": 0.05, "dog": 0.15, "bird": 0.8})
    result = evidence.guard(shifted, stable, limits)
    assert result.verdict == "unhealthy" and "Jensen-Shannon" in result.detail
    unsure = classifier("v2", 300, rng, beta=(2, 2))  # same labels, confidences near 0.5
    result = evidence.guard(unsure, stable, limits)
    assert result.verdict == "unhealthy" and "confidence Wasserstein" in result.detail
    # Stable itself answering one label nearly always: the canary doing the same is no collapse.
    lopsided = {"cat": 0.97, "dog": 0.03}
    assert evidence.guard(classifier("v2", 200, rng, lopsided), classifier("v1", 2000, rng, lopsided), limits).verdict == "healthy"


def test_the_guard_on_a_regressor_compares_predicted_values() -> None:
    rng = np.random.default_rng(8)
    limits = GuardLimits()
    stable = regressor("v1", rng.normal(100, 15, 3000))
    assert evidence.guard(regressor("v2", rng.normal(100, 15, 200)), stable, limits).verdict == "healthy"
    constant = evidence.guard(regressor("v2", np.full(200, 100.0)), stable, limits)
    assert constant.verdict == "unhealthy" and "collapse" in constant.detail
    biased = evidence.guard(regressor("v2", rng.normal(115, 15, 200)), stable, limits)
    assert biased.verdict == "unhealthy" and "stable SDs" in biased.detail and biased.canary == pytest.approx(1.0, abs=0.2)
    narrow = evidence.guard(regressor("v2", rng.normal(100, 2, 200)), stable, limits)
    assert narrow.verdict == "unhealthy"


def test_distances_are_never_nan() -> None:
    assert evidence.js_distance({}, {"a": 3}) == 0.0
    assert evidence.js_distance({"a": 3}, {"b": 3}) == pytest.approx(1.0)
    assert evidence.wasserstein((), ()) == 0.0 and evidence.quantile_std((1.0,)) == 0.0


# --- Prometheus proportions --------------------------------------------------------------


class FakePrometheus:
    def __init__(self, answers: dict[tuple[str, str], float]) -> None:
        self.answers = answers

    def query(self, promql: str, at: datetime) -> float | None:
        kind = "samples" if promql.startswith("sum(increase") else "rate"
        revision = "canary" if "rev-2" in promql else "stable"
        return self.answers.get((kind, revision))


@pytest.mark.parametrize(
    "canary_rate,requests,expected",
    [(0.001, 20000, "healthy"), (0.05, 20000, "unhealthy"), (0.001, 300, "inconclusive")],
)
def test_an_error_rate_with_its_requests_gets_the_non_inferiority_test(canary_rate: float, requests: int, expected: str) -> None:
    metrics = {"error_rate": dict(analysis.DEFAULT_METRICS["error_rate"])}
    config = AnalysisConfig(NAME, metrics=metrics, min_feedback_samples=0)
    source = FakePrometheus({("rate", "canary"): canary_rate, ("rate", "stable"): 0.001,
                             ("samples", "canary"): requests, ("samples", "stable"): 9 * requests})
    got = analyse("v2", "v1", T0, T0 + timedelta(days=1), Observation(True, "rev-2", "rev-1"), config, metrics=source)
    (check,) = [c for c in got.checks if c.name == "error_rate"]
    assert check.verdict == expected, check.detail
    assert "margin +1 pts" in check.detail


def test_samples_need_a_margin() -> None:
    with pytest.raises(SettingsError, match="max_increase"):
        AnalysisConfig(NAME, metrics={"errors": {"query": "x", "samples": "y", "min": 1}})


# --- the predictions query on PostgreSQL ------------------------------------------------


def test_predictions_by_version_summarises_what_each_version_answered(database_url: str) -> None:
    from feedback_loop.feedback import by_version, store

    conn = store.connect(database_url)
    rows = [("v1", "cat", 0.9), ("v1", "dog", 0.7), ("v1", "cat", 0.8), ("v2", "12.5", None), ("v2", "13", None), ("v2", "-1e2", None)]
    try:
        with conn, conn.cursor() as cur:
            for i, (version, label, conf) in enumerate(rows):
                cur.execute(
                    "INSERT INTO predictions (id, created_at, model_name, model_version, predicted_label, confidence)"
                    " VALUES (%s, %s, %s, %s, %s, %s)", (f"p{i}", T0 + timedelta(hours=1), NAME, version, label, conf),
                )
            cur.execute(  # outside the window, another model, no consent: none counts
                "INSERT INTO predictions (id, created_at, model_name, model_version, predicted_label, consent) VALUES"
                " ('x1', %s, %s, 'v1', 'cat', true), ('x2', %s, 'other', 'v1', 'cat', true), ('x3', %s, %s, 'v1', 'cat', false)",
                (T0 - timedelta(hours=1), NAME, T0, T0, NAME),
            )
        got = by_version.predictions_by_version(conn, NAME, ["v1", "v2", "v3"], T0, T0 + timedelta(days=1))
    finally:
        conn.close()
    assert (got["v1"].count, got["v1"].labels, got["v1"].numeric) == (3, {"cat": 2, "dog": 1}, False)
    assert got["v1"].confidence_quantiles[0] == pytest.approx(0.7) and got["v1"].confidence_quantiles[-1] == pytest.approx(0.9)
    assert got["v2"].numeric and got["v2"].distinct == 3 and got["v2"].confidence_quantiles == ()
    assert got["v2"].value_quantiles[0] == pytest.approx(-100) and got["v2"].value_quantiles[-1] == pytest.approx(13)
    assert got["v3"] == by_version.VersionPredictions("v3")
