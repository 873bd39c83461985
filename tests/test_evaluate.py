"""The blessing on small tabular models: guard retirement under concept drift, significance by
default, the latency gate on a loaded machine, and each gate's figures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from kfp import dsl

from feedback_loop import dataset, lineage
from feedback_loop.deploy.component import deploy_canary
from feedback_loop.evaluate import core as evaluate_core
from feedback_loop.evaluate.component import evaluate_model
from feedback_loop.evaluate.gates import latency_gate
from feedback_loop.evaluate.latency import LatencyComparison, compare_latency, compare_models, median_interval
from feedback_loop.layout import TEST_DATA_FILE
from feedback_loop.settings import Settings
from feedback_loop.train import core as train_core

START = pd.Timestamp("2024-01-01", tz="UTC")
FEATURES = [f"f{i}" for i in range(4)]


def concept_rows(n: int, concept: str, seed: int, prefix: str) -> pd.DataFrame:
    """Rows whose label is x0 + x1 > 0 ("old") or x0 - x1 > 0 ("new"): half the space flips."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    positive = x[:, 0] + x[:, 1] > 0 if concept == "old" else x[:, 0] - x[:, 1] > 0
    frame = pd.DataFrame(x * 10 + 50, columns=FEATURES)
    frame.insert(0, "id", [f"{prefix}-{i}" for i in range(n)])
    frame.insert(1, "created_at", START + pd.to_timedelta(np.arange(n), unit="min"))
    frame.insert(2, "label", np.where(positive, "yes", "no"))
    return frame


def train(rows: pd.DataFrame, out: Path, version: str, epochs: int = 15, seed: int = 0) -> Path:
    path = dataset.write_parquet(rows, out.with_suffix(".parquet"))
    params = train_core.TrainParams(epochs=epochs, seed=seed, learning_rate=1e-2, batch_size=32, patience=20)
    train_core.train(path, out, params, model_name="tabular", version=version)
    return out


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Production learnt the old concept; `adapted` the new one; `twin` is production's architecture, another seed."""
    root = tmp_path_factory.mktemp("stream")
    paths = {
        "guard": dataset.write_parquet(concept_rows(400, "old", 1, "guard"), root / "guard.parquet"),
        "stable_holdout": dataset.write_parquet(concept_rows(400, "old", 2, "stable"), root / "stable.parquet"),
        "moved_holdout": dataset.write_parquet(concept_rows(400, "new", 3, "moved"), root / "moved.parquet"),
    }
    paths["production"] = train(concept_rows(800, "old", 4, "old"), root / "production", "v-production")
    paths["twin"] = train(concept_rows(800, "old", 5, "twin"), root / "twin", "v-twin", seed=1)
    paths["adapted"] = train(concept_rows(800, "new", 6, "new"), root / "adapted", "v-adapted")
    paths["weak"] = train(concept_rows(40, "old", 7, "weak"), root / "weak", "v-weak", epochs=1)
    return paths


def gate(verdict: evaluate_core.Verdict, name: str) -> evaluate_core.GateResult:
    return next(g for g in verdict.gate_results if g.name == name)


# --- the guard set ----------------------------------------------------------------------


@pytest.mark.slow
def test_concept_moved_the_guard_is_retired_and_the_adapted_candidate_blessed(stream: dict[str, Path]) -> None:
    gates = evaluate_core.Gates(max_latency_ratio=0)
    verdict = evaluate_core.evaluate(stream["adapted"], stream["production"], stream["moved_holdout"], gates, stream["guard"])
    assert verdict.guard_retired and verdict.guard_source == "replaced"
    assert verdict.blessed, verdict.reasons
    figures = verdict.guard
    assert figures["on_holdout"] - figures["on_guard"] > 0.2  # production fell on fresh data
    assert figures["low"] > figures["margin"] == gates.guard_retire_margin
    assert figures["guard_units"] == 400 and figures["holdout_units"] == 400
    retired = gate(verdict, "guard")
    assert not retired.enforced and "guard RETIRED" in retired.detail and "lower bound" in retired.detail
    # The no-regression gate now reads the holdout; the retired guard's figures stay on record.
    assert "guard set = this holdout" in gate(verdict, "no_regression").detail
    assert verdict.retired_guard["candidate"]["accuracy"] < verdict.retired_guard["production"]["accuracy"] - 0.2
    markdown = verdict.to_markdown()
    assert "carried guard was retired" in markdown and "Retired guard set (not gating)" in markdown
    json.dumps(verdict.to_dict(), allow_nan=False)

    # Held to the old guard, the same candidate is refused: the failure this retirement fixes.
    frozen = evaluate_core.evaluate(
        stream["adapted"], stream["production"], stream["moved_holdout"],
        evaluate_core.Gates(max_latency_ratio=0, guard_retire_margin=1.0), stream["guard"],
    )
    assert not frozen.guard_retired and not frozen.blessed
    assert not gate(frozen, "no_regression").passed and gate(frozen, "improvement").passed


