"""Every family trains, exports and is judged on generated data; strategies and gates on real models."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sklearn.datasets import make_regression

from feedback_loop import dataset
from feedback_loop.errors import DataError, SettingsError
from feedback_loop.evaluate import core as evaluate_core
from feedback_loop.train import core as train_core
from feedback_loop.train import families

START = pd.Timestamp("2024-01-01", tz="UTC")


def regression_rows(n: int = 700, seed: int = 0) -> pd.DataFrame:
    # f0 and f1 carry the signal; f2 and f3 are noise, so importance must tell them apart.
    x, y = make_regression(n_samples=n, n_features=4, n_informative=2, noise=3.0, random_state=seed, shuffle=False)
    frame = pd.DataFrame(x * 10 + 50, columns=[f"f{i}" for i in range(4)])
    frame.insert(0, "id", [f"r{i}" for i in range(n)])
    frame.insert(1, "created_at", START + pd.to_timedelta(np.arange(n), unit="h"))
    frame.insert(2, "label", [f"{v:.5f}" for v in y * 2 + 300])
    return frame


def interaction_rows(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    """Implicit feedback: three taste groups of users, each mostly picking from its own 8 items."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 60, 40
    group = rng.integers(0, 3, n_users)
    liked = {g: rng.choice(n_items, 8, replace=False) for g in range(3)}
    users = rng.integers(0, n_users, n)
    items = [rng.choice(liked[group[u]]) if rng.random() < 0.9 else rng.integers(n_items) for u in users]
    return pd.DataFrame(
        {
            "id": [f"e{i}" for i in range(n)],
            "created_at": START + pd.to_timedelta(np.arange(n), unit="min"),
            "label": "1",
            "user": [f"u{u}" for u in users],
            "item": [f"i{i}" for i in items],
        }
    )


def tiny_mlp(spec: dict, inputs: dict) -> keras.Model:
    """A user-defined family: `test_families:tiny_mlp`."""
    features = keras.Input((inputs["features"].shape[1],), name="features")
    x = keras.layers.Normalization(mean=inputs["features"].mean(0), variance=inputs["features"].var(0))(features)
    out = keras.layers.Dense(len(spec["classes"]), activation="softmax", name="probabilities")(x)
    return keras.Model(features, out, name="tiny")


