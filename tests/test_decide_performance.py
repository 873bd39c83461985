"""The default trigger: production's fresh error vs its own validated error, the evidence memory
after a fruitless attempt, the bootstrap rule, the drift rules, and check == component."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kfp import dsl
from psycopg2.extras import Json, execute_values

from feedback_loop.decide import check, core, evidence, gather
from feedback_loop.decide.component import decide_retrain
from feedback_loop.decide.evidence import Sample
from feedback_loop.feedback import store
from feedback_loop.settings import load

NOW = datetime.now(timezone.utc).replace(microsecond=0)
POLICY = core.policy(performance_margin=0.10)  # rules: performance, first_model; margin 10 %, alpha 0.05, min_feedback 100


def version_dir(root: Path, validation: dict | None = None, predictions: pd.DataFrame | None = None, **lineage) -> str:
    path = root / "store" / "m" / "v1"
    path.mkdir(parents=True, exist_ok=True)
    data = {"created_at": (NOW - timedelta(days=10)).isoformat(), "task": "classification", **lineage}
    if validation:
        data["validation"] = validation
    (path / "lineage.json").write_text(json.dumps(data))
    if predictions is not None:
        predictions.to_parquet(path / "reference_predictions.parquet")
    return "file://" + str(path)


def answers(n: int, wrong: int, start: datetime, label: str = "cat") -> pd.DataFrame:
    """`n` answered predictions of `label`, the first `wrong` of them answered "wrong" (no correction)."""
    at = [start + timedelta(minutes=i) for i in range(n)]
    correct = [i >= wrong for i in range(n)]
    return pd.DataFrame({
        "id": [f"{start.timestamp()}-{i}" for i in range(n)], "created_at": at, "predicted_label": label,
        "is_correct": correct, "label": [label if c else None for c in correct], "feedback_at": at,
    })


def write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_parquet(path)
    return path


def decide(
    tmp_path: Path, frame: pd.DataFrame, uri: str, dsn: str | None = None, policy: core.Policy = POLICY,
    baseline_days: float = 0.0, **stats,
):
    signals = gather.signals(
        {"training_rows": 1000, **stats}, is_drift=False, feedback_path=write(frame, tmp_path / "f.parquet"),
        production_model_uri=uri, model_name="m", dsn=dsn, baseline_days=baseline_days,
    )
    return signals, core.decide(signals, policy)


# --- the test itself ----------------------------------------------------------------------------


def test_agresti_caffo_z_matches_a_hand_computation() -> None:
    t = evidence.worse_than(Sample.rate(30, 100), Sample.rate(10, 100), 0.0, 0.05, "error_rate")
    f, r = 31 / 102, 11 / 102
    z = (f - r) / np.sqrt(f * (1 - f) / 102 + r * (1 - r) / 102)
    assert t.statistic == pytest.approx(z) and t.p_value == pytest.approx(0.000178, rel=0.02) and t.fired


def test_performance_fires_just_above_its_threshold_and_holds_just_below() -> None:
    base = Sample.rate(100, 1000)  # 10 % on 1000 validation rows; threshold 11 %
    p = [evidence.worse_than(Sample.rate(k, 1000), base, 0.10, 0.05, "error_rate").p_value for k in range(100, 220)]
    assert all(a >= b for a, b in zip(p, p[1:])), "more errors, stronger evidence"
    first = next(k for k, v in zip(range(100, 220), p) if v < 0.05)
    below, above = Sample.rate(first - 1, 1000), Sample.rate(first, 1000)
    assert not evidence.worse_than(below, base, 0.10, 0.05, "error_rate").fired
    assert evidence.worse_than(above, base, 0.10, 0.05, "error_rate").fired
    assert 0.13 < first / 1000 < 0.15  # the baseline's own sampling error and the margin both count
    # Without the margin the same error is evidence sooner.
    assert evidence.worse_than(Sample.rate(first - 5, 1000), base, 0.0, 0.05, "error_rate").fired


def test_the_baseline_pools_production_first_days_of_service_once_they_are_over(tmp_path: Path) -> None:
    # Validated at 16 % on 300 rows (a pessimistic draw); in service it answered 10 % wrong for
    # its first two days; today 18 % wrong: a real fall the validation alone cannot see.
    created = NOW - timedelta(days=5)
    uri = version_dir(tmp_path, {"metric": "error_rate", "value": 0.16, "rows": 300}, created_at=created.isoformat())
    first = answers(1000, 100, created + timedelta(hours=1)).assign(model_version="v1")
    other = answers(500, 400, created + timedelta(hours=2), label="dog").assign(model_version="v0")  # the previous version
    today = answers(600, 108, NOW - timedelta(hours=12)).assign(model_version="v1")
    frame = pd.concat([first, other.assign(is_correct=None), today], ignore_index=True)
    signals, alone = decide(tmp_path, frame, uri)
    assert not alone.retrain and signals.evidence.baseline.validated is None
    signals, pooled = decide(tmp_path, frame, uri, baseline_days=2)
    b = signals.evidence.baseline
    assert b.validated == Sample.rate(48, 300) and b.sample.rows == 1300  # v0's answers are not production's
    assert b.sample.mean == pytest.approx((48 + 100) / 1300)
    assert pooled.retrain and pooled.fired[0].name == "performance"
    e = pooled.to_dict()["evidence"]["baseline"]
    assert e["validated"] == {"value": pytest.approx(0.16), "rows": 300} and "first 2 days of service (10.0% on 1000)" in e["source"]
    # Days not over yet: the validated error alone (a baseline must not contain the window it judges).
    young = version_dir(tmp_path, {"metric": "error_rate", "value": 0.16, "rows": 300}, created_at=(NOW - timedelta(days=1)).isoformat())
    signals, _ = decide(tmp_path, today.assign(feedback_at=NOW - timedelta(hours=1)), young, baseline_days=2)
    assert signals.evidence.baseline.validated is None and signals.evidence.baseline.sample.rows == 300


def test_min_feedback_is_the_fewest_answers_judged(tmp_path: Path) -> None:
    uri = version_dir(tmp_path, {"metric": "error_rate", "value": 0.1, "rows": 1000})
    _, short = decide(tmp_path, answers(99, 60, NOW - timedelta(days=1)), uri)
    assert not short.retrain and "not enough fresh answers: 99 < 100" in short.reasons[0]
    _, enough = decide(tmp_path, answers(100, 60, NOW - timedelta(days=1)), uri)
    assert enough.retrain and enough.fired[0].name == "performance"


def test_a_stationary_error_never_fires_and_the_decision_states_its_evidence(tmp_path: Path) -> None:
    uri = version_dir(tmp_path, {"metric": "error_rate", "value": 0.1, "rows": 1000})
    _, decision = decide(tmp_path, answers(5000, 520, NOW - timedelta(days=4)), uri)  # 10.4 %: noise
    assert not decision.retrain
    e = decision.to_dict()["evidence"]
    assert e["baseline"] == {"metric": "error_rate", "value": 0.1, "rows": 1000, "source": "lineage.json", "version": "v1"}
    assert e["fresh"]["rows"] == 5000 and e["fresh"]["interval"][0] < 0.104 < e["fresh"]["interval"][1]
    assert e["test"]["p_value"] > 0.05 and e["test"]["threshold"] == pytest.approx(0.11)
    text = decision.to_markdown()
    assert "## Evidence for the payoff" in text and "| production, baseline (lineage.json) | 10.0% |" in text
    assert "One-sided z (Agresti-Caffo)" in text and "p = " in text
    assert not any(isinstance(v, float) and np.isnan(v) for v in json.loads(json.dumps(e)).get("test", {}).values())


def test_the_baseline_falls_back_on_the_validation_predictions_then_cannot_judge(tmp_path: Path) -> None:
    preds = pd.DataFrame({"label": ["cat"] * 80 + ["dog"] * 20, "predicted_label": ["cat"] * 100})
    baseline, reason, created = gather.read_baseline(version_dir(tmp_path, predictions=preds))
    assert baseline.metric == "error_rate" and baseline.sample.mean == 0.2 and baseline.sample.rows == 100
    assert baseline.source == "reference_predictions.parquet" and created
    bad, reason, _ = gather.read_baseline(version_dir(tmp_path, {"metric": "error_rate", "value": 1.7, "rows": 10}))
    assert bad is None and "unusable 'validation'" in reason
    (tmp_path / "store" / "m" / "v1" / "reference_predictions.parquet").unlink()
    baseline, reason, _ = gather.read_baseline(version_dir(tmp_path))
    assert baseline is None and "records no validated error" in reason
    _, decision = decide(tmp_path, answers(500, 400, NOW - timedelta(days=1)), "file://" + str(tmp_path / "store/m/v1"))
    rule = next(r for r in decision.rules if r.name == "performance")
    assert not rule.fired and rule.detail.startswith("cannot judge: production v1 records no validated error")


def test_a_regressor_is_judged_on_its_squared_errors_by_welch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    preds = pd.DataFrame({"label": [f"{v:.6f}" for v in rng.normal(0, 1, 2000)], "predicted_label": "0.0"})
    baseline, _, _ = gather.read_baseline(version_dir(tmp_path, predictions=preds, task="regression"))
    assert baseline.metric == "mse" and baseline.sample.mean == pytest.approx(1.0, abs=0.1)

    def fresh(scale: float, n: int = 400) -> pd.DataFrame:
        frame = answers(n, n, NOW - timedelta(days=1))
        frame["predicted_label"] = "0.0"
        frame["label"] = [f"{v:.6f}" for v in rng.normal(0, scale, n)]  # every answer a correction
        frame.loc[0, "label"] = None  # a "wrong" without the right value: counted, not judged
        return frame

    uri = version_dir(tmp_path, {"metric": "mse", "value": 1.0, "rows": 2000}, task="regression")
    signals, same = decide(tmp_path, fresh(1.0), uri)
    assert not same.retrain and signals.evidence.unjudged == 1 and signals.evidence.fresh.rows == 399
    _, worse = decide(tmp_path, fresh(1.6), uri)  # mse ≈ 2.6
    assert worse.retrain and "Welch t" in worse.fired[0].detail


def test_first_model_trains_when_none_serves_and_enough_rows_are_labelled(tmp_path: Path) -> None:
    _, few = decide(tmp_path, answers(99, 0, NOW - timedelta(days=1)), "", new_rows=99)
    assert not few.retrain and "no model serves; 99 labelled rows (< 100)" in few.reasons[1]
    _, enough = decide(tmp_path, answers(100, 0, NOW - timedelta(days=1)), "", new_rows=100)
    assert enough.retrain and enough.fired[0].name == "first_model"
    assert next(r for r in enough.rules if r.name == "performance").detail == "cannot judge: no model serves yet"


def test_prediction_and_residual_drift_are_rules_the_policy_can_enable(tmp_path: Path) -> None:
    drift = {"prediction.tested": 1.0, "prediction.outputs_drift": 1.0, "residual.p_value": 0.001, "residual.is_drift": 1.0,
             "residual.error_rate.reference": 0.1, "residual.error_rate.current": 0.3}
    s = gather.signals({}, is_drift=False, drift=drift)
    both = core.policy(rules=("prediction_drift", "residual_drift"))
    assert {r.name for r in core.decide(s, both).fired} == {"prediction_drift", "residual_drift"}
    assert not core.decide(s, POLICY).retrain, "off by default"
    better = gather.signals({}, is_drift=False, drift={**drift, "residual.error_rate.current": 0.05, "prediction.outputs_drift": 0.0})
    assert not core.decide(better, both).retrain, "a model that errs less is no reason to retrain"


# --- the evidence memory ------------------------------------------------------------------------


def test_after_a_fruitless_attempt_only_new_evidence_retrains(tmp_path: Path, database_url: str) -> None:
    uri = version_dir(tmp_path, {"metric": "error_rate", "value": 0.1, "rows": 1000})
    seen = answers(300, 90, NOW - timedelta(days=3))  # 30 %: the attempt's evidence
    signals, first = decide(tmp_path, seen, uri, database_url, new_rows=210)
    assert first.retrain and signals.evidence.attempt is None
    core.record(database_url, "m", "attempt-1", signals, first)  # it trained, and blessed nothing

    # The same evidence again, plus 50 new answers as bad as before: not enough to judge (the
    # next try needs twice the answers the attempt's test fired on: 600).
    more = pd.concat([seen, answers(50, 15, NOW - timedelta(days=1))])
    signals, again = decide(tmp_path, more, uri, database_url, new_rows=260)
    assert not again.retrain
    assert signals.evidence.attempt.run_name == "attempt-1" and signals.evidence.since_attempt.rows == 50
    assert signals.new_rows == 35, "new_data counts labelled rows since the attempt"
    assert "since attempt attempt-1" in again.reasons[0] and "50 < 600" in again.reasons[0]
    assert again.to_dict()["evidence"]["remembered_attempt"]["run_name"] == "attempt-1"
    assert "Remembered attempt: run attempt-1" in again.to_markdown()
    core.record(database_url, "m", "waiting", signals, again)  # a "no" is no attempt

    # 550 more bad answers: twice the attempt's evidence, and production is worse than validated.
    most = pd.concat([more, answers(550, 220, NOW - timedelta(hours=12))])
    signals, third = decide(tmp_path, most, uri, database_url)
    assert third.retrain and signals.evidence.since_attempt.rows == 600 and signals.evidence.attempt.run_name == "attempt-1"
    assert signals.new_rows == 35 + 330 and third.fired[0].name == "performance"


def test_significantly_worse_than_at_the_attempt_is_new_evidence(tmp_path: Path, database_url: str) -> None:
    uri = version_dir(tmp_path, {"metric": "error_rate", "value": 0.1, "rows": 1000})
    seen = answers(300, 60, NOW - timedelta(days=3))  # 20 %
    signals, first = decide(tmp_path, seen, uri, database_url)
    core.record(database_url, "m", "attempt-1", signals, first)
    assert first.retrain
    # 40 new answers (fewer than min_feedback), nearly all wrong: far worse than the attempt's 20 %.
    _, worse = decide(tmp_path, pd.concat([seen, answers(40, 36, NOW - timedelta(days=1))]), uri, database_url)
    assert worse.retrain and "vs the attempt's 20.0% on 300" in worse.fired[0].detail


def test_an_attempt_older_than_production_is_forgotten(tmp_path: Path, database_url: str) -> None:
    uri = version_dir(tmp_path, {"metric": "error_rate", "value": 0.1, "rows": 1000})
    signals, first = decide(tmp_path, answers(300, 90, NOW - timedelta(days=3)), uri, database_url)
    core.record(database_url, "m", "attempt-1", signals, first)
    newer = version_dir(tmp_path, {"metric": "error_rate", "value": 0.1, "rows": 1000}, created_at=(NOW + timedelta(minutes=5)).isoformat())
    signals, _ = decide(tmp_path, answers(300, 90, NOW - timedelta(days=3)), newer, database_url)
    assert signals.evidence.attempt is None


# --- `feedback-loop check` and the component decide alike ---------------------------------------


@pytest.mark.slow
def test_check_gives_the_components_decision(database_url: str, tmp_path: Path, monkeypatch) -> None:
    from feedback_loop.deploy.rollout import Release, RolloutState
    from feedback_loop.deploy.targets.local import LocalTarget
    from feedback_loop.drift.component import detect_drift
    from feedback_loop.feedback.component import extract_feedback

    rng = np.random.default_rng(1)
    uri = version_dir(tmp_path, {"metric": "error_rate", "value": 0.1, "rows": 1000},
                      trained_through=(NOW - timedelta(days=5)).isoformat())
    version = Path(uri.removeprefix("file://"))
    pd.DataFrame({"id": [f"t{i}" for i in range(500)], "created_at": pd.Timestamp(NOW - timedelta(days=6)),
                  "x": rng.normal(0, 1, 500), "label": "cat"}).to_parquet(version / "training_data.parquet")
    target = LocalTarget("file://" + str(tmp_path / "store"), "m")
    target.read()
    target.write(RolloutState(stable=Release.at("v1", uri)))
    conn = store.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            execute_values(cur, "INSERT INTO predictions (id, created_at, model_name, model_version, features, predicted_label, confidence, latency_ms) VALUES %s",
                           [(f"p{i}", NOW - timedelta(minutes=10 * i + 20), "m", "v1", Json({"x": float(rng.normal(0.2, 1))}), "cat", 0.8, 10.0) for i in range(300)])
            execute_values(cur, "INSERT INTO feedback (prediction_id, created_at, is_correct, corrected_label, comment) VALUES %s",
                           [(f"p{i}", NOW - timedelta(minutes=10 * i + 15), i % 4 != 0, "dog" if i % 8 == 0 else None, None) for i in range(300)])
    finally:
        conn.close()
    monkeypatch.setenv("DATABASE_URL", database_url)
    settings = load(model_name="m", deploy_target="local", model_store_uri="file://" + str(tmp_path / "store"))
    by_check = check.check(settings, database_url)["decision"]

    production = {"since": (NOW - timedelta(days=5)).isoformat(), "reference_data_uri": uri + "/training_data.parquet"}
    out = tmp_path / "run"
    feedback, stats = dsl.Dataset(uri=str(out / "feedback")), dsl.Metrics(uri=str(out / "stats"))
    extract_feedback.python_func(feedback=feedback, stats=stats, model_name="m", **production)
    drift = {k: getattr(dsl, t)(uri=str(out / k)) for k, t in (("report", "HTML"), ("summary", "Markdown"), ("metrics", "Metrics"), ("verdict_json", "Artifact"))}
    is_drift = detect_drift.python_func(current=feedback, reference_uri=production["reference_data_uri"], **drift)
    markdown = dsl.Markdown(uri=str(out / "decision.md"))
    decide_retrain.python_func(stats=stats, feedback=feedback, drift_metrics=drift["metrics"], decision=markdown, model_name="m",
                               holdout_from=str(out / "holdout_from"), is_drift=is_drift, production_model_uri=uri, run_name="r")
    by_component = markdown.metadata["decision"]
    assert by_component == by_check
    assert by_check["retrain"] and by_check["fired"] == ["performance"]  # 25 % wrong vs 10 % validated
    assert by_check["evidence"]["fresh"]["rows"] == 300
    # The output parameter prepare_dataset draws the holdout by: where the worse answers begin
    # (here the whole extract fired: "").
    assert (out / "holdout_from").read_text() == by_check["holdout_from"] == by_check["evidence"]["test"]["window_start"] == ""


def test_a_recent_change_is_caught_before_the_whole_window_catches_up(tmp_path: Path, database_url: str) -> None:
    uri = version_dir(tmp_path, {"metric": "error_rate", "value": 0.1, "rows": 1000})
    # Three weeks at the validated 10 %, then one day at 25 %: diluted in the whole window (11 %).
    # Each day's answers lie within its calendar day (the windows count days), yesterday last.
    yesterday = NOW.replace(hour=1, minute=0, second=0, microsecond=0) - timedelta(days=1)
    calm = pd.concat([answers(300, 30, yesterday - timedelta(days=d)) for d in range(21, 0, -1)])
    signals, decision = decide(tmp_path, pd.concat([calm, answers(300, 75, yesterday)]), uri, database_url)
    test = decision.to_dict()["evidence"]["test"]
    assert decision.retrain and "(last 1 day)" in decision.fired[0].detail
    assert test["window"] == "last 1 day" and test["windows_tested"] == 6 and test["p_value"] < 0.05 / 6
    # The candidate will be judged on that day's answers, not on the calm weeks before it.
    assert decision.holdout_from == test["window_start"] == f"{yesterday.date().isoformat()}T00:00:00+00:00"
    # The same three calm weeks alone: no window fires, at the level split across them.
    _, calm_decision = decide(tmp_path, calm, uri, database_url)
    assert not calm_decision.retrain
    assert calm_decision.holdout_from == ""