@pytest.mark.slow
def test_stable_stream_keeps_the_guard_and_refuses_a_regressing_candidate(stream: dict[str, Path]) -> None:
    gates = evaluate_core.Gates(max_latency_ratio=0)
    verdict = evaluate_core.evaluate(stream["weak"], stream["production"], stream["stable_holdout"], gates, stream["guard"])
    assert verdict.guard_source == "carried" and not verdict.guard_retired
    assert "guard kept" in gate(verdict, "guard").detail
    assert abs(verdict.guard["increase"]) < 0.1 and verdict.guard["low"] <= verdict.guard["margin"]
    regression = gate(verdict, "no_regression")
    assert regression.enforced and not regression.passed and "guard set:" in regression.detail
    assert regression.n == 400 and regression.interval[0] < regression.figure < regression.interval[1]
    assert not verdict.blessed
    assert verdict.test_rows == 400 and "400 rows of the guard set carried" in verdict.to_markdown()


@pytest.mark.slow
def test_the_first_retrain_guard_is_the_holdout_itself(stream: dict[str, Path]) -> None:
    gates = evaluate_core.Gates(max_latency_ratio=0)
    verdict = evaluate_core.evaluate(
        stream["twin"], stream["production"], stream["stable_holdout"], gates, stream["stable_holdout"]
    )
    assert verdict.guard_source == "holdout" and not verdict.guard_retired
    assert "nothing carried yet" in verdict.guard["reason"]
    assert evaluate_core.chosen_guard(verdict, Path("h"), Path("t")) == Path("h")


@pytest.mark.slow
def test_the_guard_travels_with_the_blessed_version(stream: dict[str, Path], tmp_path: Path) -> None:
    def run(holdout: Path) -> tuple[bool, dsl.Dataset, dsl.Metrics]:
        guard = dsl.Dataset(uri=str(tmp_path / holdout.stem / "guard"))
        metrics = dsl.Metrics(uri=str(tmp_path / holdout.stem / "metrics"))
        blessed = evaluate_model.python_func(
            candidate=dsl.Model(uri=str(stream["adapted"])),
            holdout=dsl.Dataset(uri=str(holdout)),
            test=dsl.Dataset(uri=str(stream["guard"])),
            metrics=metrics,
            confusion=dsl.ClassificationMetrics(uri=str(tmp_path / holdout.stem / "confusion")),
            verdict=dsl.Markdown(uri=str(tmp_path / holdout.stem / "verdict.md")),
            guard=guard,
            production_model_uri="file://" + str(stream["production"]),
        )
        return blessed, guard, metrics

    blessed, guard, metrics = run(stream["moved_holdout"])
    assert blessed and guard.metadata == {"source": "replaced", "rows": 400, "retired": True}
    assert lineage.data_hash(Path(guard.path)) == lineage.data_hash(stream["moved_holdout"])
    logged = metrics.metadata
    assert logged["guard.retired"] == 1.0 and logged["guard.on_holdout"] > logged["guard.on_guard"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in logged.values())
    for name in ("improvement", "significance", "no_regression", "latency"):
        assert {"figure", "threshold", "n", "passed"} <= {k.split(".")[-1] for k in logged if k.startswith(f"gate.{name}.")}

    # deploy_canary publishes the guard the evaluation chose, not the one train_model copied.
    store = tmp_path / "store"
    outputs = deploy_canary.python_func(
        candidate=dsl.Model(uri=str(stream["adapted"])),
        record=dsl.Markdown(uri=str(tmp_path / "deploy.md")),
        guard=guard,
        model_name="tabular",
        model_store_uri=f"file://{store}",
        deploy_target="local",
    )
    published = store / "tabular" / outputs.version / TEST_DATA_FILE
    assert lineage.data_hash(published) == lineage.data_hash(stream["moved_holdout"])
    assert not (stream["adapted"] / TEST_DATA_FILE).exists() or lineage.data_hash(
        stream["adapted"] / TEST_DATA_FILE
    ) != lineage.data_hash(published)  # the candidate's own directory is left as train_model wrote it

    _, kept, _ = run(stream["stable_holdout"])
    assert kept.metadata["source"] == "carried"
    assert lineage.data_hash(Path(kept.path)) == lineage.data_hash(stream["guard"])


# --- significance -----------------------------------------------------------------------


