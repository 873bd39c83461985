"""The retrain policy: named rules with their figures, switchable, and the rollout blocker."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from kfp import dsl
from psycopg2.extras import Json, execute_values

from feedback_loop.cli import main
from feedback_loop.decide import check, core
from feedback_loop.decide.component import decide_retrain
from feedback_loop.errors import SettingsError
from feedback_loop.feedback import store
from feedback_loop.decide.rules import DEFAULT_RULES, NAMES
from feedback_loop.demo import scenario
from feedback_loop.settings import Settings, load

# The first users' absolute rules, as the cats-vs-dogs demo enables them.
OLD_RULES = ("user_feedback", "error_rate", "latency", "keywords", "new_data", "input_drift", "model_age")
POLICY = core.policy(min_feedback=100, min_negative=20, min_positive_rate=0.70, rules=OLD_RULES)


def signals(**changes) -> core.Signals:
    base = dict(feedback_count=0, negative_count=0, satisfaction_rate=0.0, is_drift=False)
    return core.Signals(**{**base, **changes})


def test_empty_feedback_window_is_a_no_retrain_decision() -> None:
    decision = core.decide(signals(), POLICY)
    assert not decision.retrain and not decision.fired
    assert any("not enough feedback: 0 < 100" in reason for reason in decision.reasons)


def test_the_three_feedback_thresholds_fire_only_together() -> None:
    unhappy = dict(feedback_count=150, negative_count=50, satisfaction_rate=0.66)
    assert core.decide(signals(**unhappy), POLICY).retrain
    assert not core.decide(signals(**{**unhappy, "feedback_count": 99}), POLICY).retrain
    assert not core.decide(signals(**{**unhappy, "negative_count": 19}), POLICY).retrain
    assert not core.decide(signals(**{**unhappy, "satisfaction_rate": 0.70}), POLICY).retrain
    fired = core.decide(signals(**unhappy), POLICY).reasons
    assert fired == ["user_feedback: 150 feedbacks (≥ 100), 50 negative (≥ 20), satisfaction 66.0% (< 70%)"]


@pytest.mark.parametrize(
    "changes,rule,detail",
    [
        (dict(error_rate=0.08, error_rate_feedback=300), "error_rate", "error rate 8.0% over 300 recent feedbacks (> 5.0%)"),
        (dict(latency_ratio=1.6, recent_latency_ms=48.0, baseline_latency_ms=30.0), "latency", "recent latency 48.0 ms is 160% of the baseline 30.0 ms (> 150%)"),
        (dict(keyword_hits=11), "keywords", "11 negative comments name a keyword (> 10)"),
        (dict(new_rows=500, new_data_share=0.2), "new_data", "500 new labelled rows, 20% of the training data (≥ 20%)"),
        (dict(is_drift=True), "input_drift", "drift detected"),
        (dict(days_since_training=91.5), "model_age", "model trained 91.5 days ago (> 90)"),
        (dict(force=True), "force", "forced by the operator"),
    ],
)
def test_each_rule_fires_alone_and_names_its_figures(changes, rule, detail) -> None:
    decision = core.decide(signals(**changes), POLICY)
    assert decision.retrain and decision.reasons == [f"{rule}: {detail}"]


@pytest.mark.parametrize(
    "changes",
    [
        dict(error_rate=0.05, error_rate_feedback=300),  # at the threshold
        dict(error_rate=0.9, error_rate_feedback=99),  # too few answers to judge
        dict(latency_ratio=1.5),
        dict(latency_ratio=0.0, recent_latency_ms=900.0),  # unknown baseline
        dict(keyword_hits=10),
        dict(new_rows=99, new_data_share=5.0),
        dict(new_rows=500, new_data_share=0.19),
        dict(days_since_training=90.0),
        dict(days_since_training=-1.0),  # no model yet
    ],
)
def test_rules_hold_at_their_thresholds(changes) -> None:
    assert not core.decide(signals(**changes), POLICY).retrain


def test_a_disabled_rule_is_listed_but_never_fires() -> None:
    policy = core.policy(rules=("user_feedback",))
    decision = core.decide(signals(is_drift=True, keyword_hits=500), policy)
    assert not decision.retrain
    drift = next(r for r in decision.rules if r.name == "input_drift")
    assert not drift.enabled and not drift.fired and drift.detail == "drift detected"
    assert "| input_drift | no | no | drift detected |" in decision.to_markdown()
    with pytest.raises(SettingsError, match="unknown retrain rule"):
        core.policy(rules=("user_feedback", "moon_phase"))


def test_no_second_rollout_while_one_is_in_progress() -> None:
    decision = core.decide(signals(is_drift=True, force=True, rollout_in_progress=True), POLICY)
    assert not decision.retrain and decision.blocked_by.startswith("a canary rollout is in progress")
    assert decision.reasons == [decision.blocked_by] and "Blocked:" in decision.to_markdown()


def test_settings_know_the_same_rules() -> None:
    assert tuple(Settings.model_fields["rules"].default_factory()) == DEFAULT_RULES == ("performance", "first_model")
    assert set(OLD_RULES) | {"prediction_drift", "residual_drift"} | set(DEFAULT_RULES) == set(NAMES)
    assert check.policy_of(load()) == core.policy()
    assert scenario.RULES == OLD_RULES, "the demo keeps the first users' rules"


# --- properties -----------------------------------------------------------------------------

counts = st.integers(min_value=0, max_value=10_000)
rates = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
all_signals = st.builds(
    core.Signals,
    feedback_count=counts,
    negative_count=counts,
    satisfaction_rate=rates,
    is_drift=st.booleans(),
    rollout_in_progress=st.booleans(),
    force=st.booleans(),
    error_rate=rates,
    error_rate_feedback=counts,
    latency_ratio=st.floats(min_value=0.0, max_value=10.0, allow_nan=False),
    keyword_hits=counts,
    new_rows=counts,
    new_data_share=st.floats(min_value=0.0, max_value=5.0, allow_nan=False),
    days_since_training=st.one_of(st.just(-1.0), st.floats(min_value=0.0, max_value=1000.0, allow_nan=False)),
    has_production=st.booleans(),
    prediction_tested=st.booleans(),
    prediction_drift=st.booleans(),
    residual_p_value=st.one_of(st.just(-1.0), rates),
    residual_reference_rate=rates,
    residual_current_rate=rates,
    residual_drift=st.booleans(),
)
policies = st.builds(
    core.Policy,
    min_feedback=st.integers(min_value=0, max_value=1000),
    min_negative=st.integers(min_value=0, max_value=500),
    min_positive_rate=rates,
    max_error_rate=rates,
    max_recent_latency_ratio=st.floats(min_value=0.1, max_value=5.0, allow_nan=False),
    max_keyword_hits=st.integers(min_value=0, max_value=100),
    min_new_data_share=st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
    max_model_age_days=st.floats(min_value=1.0, max_value=365.0, allow_nan=False),
    rules=st.lists(st.sampled_from(NAMES), unique=True).map(tuple),
    performance_margin=st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
    performance_alpha=st.floats(min_value=0.001, max_value=0.2, allow_nan=False),
)


def expected_firing(s: core.Signals, p: core.Policy) -> set[str]:
    """The policy written out independently, rule by rule."""
    conditions = {
        "user_feedback": s.feedback_count >= p.min_feedback and s.negative_count >= p.min_negative and s.satisfaction_rate < p.min_positive_rate,
        "error_rate": s.error_rate_feedback >= p.min_feedback and s.error_rate > p.max_error_rate,
        "latency": s.latency_ratio > 0 and s.latency_ratio > p.max_recent_latency_ratio,
        "keywords": s.keyword_hits > p.max_keyword_hits,
        "new_data": s.new_rows >= p.min_feedback and s.new_data_share >= p.min_new_data_share,
        "input_drift": s.is_drift,
        "model_age": s.days_since_training >= 0 and s.days_since_training > p.max_model_age_days,
        "performance": False,  # no evidence gathered: it cannot judge (tests/test_decide_performance.py)
        "first_model": not s.has_production and s.new_rows >= p.min_feedback,
        "prediction_drift": s.prediction_tested and s.prediction_drift,
        "residual_drift": s.residual_p_value >= 0 and s.residual_drift and s.residual_current_rate > s.residual_reference_rate,
    }
    return {name for name, fired in conditions.items() if fired and name in p.rules} | ({"force"} if s.force else set())


@settings(max_examples=400, deadline=None)
@given(all_signals, policies)
def test_retrain_is_the_disjunction_of_the_enabled_rules_unless_a_rollout_runs(s: core.Signals, p: core.Policy) -> None:
    decision = core.decide(s, p)
    fired = {r.name for r in decision.fired}
    assert fired == expected_firing(s, p)
    assert decision.retrain == (bool(fired) and not s.rollout_in_progress)
    assert [r.name for r in decision.rules] == [*NAMES, "force"]
    assert all(r.enabled == (r.name in p.rules or r.name == "force") for r in decision.rules)
    assert decision.reasons and all(reason.strip() for reason in decision.reasons)
    if decision.retrain:
        assert decision.reasons == [f"{r.name}: {r.detail}" for r in decision.fired]


@settings(max_examples=200, deadline=None)
@given(all_signals, policies, st.sampled_from(NAMES))
def test_disabling_a_rule_never_causes_a_retrain(s: core.Signals, p: core.Policy, rule: str) -> None:
    fewer = core.policy(**{**p.__dict__, "rules": tuple(r for r in p.rules if r != rule)})
    assert core.decide(s, fewer).retrain <= core.decide(s, p).retrain


@settings(max_examples=200, deadline=None)
@given(all_signals, policies)
def test_the_decision_renders_every_rule_and_survives_json(s: core.Signals, p: core.Policy) -> None:
    decision = core.decide(s, p)
    text = decision.to_markdown()
    assert all(f"| {r.name} |" in text for r in decision.rules)
    assert json.loads(json.dumps(decision.to_dict()))["retrain"] == decision.retrain
    # The figures read back from KFP metrics give the same decision (the flags come from elsewhere).
    flags = {k: v for k, v in s.__dict__.items() if isinstance(v, bool)}
    metrics = {k: float(v) for k, v in s.__dict__.items() if k not in flags and k != "evidence"}
    again = core.Signals.from_metrics(metrics, is_drift=s.is_drift, rollout_in_progress=s.rollout_in_progress, force=s.force)
    again = dataclasses.replace(again, **flags)
    assert core.decide(again, p).to_dict() == decision.to_dict()


# --- the component and the operator command ---------------------------------------------------


def metrics_artifact(tmp_path: Path, **values: float) -> dsl.Metrics:
    stats = dsl.Metrics(uri=str(tmp_path / "stats"))
    for name, value in values.items():
        stats.log_metric(name, value)
    return stats


def empty_feedback(tmp_path: Path) -> dsl.Dataset:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from feedback_loop.feedback.features import BASE_COLUMNS

    artifact = dsl.Dataset(uri=str(tmp_path / "feedback"))
    pq.write_table(pa.schema(BASE_COLUMNS).empty_table(), artifact.path)
    return artifact


def test_wrapper_reads_the_metrics_writes_markdown_and_records_the_run(database_url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    stats = metrics_artifact(tmp_path, feedback_count=200, negative_count=80, satisfaction_rate=0.6, keyword_hits=3, error_rate=0.4, error_rate_feedback=150)
    markdown = dsl.Markdown(uri=str(tmp_path / "decision.md"))
    retrain = decide_retrain.python_func(
        stats=stats, feedback=empty_feedback(tmp_path), drift_metrics=dsl.Metrics(uri=str(tmp_path / "drift")), decision=markdown,
        holdout_from=str(tmp_path / "holdout_from"), model_name="m", is_drift=True, run_name="run-1", rules=["user_feedback", "input_drift", "keywords"],
    )
    assert retrain is True
    text = Path(markdown.path).read_text()
    assert "| user_feedback | yes | yes |" in text and "| input_drift | yes | yes |" in text
    assert "| error_rate | no | no | error rate 40.0% over 150 recent feedbacks (> 5.0%) |" in text
    assert "- **user_feedback**: 200 feedbacks" in text
    assert markdown.metadata["decision"]["fired"] == ["user_feedback", "input_drift"]
    conn = store.connect(database_url)
    try:
        (row,) = store.history(conn, "m")
    finally:
        conn.close()
    assert row["run_name"] == "run-1" and row["retrain"] and len(row["reasons"]) == 2
    assert row["stats"]["feedback_count"] == 200 and row["stats"]["is_drift"] is True


def test_decide_interface() -> None:
    spec = decide_retrain.component_spec
    assert spec.outputs["Output"].type == "Boolean" and spec.outputs["decision"].type == "system.Markdown@0.0.1"
    assert spec.inputs["stats"].type == "system.Metrics@0.0.1"
    assert spec.inputs["feedback"].type == "system.Dataset@0.0.1" and spec.inputs["drift_metrics"].type == "system.Metrics@0.0.1"
    wired = {"stats", "feedback", "drift_metrics", "model_name", "is_drift", "production_model_uri", "rollout_in_progress", "run_name"}
    assert set(spec.inputs) - wired <= set(Settings.model_fields)


@pytest.mark.slow
def test_check_command_decides_without_training(database_url: str, tmp_path: Path, monkeypatch) -> None:
    conn = store.connect(database_url)
    now = datetime.now(timezone.utc)
    try:
        with conn, conn.cursor() as cur:
            rows = [(f"p{i}", now - timedelta(hours=i + 1), "m", "v1", Json({"x": float(i)}), "cat", 0.8, 10.0) for i in range(150)]
            execute_values(cur, "INSERT INTO predictions (id, created_at, model_name, model_version, features, predicted_label, confidence, latency_ms) VALUES %s", rows)
            execute_values(cur, "INSERT INTO feedback (prediction_id, created_at, is_correct, corrected_label, comment) VALUES %s",
                           [(f"p{i}", now - timedelta(hours=i), i % 2 == 0, None if i % 2 == 0 else "dog", "wrong") for i in range(150)])
    finally:
        conn.close()
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("RETRAIN_MODEL_NAME", "m")
    monkeypatch.setenv("RETRAIN_DEPLOY_TARGET", "local")
    monkeypatch.setenv("RETRAIN_MODEL_STORE_URI", str(tmp_path / "store"))
    runner = CliRunner()
    result = runner.invoke(main, ["check", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    # No model serves: the default policy trains a first one on the 150 labelled rows.
    assert data["decision"]["retrain"] is True and data["decision"]["fired"] == ["first_model"]
    monkeypatch.setenv("RETRAIN_RULES", "user_feedback")
    data = json.loads((out := runner.invoke(main, ["check", "--json"]).output)[out.index("{"):])
    assert data["decision"]["retrain"] is True and "user_feedback" in data["decision"]["fired"]
    assert data["stats"]["feedback_count"] == 150 and data["production_version"] == ""
    monkeypatch.setenv("RETRAIN_MIN_FEEDBACK", "1000")
    monkeypatch.setenv("RETRAIN_RULES", "user_feedback,input_drift")
    result = runner.invoke(main, ["check"])
    assert result.exit_code == 0, result.output  # no retrain is no error
    assert "no retrain" in result.output and "not enough feedback: 150 < 1000" in result.output
    with store.connect(database_url) as conn2, conn2.cursor() as cur:
        cur.execute("SELECT count(*) FROM retrain_runs")
        assert cur.fetchone()[0] == 0, "check records nothing"


def test_rule_settings_come_from_the_environment_and_are_checked(monkeypatch) -> None:
    monkeypatch.setenv("RETRAIN_RULES", "user_feedback, input_drift")
    monkeypatch.setenv("RETRAIN_KEYWORDS", "flou,nul")
    monkeypatch.setenv("RETRAIN_MAX_ERROR_RATE", "0.1")
    loaded = load(max_keyword_hits=3)
    assert loaded.rules == ["user_feedback", "input_drift"] and loaded.keywords == ["flou", "nul"]
    assert check.policy_of(loaded) == core.policy(max_error_rate=0.1, max_keyword_hits=3, rules=("user_feedback", "input_drift"))
    monkeypatch.setenv("RETRAIN_MAX_ERROR_RATE", "1.7")
    with pytest.raises(SettingsError, match=r"max_error_rate=1.7 \(env RETRAIN_MAX_ERROR_RATE\)"):
        load()
    monkeypatch.delenv("RETRAIN_MAX_ERROR_RATE")
    monkeypatch.setenv("RETRAIN_RULES", "user_feedback,moon_phase")
    with pytest.raises(SettingsError, match="RETRAIN_RULES"):
        load()


def test_every_policy_field_is_a_component_parameter_and_a_setting() -> None:
    """Policy.of picks values by name: a field missing on either side would silently keep its default."""
    from dataclasses import fields

    from feedback_loop.settings import Settings

    names = {f.name for f in fields(core.Policy)}
    assert names <= set(decide_retrain.component_spec.inputs)
    assert names <= set(Settings.model_fields)
