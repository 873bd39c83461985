"""Training and evaluation on real data: animal-mnist cats and dogs, and a generated tabular set."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import pickle
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banner out of the test log

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import keras
import tensorflow as tf
from kfp import dsl
from sklearn.datasets import make_classification

from feedback_loop import dataset, lineage
from feedback_loop.errors import DataError, ModelNotFound
from feedback_loop.evaluate import core as evaluate_core
from feedback_loop.evaluate.component import evaluate_model
from feedback_loop.train import core as train_core
from feedback_loop.train.component import train_model

CLASS_NAMES = {2: "cat", 4: "dog"}
START = pd.Timestamp("2024-01-01", tz="UTC")


def animal_rows(seed: int = 0) -> pd.DataFrame:
    """All animal-mnist cats and dogs in the dataset contract, shuffled, one hour apart."""
    folder = Path(importlib.util.find_spec("animal_mnist").submodule_search_locations[0]) / "data" / "Animal_MNIST"
    with gzip.open(folder / "animal_data_version_3.gz") as handle:
        images = pickle.load(handle)
    with gzip.open(folder / "animal_label_version_3.gz") as handle:
        labels = pickle.load(handle)
    keep = np.flatnonzero(np.isin(labels, list(CLASS_NAMES)))
    keep = np.random.default_rng(seed).permutation(keep)
    return pd.DataFrame(
        {
            "id": [f"animal-{i}" for i in keep],
            "created_at": START + pd.to_timedelta(np.arange(len(keep)), unit="h"),
            "label": [CLASS_NAMES[int(labels[i])] for i in keep],
            "pixels": [images[i].astype(np.uint8).tobytes() for i in keep],
        }
    )


def tabular_rows(n: int = 600, n_classes: int = 3, seed: int = 0) -> pd.DataFrame:
    x, y = make_classification(
        n_samples=n, n_features=6, n_informative=4, n_redundant=0, n_classes=n_classes, class_sep=1.5, random_state=seed
    )
    frame = pd.DataFrame(
        x * 50 + 100, columns=[f"f{i}" for i in range(x.shape[1])]
    )  # off-scale: Normalization must matter
    frame.insert(0, "id", [f"row-{i}" for i in range(n)])
    frame.insert(1, "created_at", START + pd.to_timedelta(np.arange(n), unit="min"))
    frame.insert(2, "label", [f"class-{chr(ord('a') + int(k))}" for k in y])
    return frame


@pytest.fixture(scope="module")
def animals() -> pd.DataFrame:
    return animal_rows()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def train_path(animals: pd.DataFrame, data_dir: Path) -> Path:
    return dataset.write_parquet(animals.iloc[:600], data_dir / "train.parquet")


@pytest.fixture(scope="module")
def holdout_path(animals: pd.DataFrame, data_dir: Path) -> Path:
    return dataset.write_parquet(animals.iloc[600:900], data_dir / "holdout.parquet")


@pytest.fixture(scope="module")
def good_model(train_path: Path, tmp_path_factory: pytest.TempPathFactory) -> train_core.TrainResult:
    out = tmp_path_factory.mktemp("models") / "good"
    params = train_core.TrainParams(epochs=3, seed=0)
    return train_core.train(train_path, out, params, model_name="cats-vs-dogs", version="v-good")


@pytest.fixture(scope="module")
def weak_model(
    animals: pd.DataFrame, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> train_core.TrainResult:
    path = dataset.write_parquet(animals.iloc[:60], data_dir / "tiny.parquet")
    out = tmp_path_factory.mktemp("models") / "weak"
    return train_core.train(
        path, out, train_core.TrainParams(epochs=1, seed=1), model_name="cats-vs-dogs", version="v-weak"
    )


@pytest.fixture(scope="module")
def shuffled_model(
    animals: pd.DataFrame, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> train_core.TrainResult:
    rows = animals.iloc[:600].copy()
    rows["label"] = np.random.default_rng(7).permutation(rows["label"].to_numpy())
    path = dataset.write_parquet(rows, data_dir / "shuffled.parquet")
    out = tmp_path_factory.mktemp("models") / "shuffled"
    params = train_core.TrainParams(epochs=2, seed=0)
    return train_core.train(path, out, params, model_name="cats-vs-dogs", version="v-shuffled")


# --- training ---------------------------------------------------------------------------


@pytest.mark.slow
def test_image_model_exports_a_servable_saved_model(good_model: train_core.TrainResult, holdout_path: Path) -> None:
    out = good_model.out_dir
    for name in (
        "model.keras",
        "saved_model/1/saved_model.pb",
        "lineage.json",
        "training_data.parquet",
        "reference_predictions.parquet",
    ):
        assert (out / name).is_file(), name

    holdout = pd.read_parquet(holdout_path)
    pixels = train_core.image_array(holdout)
    serving = tf.saved_model.load(str(out / "saved_model" / "1")).signatures["serving_default"]
    probabilities = serving(pixels=tf.constant(pixels[:32]))["probabilities"].numpy()
    assert probabilities.shape == (32, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    loaded = train_core.load_model(out)
    keras_probabilities = train_core.predict_proba(loaded, holdout)
    np.testing.assert_allclose(keras_probabilities[:32], probabilities, atol=1e-5)  # same model both ways
    accuracy = float((keras_probabilities.argmax(axis=1) == (holdout["label"] == "dog").to_numpy()).mean())
    assert accuracy > 0.75, accuracy
    assert 1 <= good_model.epochs_run <= 3 and {"loss", "accuracy", "val_accuracy"} <= good_model.history.keys()


@pytest.mark.slow
def test_lineage_records_data_code_and_classes(good_model: train_core.TrainResult, train_path: Path) -> None:
    record = json.loads((good_model.out_dir / "lineage.json").read_text())
    rows = pd.read_parquet(train_path)
    assert record["model_name"] == "cats-vs-dogs" and record["version"] == good_model.version == "v-good"
    assert record["family"] == "image_classifier" and record["input_name"] == "pixels"
    assert record["task"] == "classification" and record["output_name"] == "probabilities"
    assert record["classes"] == ["cat", "dog"] and record["feature_columns"] == []
    assert record["strategy"] == "scratch" and "no production model" in record["strategy_reason"]
    assert record["dependencies"]["keras"] == keras.__version__ and record["dependencies"]["numpy"] == np.__version__
    assert "image" in record and record["feature_importance"] is None  # images have no feature columns
    assert record["rows"] == 600
    assert pd.Timestamp(record["trained_through"]) == rows["created_at"].max()
    assert (
        record["data_hash"]
        == lineage.data_hash(train_path)
        == lineage.data_hash(good_model.out_dir / "training_data.parquet")
    )
    assert record["params"]["epochs"] == 3 and record["tf_version"] == tf.__version__
    assert record["package_version"] and record["devices"] and record["parent_version"] is None


@pytest.mark.slow
def test_reference_predictions_are_the_models_answers_on_its_validation_rows(
    good_model: train_core.TrainResult, train_path: Path
) -> None:
    reference = pd.read_parquet(good_model.out_dir / "reference_predictions.parquet")
    assert list(reference.columns) == ["id", "label", "predicted_label", "confidence"]
    rows = pd.read_parquet(train_path).sort_values("created_at")
    validation = rows.iloc[-len(reference) :]
    assert len(reference) == round(600 * 0.15) and list(reference["id"]) == list(validation["id"])
    assert list(reference["label"]) == list(validation["label"])
    probabilities = train_core.predict_proba(train_core.load_model(good_model.out_dir), validation)
    assert list(reference["predicted_label"]) == list(np.array(["cat", "dog"])[probabilities.argmax(axis=1)])
    np.testing.assert_allclose(reference["confidence"], probabilities.max(axis=1), atol=1e-5)


def test_data_hash_depends_on_rows_not_on_the_file(animals: pd.DataFrame, tmp_path: Path) -> None:
    rows = animals.iloc[:50]
    first = dataset.write_parquet(rows, tmp_path / "a.parquet")
    # Same rows: another file, reversed row order, other column order, small row groups.
    second = tmp_path / "b.parquet"
    pq.write_table(
        pa.Table.from_pandas(rows.iloc[::-1][["label", "pixels", "id", "created_at"]]), second, row_group_size=7
    )
    assert lineage.data_hash(first) == lineage.data_hash(second)

    changed = rows.copy()
    changed.loc[changed.index[3], "label"] = "dog" if changed["label"].iloc[3] == "cat" else "cat"
    assert lineage.data_hash(dataset.write_parquet(changed, tmp_path / "c.parquet")) != lineage.data_hash(first)


def test_git_sha_comes_from_the_environment_else_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    monkeypatch.delenv(lineage.GIT_SHA_ENV, raising=False)
    # This test runs from a git checkout: the revision is its HEAD (an installed wheel has none: None).
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(lineage.__file__).parent, capture_output=True, text=True).stdout.strip()
    assert lineage.git_sha() == (head or None)
    monkeypatch.setenv(lineage.GIT_SHA_ENV, "abc1234")
    assert lineage.code_lineage()["git_sha"] == "abc1234"


# --- evaluation -------------------------------------------------------------------------


@pytest.mark.slow
def test_worse_candidate_is_not_blessed(
    shuffled_model: train_core.TrainResult, good_model: train_core.TrainResult, holdout_path: Path
) -> None:
    verdict = evaluate_core.evaluate(shuffled_model.out_dir, good_model.out_dir, holdout_path, evaluate_core.Gates())
    assert not verdict.blessed
    assert verdict.relative_improvement is not None and verdict.relative_improvement < 0.02
    assert verdict.candidate["accuracy"] < verdict.production["accuracy"]
    assert "vs production" in verdict.reasons[0] and "< 2 % required" in verdict.reasons[0]
    assert verdict.candidate_version == "v-shuffled" and verdict.production_version == "v-good"
    assert "Not blessed" in verdict.to_markdown()
    json.dumps(verdict.to_dict(), allow_nan=False)


@pytest.mark.slow
def test_better_candidate_is_blessed(
    good_model: train_core.TrainResult, weak_model: train_core.TrainResult, holdout_path: Path
) -> None:
    verdict = evaluate_core.evaluate(good_model.out_dir, weak_model.out_dir, holdout_path, evaluate_core.Gates())
    assert verdict.blessed, verdict.reasons
    assert "≥ 2 % required" in verdict.reasons[0]
    assert set(verdict.candidate) == {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"}
    assert [g.name for g in verdict.gate_results] == ["improvement", "significance", "no_regression", "latency"]
    assert verdict.latency_ms["candidate_ms"] > 0 and verdict.improvement_ci[0] < verdict.improvement_ci[1]
    assert verdict.classes == ["cat", "dog"] and verdict.holdout_rows == 300
    assert sum(map(sum, verdict.confusion_matrix)) == 300
    assert verdict.candidate["roc_auc"] > 0.8
    markdown = verdict.to_markdown()
    assert markdown.startswith("## Blessed") and "| accuracy |" in markdown and "**cat**" in markdown


@pytest.mark.slow
def test_without_production_the_floor_decides(good_model: train_core.TrainResult, holdout_path: Path) -> None:
    passed = evaluate_core.evaluate(good_model.out_dir, None, holdout_path, evaluate_core.Gates())
    assert passed.blessed and passed.production is None and passed.relative_improvement is None
    assert passed.reasons[0].startswith("no production model")
    failed = evaluate_core.evaluate(
        good_model.out_dir, None, holdout_path, evaluate_core.Gates(min_accuracy_without_production=0.999)
    )
    assert not failed.blessed and "< 0.999 required" in failed.reasons[0]


@pytest.mark.slow
def test_tabular_family_trains_and_is_scored_across_class_lists(tmp_path: Path) -> None:
    rows = tabular_rows(n=800, n_classes=3)
    train_path = dataset.write_parquet(rows.iloc[:600], tmp_path / "train.parquet")
    holdout_path = dataset.write_parquet(rows.iloc[600:], tmp_path / "holdout.parquet")
    params = train_core.TrainParams(epochs=12, seed=0, learning_rate=3e-3, batch_size=32)
    candidate = train_core.train(train_path, tmp_path / "candidate", params, model_name="tabular", version="v-tab")
    record = candidate.lineage
    assert record["family"] == "tabular_classifier" and record["input_name"] == "features"
    assert record["feature_columns"] == [f"f{i}" for i in range(6)]
    assert set(record["feature_importance"]) == set(record["feature_columns"])

    serving = tf.saved_model.load(str(tmp_path / "candidate" / "saved_model" / "1")).signatures["serving_default"]
    out = serving(features=tf.constant(rows.iloc[600:610][record["feature_columns"]].to_numpy(np.float32)))
    assert out["probabilities"].shape == (10, 3)

    alone = evaluate_core.evaluate(tmp_path / "candidate", None, holdout_path, evaluate_core.Gates())
    assert alone.blessed and alone.candidate["accuracy"] > 0.7, alone.reasons

    # A production model that knows two classes only is scored on its own classes, mapped by name.
    two = dataset.write_parquet(rows.iloc[:600][rows["label"].iloc[:600] != "class-c"], tmp_path / "two.parquet")
    train_core.train(two, tmp_path / "production", train_core.TrainParams(epochs=2, seed=0), model_name="tabular")
    two_holdout = dataset.write_parquet(rows.iloc[600:][rows["label"].iloc[600:] != "class-c"], tmp_path / "h2.parquet")
    verdict = evaluate_core.evaluate(
        tmp_path / "candidate", tmp_path / "production", two_holdout, evaluate_core.Gates()
    )
    assert verdict.production_classes == ["class-a", "class-b"] and len(verdict.classes) == 3
    assert any("classes differ" in reason for reason in verdict.reasons)
    # ...but a holdout label the production model never saw cannot be scored.
    with pytest.raises(DataError, match="unknown to the model: 'class-c'"):
        evaluate_core.evaluate(tmp_path / "candidate", tmp_path / "production", holdout_path, evaluate_core.Gates())


# --- bad input --------------------------------------------------------------------------


def test_bad_training_data_fails_with_one_clear_line(animals: pd.DataFrame, tmp_path: Path) -> None:
    cats = animals[animals["label"] == "cat"].iloc[:20]
    bad_pixels = animals.iloc[:20].assign(pixels=[b"\x00" * 10] * 20)
    cases = {
        "no_label": (animals.iloc[:20].drop(columns="label"), "has no 'label' column"),
        "one_class": (cats, "one class only \\('cat' in 20 rows\\)"),
        "empty": (animals.iloc[:0], "has no rows"),
        "bad_pixels": (bad_pixels, "784 bytes per row"),
    }
    for name, (rows, message) in cases.items():
        path = dataset.write_parquet(rows, tmp_path / f"{name}.parquet")
        with pytest.raises(DataError, match=message) as raised:
            train_core.train(path, tmp_path / name, train_core.TrainParams(epochs=1), model_name="m")
        assert "\n" not in str(raised.value)
        assert not (tmp_path / name).exists()  # nothing half-written


def test_missing_model_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="holds no exported model"):
        train_core.load_model(tmp_path)


# --- KFP wrappers -----------------------------------------------------------------------


def test_component_interfaces() -> None:
    train_spec, eval_spec = train_model.component_spec, evaluate_model.component_spec
    assert {name: spec.type for name, spec in train_spec.outputs.items()} == {
        "model": "system.Model@0.0.1",
        "metrics": "system.Metrics@0.0.1",
        "Output": "String",
    }
    assert set(train_spec.inputs) == {
        "train",
        "test",
        "drift_metrics",
        "model_name",
        "epochs",
        "learning_rate",
        "batch_size",
        "seed",
        "parent_version",
        "production_model_uri",
        "family",
        "strategy",
        "auto_drift_share",
        "auto_new_data_fraction",
        "window",
        "half_life_days",
        "mixed_precision",
        "xla",
        "log_level",
        # workers > 1: the TrainJob launcher's inputs
        "workers",
        "model_store_uri",
        "namespace",
        "node_selector",
        "tolerations",
        "run_name",
        "accelerator_type",
        "accelerator_count",
    }
    assert {"candidate", "holdout", "test", "max_test_regression", "max_latency_ratio", "require_significant"} <= set(
        eval_spec.inputs
    )
    assert {name: spec.type for name, spec in eval_spec.outputs.items()} == {
        "metrics": "system.Metrics@0.0.1",
        "confusion": "system.ClassificationMetrics@0.0.1",
        "verdict": "system.Markdown@0.0.1",
        "guard": "system.Dataset@0.0.1",
        "Output": "Boolean",
    }
    assert all(spec.description for spec in [*train_spec.outputs.values(), *eval_spec.outputs.values()])
    assert train_spec.implementation.container.image.endswith(":0.1.0")


@pytest.mark.slow
def test_wrappers_run_on_real_artifacts(
    animals: pd.DataFrame,
    tmp_path: Path,
    good_model: train_core.TrainResult,
    weak_model: train_core.TrainResult,
    holdout_path: Path,
) -> None:
    train_data = dsl.Dataset(uri=str(dataset.write_parquet(animals.iloc[:200], tmp_path / "train.parquet")))
    model = dsl.Model(uri=str(tmp_path / "model"))  # a plain local path: `.path` is the uri itself
    train_metrics = dsl.Metrics(uri=str(tmp_path / "train_metrics"))
    drift_metrics = dsl.Metrics(uri=str(tmp_path / "drift_metrics"), metadata={"share_drifted": 0.8})
    version = train_model.python_func(
        train=train_data,
        test=dsl.Dataset(uri=str(holdout_path)),
        drift_metrics=drift_metrics,
        model=model,
        metrics=train_metrics,
        model_name="cats-vs-dogs",
        epochs=1,
        parent_version="v-good",
        production_model_uri="file://" + str(good_model.out_dir),
    )
    assert version.startswith("v") and model.metadata["version"] == version
    assert model.metadata["classes"] == ["cat", "dog"] and model.metadata["family"] == "image_classifier"
    assert model.metadata["data_hash"] == lineage.data_hash(train_data.path)
    assert (tmp_path / "model" / "saved_model" / "1" / "saved_model.pb").is_file()
    record = json.loads((tmp_path / "model" / "lineage.json").read_text())
    assert record["parent_version"] == "v-good"
    # auto: 80 % of the features drifted, so the production model is not warm-started.
    assert record["strategy"] == "scratch" and "drift is broad (80% of features" in record["strategy_reason"]
    assert lineage.data_hash(tmp_path / "model" / "test_data.parquet") == lineage.data_hash(holdout_path)
    assert train_metrics.metadata["epochs_run"] == 1 and "loss" in train_metrics.metadata

    def run_evaluation(production_uri: str) -> tuple:
        artifacts = {
            "metrics": dsl.Metrics(uri=str(tmp_path / "eval_metrics")),
            "confusion": dsl.ClassificationMetrics(uri=str(tmp_path / "confusion")),
            "verdict": dsl.Markdown(uri=str(tmp_path / "verdict" / "verdict.md")),
            "guard": dsl.Dataset(uri=str(tmp_path / "guard")),
        }
        result = evaluate_model.python_func(
            candidate=dsl.Model(uri=str(good_model.out_dir)),
            holdout=dsl.Dataset(uri=str(holdout_path)),
            test=dsl.Dataset(uri=str(holdout_path)),
            production_model_uri=production_uri,
            **artifacts,
        )
        return result, artifacts

    blessed, artifacts = run_evaluation("file://" + str(weak_model.out_dir))
    logged = artifacts["metrics"].metadata
    assert blessed is True and logged["candidate.accuracy"] > logged["production.accuracy"] > 0
    assert logged["blessed"] == 1.0 and "relative_improvement" in logged
    assert logged["test.candidate.accuracy"] == logged["candidate.accuracy"]  # the same rows here
    assert logged["relative_improvement.ci_low"] < logged["relative_improvement.ci_high"]
    assert "latency.production_ms" in logged
    assert artifacts["confusion"].metadata["confusionMatrix"]["annotationSpecs"] == [
        {"displayName": "cat"},
        {"displayName": "dog"},
    ]
    assert Path(artifacts["verdict"].path).read_text().startswith("## Blessed")
    json.dumps(artifacts["verdict"].metadata["verdict"], allow_nan=False)

    blessed, artifacts = run_evaluation("")
    assert blessed is True and "production.accuracy" not in artifacts["metrics"].metadata
    assert "no production model" in Path(artifacts["verdict"].path).read_text()