def test_significance_is_required_by_default() -> None:
    assert evaluate_core.Gates().require_significant is True
    assert Settings.model_fields["require_significant"].default is True
    assert evaluate_model.component_spec.inputs["require_significant"].default is True


@pytest.mark.slow
def test_an_equal_candidate_is_not_significant(stream: dict[str, Path]) -> None:
    verdict = evaluate_core.evaluate(
        stream["production"], stream["production"], stream["stable_holdout"], evaluate_core.Gates(min_improvement=0.0)
    )
    significance = gate(verdict, "significance")
    assert significance.enforced and not significance.passed and not verdict.blessed
    assert significance.interval == [0.0, 0.0] and significance.n == 400 and significance.threshold == 0.0
    markdown = verdict.to_markdown()
    assert "| gate | result | figure | threshold | interval | n | why |" in markdown
    assert "| significance | FAIL |" in markdown


# --- latency ----------------------------------------------------------------------------


def _busy_workers() -> list[subprocess.Popen]:
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)
    ]


class _Sleep(keras.layers.Layer):
    """Adds a real 5 ms to every call, inside the traced graph."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        slept = tf.py_function(lambda: (time.sleep(0.005), np.float32(0.0))[1], [], tf.float32)
        slept.set_shape([])
        return x + slept

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


@pytest.mark.slow
def test_two_models_of_one_architecture_pass_on_a_loaded_machine(stream: dict[str, Path]) -> None:
    production, twin = train_core.load_model(stream["production"]), train_core.load_model(stream["twin"])
    row = pd.read_parquet(stream["stable_holdout"]).iloc[:1]
    workers = _busy_workers()
    try:
        time.sleep(0.5)  # let the load build up
        measured = compare_models(twin, production, row, rounds=100, confidence=0.95)
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    print(f"loaded machine: twin/production {measured.ratio:.3f}x [{measured.ratio_low:.3f}, {measured.ratio_high:.3f}], "
          f"{measured.difference_ms:+.3f} ms ({measured.candidate_ms:.3f} vs {measured.production_ms:.3f} ms)")
    assert latency_gate(measured, evaluate_core.Gates()).passed
    # Not only the margin: the paired ratio itself stays within the default 1.5x.
    assert measured.ratio <= 1.5


@pytest.mark.slow
def test_a_genuinely_slower_candidate_fails(stream: dict[str, Path]) -> None:
    production = train_core.load_model(stream["production"])
    inputs = production.keras_model.inputs
    slow = keras.Model(inputs, production.keras_model(_Sleep()(inputs[0])))
    candidate = train_core.LoadedModel(slow, production.lineage)
    row = pd.read_parquet(stream["stable_holdout"]).iloc[:1]
    measured = compare_models(candidate, production, row, rounds=30, confidence=0.95)
    print(f"sleep layer: {measured.ratio:.2f}x, {measured.difference_ms:+.2f} ms")
    result = latency_gate(measured, evaluate_core.Gates())
    assert not result.passed and "slower by both" in result.detail
    assert measured.difference_ms >= 4.5 and result.n == 30 and result.interval[0] > 1.5


def test_the_latency_gate_needs_both_the_ratio_and_the_margin() -> None:
    def comparison(candidate_ms: float, production_ms: float) -> LatencyComparison:
        ratio = candidate_ms / production_ms
        return LatencyComparison(candidate_ms, production_ms, ratio, ratio, ratio, candidate_ms - production_ms, 100, 5, 0.95)

    gates = evaluate_core.Gates()
    assert latency_gate(comparison(0.9, 0.3), gates).passed  # 3x, but 0.6 ms: within the margin
    assert latency_gate(comparison(60.0, 50.0), gates).passed  # 10 ms, but 1.2x: within the ratio
    assert not latency_gate(comparison(8.0, 3.0), gates).passed  # 2.7x and 5 ms
    assert latency_gate(comparison(8.0, 3.0), evaluate_core.Gates(latency_margin_ms=10)).passed


def test_interleaved_rounds_pair_the_noise() -> None:
    # A burst that slows every call of some rounds weighs on both sides of those rounds alike.
    clock = {"n": 0}

    def noisy(cost: float):
        def call() -> None:
            clock["n"] += 1
            end = time.perf_counter() + cost * (20 if (clock["n"] // 40) % 5 == 0 else 1)
            while time.perf_counter() < end:
                pass
        return call

    measured = compare_latency(noisy(0.0002), noisy(0.0002), rounds=60, calls_per_round=2)
    assert 0.67 < measured.ratio < 1.5 and measured.rounds == 60
    low, high = median_interval(np.arange(100, dtype=float), 0.95)
    assert 35 <= low < 50 < high <= 65