@pytest.fixture(scope="module")
def regression(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("regression")
    rows = regression_rows()
    paths = {
        "train": dataset.write_parquet(rows.iloc[:500], folder / "train.parquet"),
        "holdout": dataset.write_parquet(rows.iloc[500:], folder / "holdout.parquet"),
    }
    params = train_core.TrainParams(epochs=15, family="tabular_regressor", learning_rate=3e-3, batch_size=32, seed=0)
    train_core.train(paths["train"], folder / "good", params, model_name="prices", version="v-good")
    shuffled = rows.iloc[:500].assign(label=np.random.default_rng(1).permutation(rows["label"].iloc[:500].to_numpy()))
    paths["shuffled"] = dataset.write_parquet(shuffled, folder / "shuffled.parquet")
    train_core.train(paths["shuffled"], folder / "bad", params, model_name="prices", version="v-bad")
    return {**paths, "good": folder / "good", "bad": folder / "bad"}


@pytest.fixture(scope="module")
def recommender(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("recommender")
    rows = interaction_rows()
    paths = {
        "train": dataset.write_parquet(rows.iloc[:1200], folder / "train.parquet"),
        "holdout": dataset.write_parquet(rows.iloc[1200:], folder / "holdout.parquet"),
    }
    params = train_core.TrainParams(epochs=8, learning_rate=1e-2, seed=0)
    train_core.train(paths["train"], folder / "good", params, model_name="shop", version="v-good")
    # A worse candidate: every interaction moved to a random item.
    scrambled = rows.iloc[:1200].assign(item=np.random.default_rng(2).permutation(rows["item"].iloc[:1200].to_numpy()))
    bad = dataset.write_parquet(scrambled, folder / "scrambled.parquet")
    train_core.train(bad, folder / "bad", params, model_name="shop", version="v-bad")
    return {**paths, "good": folder / "good", "bad": folder / "bad"}


# --- tabular regressor ------------------------------------------------------------------


@pytest.mark.slow
def test_regressor_trains_exports_a_value_and_ranks_its_features(regression: dict[str, Path]) -> None:
    record = json.loads((regression["good"] / "lineage.json").read_text())
    assert record["family"] == "tabular_regressor" and record["task"] == "regression" and record["classes"] == []
    importance = record["feature_importance"]
    assert min(importance["f0"], importance["f1"]) > 10 * max(importance["f2"], importance["f3"], 1e-9)

    holdout = pd.read_parquet(regression["holdout"])
    serving = tf.saved_model.load(str(regression["good"] / "saved_model" / "1")).signatures["serving_default"]
    values = serving(features=tf.constant(holdout[[f"f{i}" for i in range(4)]].to_numpy(np.float32)))["value"].numpy()
    np.testing.assert_allclose(values.reshape(-1), train_core.predict(train_core.load_model(regression["good"]), holdout), rtol=1e-4)

    alone = evaluate_core.evaluate(regression["good"], None, regression["holdout"], evaluate_core.Gates())
    assert alone.blessed and alone.primary_metric == "mse" and alone.reasons[0].startswith("no production model: r2")
    assert set(alone.candidate) == {"mse", "mae", "r2"} and alone.candidate["r2"] > 0.9
    reference = pd.read_parquet(regression["good"] / "reference_predictions.parquet")
    assert reference["confidence"].isna().all() and reference["predicted_label"].astype(float).notna().all()


@pytest.mark.slow
def test_regressor_on_shuffled_labels_is_not_blessed(regression: dict[str, Path]) -> None:
    gates = evaluate_core.Gates(max_latency_ratio=0)
    worse = evaluate_core.evaluate(regression["bad"], regression["good"], regression["holdout"], gates, regression["holdout"])
    assert not worse.blessed and worse.relative_improvement < 0  # MSE: lower is better
    failed = {g.name for g in worse.gate_results if g.enforced and not g.passed}
    assert {"improvement", "no_regression"} <= failed, worse.reasons  # significance may refuse it too
    better = evaluate_core.evaluate(regression["good"], regression["bad"], regression["holdout"], gates, regression["holdout"])
    assert better.blessed and better.relative_improvement > 0.5, better.reasons


def test_regressor_needs_numbers_in_the_label(tmp_path: Path) -> None:
    rows = regression_rows(50).assign(label="cheap")
    path = dataset.write_parquet(rows, tmp_path / "t.parquet")
    with pytest.raises(DataError, match="needs a number in 'label' on every row; found 'cheap'"):
        train_core.train(path, tmp_path / "m", train_core.TrainParams(family="tabular_regressor"), model_name="m")


# --- recommender ------------------------------------------------------------------------


@pytest.mark.slow
def test_recommender_learns_tastes_and_is_judged_on_precision_at_k(recommender: dict[str, Path]) -> None:
    record = json.loads((recommender["good"] / "lineage.json").read_text())
    assert record["family"] == "recommender" and sorted(record["inputs"]) == ["item", "user"]
    serving = tf.saved_model.load(str(recommender["good"] / "saved_model" / "1")).signatures["serving_default"]
    scores = serving(user=tf.constant(["u1", "nobody"]), item=tf.constant(["i1", "i2"]))["scores"].numpy()
    assert scores.shape == (2, 1) and ((scores >= 0) & (scores <= 1)).all()  # unknown users are served too

    gates = evaluate_core.Gates(top_k=5, max_latency_ratio=0)
    verdict = evaluate_core.evaluate(recommender["good"], recommender["bad"], recommender["holdout"], gates)
    assert verdict.task == "ranking" and verdict.primary_metric == "precision_at_5"
    assert {"precision_at_5", "recall_at_5"} <= set(verdict.candidate)
    # 8 liked items of 40: a model that learned the tastes ranks them far above chance (0.2).
    assert verdict.candidate["precision_at_5"] > 0.4 > verdict.production["precision_at_5"]
    assert verdict.blessed and verdict.improvement_ci[0] > 0, verdict.reasons

    worse = evaluate_core.evaluate(recommender["bad"], recommender["good"], recommender["holdout"], gates)
    assert not worse.blessed and "precision_at_5" in worse.reasons[0]


# --- user-defined family ----------------------------------------------------------------


@pytest.mark.slow
def test_a_user_defined_family_is_resolved_by_module_and_function(tmp_path: Path) -> None:
    from test_train_evaluate import tabular_rows

    rows = tabular_rows(n=400, n_classes=2)
    path = dataset.write_parquet(rows, tmp_path / "train.parquet")
    params = train_core.TrainParams(epochs=3, family="test_families:tiny_mlp", seed=0)
    result = train_core.train(path, tmp_path / "custom", params, model_name="m")
    assert result.lineage["family"] == "test_families:tiny_mlp"
    assert result.lineage["spec"]["base_family"] == "tabular_classifier"
    loaded = train_core.load_model(tmp_path / "custom")
    assert loaded.keras_model.name == "tiny" and train_core.predict_proba(loaded, rows).shape == (400, 2)


def test_unknown_families_fail_with_one_line() -> None:
    with pytest.raises(SettingsError, match="unknown family 'cnn': choose auto, image_classifier"):
        families.resolve("cnn")
    with pytest.raises(SettingsError, match="family nowhere:build: cannot import it"):
        families.resolve("nowhere:build")


def test_auto_infers_the_family_from_the_columns() -> None:
    assert families.infer(pd.DataFrame(columns=["id", "label", "pixels"])) == "image_classifier"
    assert families.infer(pd.DataFrame(columns=["id", "label", "user", "item"])) == "recommender"
    assert families.infer(pd.DataFrame(columns=["id", "label", "x"])) == "tabular_classifier"


def test_families_come_from_one_registry() -> None:
    assert families.BUILT_IN == ("image_classifier", "tabular_classifier", "tabular_regressor", "recommender")
    assert families.get("tabular_regressor") is families.TabularRegressor
    assert families.get("image") is families.ImageClassifier  # lineage written before families had names
    with pytest.raises(ValueError, match="registered twice"):
        families.register(families.Recommender)
    # Old lineage (numeric columns listed as `feature_columns`) still reads its rows.
    old_spec = {"classes": ["a", "b"], "feature_columns": ["x"]}
    inputs = families.resolve("tabular_classifier").inputs(pd.DataFrame({"x": [1.0, 2.0]}), old_spec)
    assert list(inputs) == ["features"] and inputs["features"].shape == (2, 1)


# --- strategies -------------------------------------------------------------------------


def test_auto_strategy_thresholds() -> None:
    parent = train_core.LoadedModel(keras_model=None, lineage={"version": "v1", "family": "tabular_classifier"})  # type: ignore[arg-type]
    params = train_core.TrainParams(auto_drift_share=0.5, auto_new_data_fraction=0.3)

    def choose(**kwargs) -> str:
        base = {"parent": parent, "incompatible": None, "drift_share": 0.1, "new_fraction": 0.1}
        return train_core.choose_strategy("auto", params, **{**base, **kwargs})[0]

    assert choose() == "fine_tune"
    assert choose(drift_share=0.5) == "scratch" and choose(new_fraction=0.3) == "scratch"
    assert choose(parent=None) == "scratch" and choose(incompatible="new classes") == "scratch"
    assert train_core.choose_strategy("scratch", params, parent=parent, incompatible=None, drift_share=None, new_fraction=None)[0] == "scratch"
    with pytest.raises(SettingsError, match="unknown strategy 'warm'"):
        train_core.choose_strategy("warm", params, parent=parent, incompatible=None, drift_share=None, new_fraction=None)


@pytest.mark.slow
def test_fine_tune_starts_from_the_production_weights(tmp_path: Path) -> None:
    from test_train_evaluate import tabular_rows

    rows = tabular_rows(n=600, n_classes=3)
    old = dataset.write_parquet(rows.iloc[:400], tmp_path / "old.parquet")
    new = dataset.write_parquet(rows, tmp_path / "new.parquet")
    base = train_core.TrainParams(epochs=6, learning_rate=3e-3, seed=0)
    train_core.train(old, tmp_path / "v1", base, model_name="m", version="v1")
    params = train_core.TrainParams(epochs=1, learning_rate=3e-3, seed=0, strategy="fine_tune")
    tuned = train_core.train(new, tmp_path / "v2", params, model_name="m", parent_dir=tmp_path / "v1")
    assert tuned.lineage["strategy"] == "fine_tune" and tuned.lineage["parent_version"] == "v1"
    assert tuned.lineage["learning_rate"] == pytest.approx(3e-4)
    scratch = train_core.train(new, tmp_path / "v3", params.__class__(epochs=1, learning_rate=3e-3, seed=0, strategy="scratch"), model_name="m")
    # One epoch on top of production keeps production's skill; one epoch from nothing does not reach it.
    assert tuned.history["val_accuracy"] > scratch.history["val_accuracy"] + 0.1

    # auto: two thirds of the rows are newer than v1's training data, so it trains from scratch.
    auto_params = train_core.TrainParams(epochs=1, seed=0, auto_new_data_fraction=0.3)
    auto = train_core.train(new, tmp_path / "v4", auto_params, model_name="m", parent_dir=tmp_path / "v1")
    assert auto.lineage["strategy"] == "scratch" and "33% of the rows are new" in auto.lineage["strategy_reason"]


@pytest.mark.slow
def test_weighted_window_and_mixed_precision_still_train(tmp_path: Path) -> None:
    from test_train_evaluate import tabular_rows

    path = dataset.write_parquet(tabular_rows(n=300, n_classes=2), tmp_path / "t.parquet")
    params = train_core.TrainParams(epochs=2, seed=0, half_life_days=0.05, mixed_precision=True, xla=True)
    result = train_core.train(path, tmp_path / "m", params, model_name="m")
    assert result.lineage["precision_policy"] == "mixed_bfloat16" and result.lineage["params"]["xla"] is True
    assert keras.mixed_precision.global_policy().name == "float32"  # the global policy is restored
    probabilities = train_core.predict_proba(train_core.load_model(tmp_path / "m"), pd.read_parquet(path))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-2)


# --- gates ------------------------------------------------------------------------------


def test_paired_bootstrap_brackets_the_true_difference() -> None:
    rng = np.random.default_rng(0)
    production = (rng.random(2000) < 0.70).astype(float)
    candidate = np.where(rng.random(2000) < 0.2, 1.0, production)  # wins some rows, never loses one
    low, high = evaluate_core.paired_bootstrap(candidate, production, 1000, 0.95)
    assert 0 < low < (candidate - production).mean() < high
    assert evaluate_core.paired_bootstrap(production, production, 200, 0.95) == (0.0, 0.0)


@pytest.mark.slow
def test_latency_and_significance_gates_can_refuse(regression: dict[str, Path]) -> None:
    # No model is 100 times faster than an equal one; the margin lets any difference in ms count.
    slow = evaluate_core.Gates(max_latency_ratio=0.01, latency_margin_ms=-1000.0)
    verdict = evaluate_core.evaluate(regression["good"], regression["bad"], regression["holdout"], slow)
    latency = next(g for g in verdict.gate_results if g.name == "latency")
    assert not latency.passed and not verdict.blessed and "> 0.01x allowed" in latency.detail
    # The same model against itself: no improvement, and the bootstrap interval holds 0.
    same = evaluate_core.Gates(min_improvement=0.0, max_latency_ratio=0, require_significant=True)
    verdict = evaluate_core.evaluate(regression["good"], regression["good"], regression["holdout"], same)
    significance = next(g for g in verdict.gate_results if g.name == "significance")
    assert significance.enforced and not significance.passed and not verdict.blessed
    assert "| significance | FAIL |" in verdict.to_markdown()
