"""The retrain policy: named rules with their figures, and the rollout blocker."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from kfp import dsl

from feedback_loop.decide import core
from feedback_loop.decide.component import decide_retrain
from feedback_loop.feedback import store

POLICY = core.Policy(min_feedback=100, min_negative=20, min_positive_rate=0.70)


def signals(**changes) -> core.Signals:
    base = dict(feedback_count=0, negative_count=0, satisfaction_rate=0.0, is_drift=False)
    return core.Signals(**{**base, **changes})


def test_empty_feedback_window_is_a_no_retrain_decision() -> None:
    decision = core.decide(signals(), POLICY)
    assert not decision.retrain
    assert any("not enough feedback: 0 < 100" in reason for reason in decision.reasons)


def test_the_three_feedback_thresholds_fire_only_together() -> None:
    unhappy = dict(feedback_count=150, negative_count=50, satisfaction_rate=0.66)
    assert core.decide(signals(**unhappy), POLICY).retrain
    assert not core.decide(signals(**{**unhappy, "feedback_count": 99}), POLICY).retrain
    assert not core.decide(signals(**{**unhappy, "negative_count": 19}), POLICY).retrain
    assert not core.decide(signals(**{**unhappy, "satisfaction_rate": 0.70}), POLICY).retrain
    fired = core.decide(signals(**unhappy), POLICY).reasons
    assert fired == ["user_feedback: 150 feedbacks (≥ 100), 50 negative (≥ 20), satisfaction 66.0% (< 70%)"]


def test_drift_and_force_each_trigger_and_are_named() -> None:
    assert core.decide(signals(is_drift=True), POLICY).reasons == ["input_drift: drift detected"]
    assert core.decide(signals(force=True), POLICY).reasons == ["force: forced by the operator"]


def test_no_second_rollout_while_one_is_in_progress() -> None:
    decision = core.decide(signals(is_drift=True, force=True, rollout_in_progress=True), POLICY)
    assert not decision.retrain and decision.blocked_by.startswith("a canary rollout is in progress")


@pytest.mark.parametrize(
    "count,negative,rate,drift,force",
    list(itertools.product([0, 99, 100, 500], [0, 19, 20, 300], [0.0, 0.69, 0.7, 1.0], [False, True], [False, True])),
)
def test_policy_is_the_disjunction_of_its_rules(count, negative, rate, drift, force) -> None:
    decision = core.decide(signals(feedback_count=count, negative_count=negative, satisfaction_rate=rate, is_drift=drift, force=force), POLICY)
    unhappy = count >= 100 and negative >= 20 and rate < 0.70
    assert decision.retrain == (unhappy or drift or force)
    assert len(decision.rules) == 3 and decision.reasons


def test_wrapper_writes_markdown_and_records_the_run(database_url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    markdown = dsl.Markdown(uri=str(tmp_path / "decision.md"))
    retrain = decide_retrain.python_func(
        decision=markdown, model_name="m", feedback_count=200, negative_count=80, satisfaction_rate=0.6, is_drift=True, run_name="run-1"
    )
    assert retrain is True
    text = Path(markdown.path).read_text()
    assert "| user_feedback | yes |" in text and "| input_drift | yes |" in text
    assert markdown.metadata["decision"]["retrain"] is True
    conn = store.connect(database_url)
    try:
        (row,) = store.history(conn, "m")
    finally:
        conn.close()
    assert row["run_name"] == "run-1" and row["retrain"] and len(row["reasons"]) == 2
    assert row["stats"]["feedback_count"] == 200


def test_decide_interface() -> None:
    outputs = decide_retrain.component_spec.outputs
    assert outputs["Output"].type == "Boolean" and outputs["decision"].type == "system.Markdown@0.0.1"
