"""One label type (text) at every boundary, text categories inside tabular models, and the
validated metric each version records in its lineage."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from feedback_loop import dataset
from feedback_loop.errors import DataError
from feedback_loop.prepare import core as prepare_core
from feedback_loop.train import core as train_core

START = pd.Timestamp("2024-01-01", tz="UTC")
CITIES = ["lyon", "paris", "nice", "lille"]


def city_rows(n: int, seed: int = 0, start: pd.Timestamp = START, cities: list[str] = CITIES) -> pd.DataFrame:
    """The class is mostly the city's: a model that drops the text column cannot learn it."""
    rng = np.random.default_rng(seed)
    city = rng.choice(cities, n)
    label = np.where(np.isin(city, ["lyon", "nice"]), "south", "north")
    flip = rng.random(n) < 0.05
    label = np.where(flip, np.where(label == "south", "north", "south"), label)
    return pd.DataFrame(
        {
            "id": [f"{start:%Y%m%d}-{seed}-{i}" for i in range(n)],
            "created_at": start + pd.to_timedelta(np.arange(n), unit="min"),
            "label": label,
            "f0": rng.normal(50, 10, n),  # noise
            "city": city,
        }
    )


def int_rows(n: int, seed: int = 0, start: pd.Timestamp = START) -> pd.DataFrame:
    """Three integer classes separated by f0 and f1."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n)
    return pd.DataFrame(
        {
            "id": [f"{start:%Y%m%d}-{seed}-{i}" for i in range(n)],
            "created_at": start + pd.to_timedelta(np.arange(n), unit="min"),
            "label": label.astype(np.int64),
            "f0": label * 3.0 + rng.normal(0, 0.5, n),
            "f1": -label * 2.0 + rng.normal(0, 0.5, n),
        }
    )


def feedback_of(rows: pd.DataFrame) -> pd.DataFrame:
    """The feedback extract of those rows: text corrections, every fifth prediction unanswered."""
    answered = np.arange(len(rows)) % 5 != 4
    label = rows["label"].astype(str).where(answered, None)
    return rows.assign(
        label=label,
        predicted_label="0",
        is_correct=np.where(answered, label == "0", None),
        confidence=0.7,
    )


# --- the label rule ----------------------------------------------------------------------


def test_labels_become_text_by_one_rule() -> None:
    frame = pd.DataFrame({"id": list("abcdefg"), "label": [3, 3.0, 2.5, b"cat", " dog ", True, 0.1]})
    assert list(dataset.label_text(frame, "x")) == ["3", "3", "2.5", "cat", "dog", "True", "0.1"]
    # Feedback without a correction stays unlabelled rather than failing.
    feedback = pd.DataFrame({"id": list("abc"), "label": ["cat", None, " "]})
    assert list(dataset.label_text(feedback, "feedback", missing_ok=True)) == ["cat", None, None]


def test_unusable_labels_are_one_line_naming_the_column_and_rows(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(6)], "label": ["cat", None, "", float("nan"), ["x"], "dog"]})
    with pytest.raises(DataError) as raised:
        dataset.label_text(frame, "training data t.parquet")
    message = str(raised.value)
    assert "\n" not in message and "column 'label' has 4 of 6 rows without a usable label" in message
    assert "'r1' (null), 'r2' (empty), 'r3' (NaN)" in message and "r4" not in message  # a few rows, not all
    # A list is no label even in feedback.
    with pytest.raises(DataError, match=r"1 of 6 rows .*'r4' \(list\)"):
        dataset.label_text(frame, "feedback", missing_ok=True)

    # Through the stages: a classifier's training data with NaN labels, a reference with nulls.
    rows = int_rows(60).astype({"label": np.float64})
    rows.loc[[3, 7], "label"] = np.nan
    path = dataset.write_parquet(rows, tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"training data t.parquet: column 'label' has 2 of 60 rows .*'20240101-0-3' \(NaN\)"):
        train_core.train(path, tmp_path / "m", train_core.TrainParams(epochs=1), model_name="m")
    assert not (tmp_path / "m").exists()
    feedback = dataset.write_parquet(feedback_of(int_rows(60, start=START + pd.Timedelta(days=2))), tmp_path / "f.parquet")
    with pytest.raises(DataError, match=r"production model's training data \(t.parquet\): column 'label' has 2 of 60"):
        prepare_core.prepare(path, feedback, tmp_path / "tr.parquet", tmp_path / "h.parquet", 0.3)


@pytest.mark.slow
def test_integer_labels_survive_the_first_retrain(tmp_path: Path) -> None:
    """A first model trained on int labels; the retrain mixes them with text feedback."""
    first = dataset.write_parquet(int_rows(300), tmp_path / "first.parquet")
    assert pd.read_parquet(first)["label"].dtype == np.int64
    params = train_core.TrainParams(epochs=4, learning_rate=1e-2, seed=0)
    v1 = train_core.train(first, tmp_path / "v1", params, model_name="m", version="v1")
    assert v1.lineage["classes"] == ["0", "1", "2"]
    stored = pd.read_parquet(tmp_path / "v1" / "training_data.parquet")
    assert stored["label"].dtype == np.int64  # the published training data keeps its ints

    feedback = dataset.write_parquet(feedback_of(int_rows(200, seed=1, start=START + pd.Timedelta(days=2))), tmp_path / "f.parquet")
    split = prepare_core.prepare(
        tmp_path / "v1" / "training_data.parquet", feedback, tmp_path / "train.parquet", tmp_path / "holdout.parquet",
        0.3, test_out=tmp_path / "test.parquet",
    )
    assert split.reference_rows == 300 and split.feedback_rows == 160
    for name in ("train", "holdout", "test"):
        labels = pd.read_parquet(tmp_path / f"{name}.parquet")["label"]
        assert set(labels) == {"0", "1", "2"}, name

    tuned = train_core.train(
        tmp_path / "train.parquet", tmp_path / "v2", train_core.TrainParams(epochs=2, seed=0, strategy="fine_tune"),
        model_name="m", parent_dir=tmp_path / "v1", test_path=tmp_path / "test.parquet",
    )
    assert tuned.lineage["strategy"] == "fine_tune" and tuned.lineage["classes"] == ["0", "1", "2"]
    reference = pd.read_parquet(tmp_path / "v2" / "reference_predictions.parquet")
    assert set(reference["label"]) <= {"0", "1", "2"} and set(reference["predicted_label"]) <= {"0", "1", "2"}


# --- categorical features ----------------------------------------------------------------


@pytest.fixture(scope="module")
def city_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cities")
    path = dataset.write_parquet(city_rows(500), folder / "train.parquet")
    params = train_core.TrainParams(epochs=8, learning_rate=1e-2, seed=0, batch_size=32)
    train_core.train(path, folder / "v1", params, model_name="weather", version="v1")
    return folder / "v1"


@pytest.mark.slow
def test_text_features_are_encoded_inside_the_model(city_model: Path) -> None:
    record = json.loads((city_model / "lineage.json").read_text())
    spec = record["spec"]
    assert spec["categorical_columns"] == ["city"] and spec["vocab_sizes"] == {"city": 4}
    assert spec["numeric_columns"] == ["f0"] and record["inputs"] == ["categories", "features"]
    assert record["input_name"] == "features"
    # Training and drift see the same features: every feature column of the data.
    assert record["feature_columns"] == dataset.feature_columns(list(city_rows(5).columns)) == ["f0", "city"]
    assert record["feature_importance"]["city"] > record["feature_importance"]["f0"]

    rows = city_rows(200, seed=3, start=START + pd.Timedelta(days=5))
    loaded = train_core.load_model(city_model)
    keras_probabilities = train_core.predict_proba(loaded, rows)
    accuracy = (np.array(loaded.classes)[keras_probabilities.argmax(axis=1)] == rows["label"]).mean()
    assert accuracy > 0.85, accuracy

    # The SavedModel takes the raw text; an unseen city goes to the out-of-vocabulary bucket.
    serving = tf.saved_model.load(str(city_model / "saved_model" / "1")).signatures["serving_default"]
    out = serving(
        features=tf.constant(rows[["f0"]].to_numpy(np.float32)), categories=tf.constant(rows[["city"]].to_numpy(str))
    )["probabilities"].numpy()
    np.testing.assert_allclose(out, keras_probabilities, atol=1e-5)
    unseen = serving(features=tf.constant([[50.0]]), categories=tf.constant([["atlantis"]]))["probabilities"].numpy()
    assert unseen.shape == (1, 2) and np.isfinite(unseen).all() and unseen.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_predictor_passes_raw_categories_through(city_model: Path) -> None:
    from feedback_loop.serving.model import SavedModelPredictor, SignatureRunner

    rows = city_rows(20, seed=4, start=START + pd.Timedelta(days=5))
    expected = train_core.predict_proba(train_core.load_model(city_model), rows)
    runner = SignatureRunner(city_model)
    assert runner.takes_rows and runner.columns == {"features": ["f0"], "categories": ["city"]}

    predictor = SavedModelPredictor("weather", city_model)
    assert predictor.load()
    by_column = [{"f0": float(r.f0), "city": r.city} for r in rows.itertuples()]
    answer = predictor.predict({"instances": by_column})
    got = np.array([[p["probabilities"][c] for c in runner.classes] for p in answer["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    by_input = [{"features": [float(r.f0)], "categories": [r.city]} for r in rows.itertuples()]
    by_name = predictor.predict({"instances": by_input})

    def without_ids(a: dict) -> list[dict]:  # every answer carries its own prediction_id
        assert all(p["prediction_id"] for p in a["predictions"])
        return [{k: v for k, v in p.items() if k != "prediction_id"} for p in a["predictions"]]

    assert without_ids(by_name) == without_ids(answer)
    unseen = predictor.predict({"instances": [{"f0": 50.0, "city": "atlantis"}, {"f0": 50.0, "city": None}]})
    assert [p["label"] in runner.classes for p in unseen["predictions"]] == [True, True]
    with pytest.raises(Exception, match="instances lack the columns city"):
        predictor.predict({"instances": [{"f0": 1.0}]})


@pytest.mark.slow
def test_fine_tuning_keeps_the_vocabulary(city_model: Path, tmp_path: Path) -> None:
    old = pd.read_parquet(city_model / "training_data.parquet")
    new = city_rows(200, seed=5, start=START + pd.Timedelta(days=3), cities=[*CITIES, "brest"])
    path = dataset.write_parquet(pd.concat([old, new], ignore_index=True), tmp_path / "train.parquet")
    params = train_core.TrainParams(epochs=2, seed=0, strategy="fine_tune")
    tuned = train_core.train(path, tmp_path / "v2", params, model_name="weather", parent_dir=city_model)
    parent = json.loads((city_model / "lineage.json").read_text())
    assert tuned.lineage["strategy"] == "fine_tune"
    assert tuned.lineage["spec"]["vocabularies"] == parent["spec"]["vocabularies"]  # brest is not in it
    probabilities = train_core.predict_proba(train_core.load_model(tmp_path / "v2"), new[new["city"] == "brest"])
    assert np.isfinite(probabilities).all()


# --- the validated metric ----------------------------------------------------------------


@pytest.mark.slow
def test_lineage_records_the_error_on_the_reference_rows(city_model: Path, tmp_path: Path) -> None:
    record = json.loads((city_model / "lineage.json").read_text())
    reference = pd.read_parquet(city_model / "reference_predictions.parquet")
    validation = record["validation"]
    assert validation["metric"] == "error_rate" and validation["rows"] == len(reference) == 75
    assert validation["held_out"] is True
    assert validation["value"] == pytest.approx((reference["predicted_label"] != reference["label"]).mean())

    # A regressor: the mean squared error on the same rows, in the label's unit.
    rng = np.random.default_rng(0)
    rows = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(200)],
            "created_at": START + pd.to_timedelta(np.arange(200), unit="h"),
            "x": rng.normal(0, 1, 200),
            "city": rng.choice(CITIES, 200),
        }
    )
    rows["label"] = rows["x"] * 10.0 + 100.0  # a float label column: stored as numbers, read as text
    path = dataset.write_parquet(rows, tmp_path / "r.parquet")
    result = train_core.train(path, tmp_path / "reg", train_core.TrainParams(epochs=2, seed=0, family="tabular_regressor"), model_name="r")
    validation = result.lineage["validation"]
    reference = pd.read_parquet(tmp_path / "reg" / "reference_predictions.parquet")
    held = rows[rows["id"].isin(reference["id"])]
    values = train_core.predict(train_core.load_model(tmp_path / "reg"), held)
    assert validation["metric"] == "mse" and validation["rows"] == len(reference) == 30
    assert validation["value"] == pytest.approx(float(np.mean((values - held["label"].to_numpy()) ** 2)), rel=1e-4)
