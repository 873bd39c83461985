"""Our predictor serves every family the loop trains (image and tabular classifiers, regressors,
recommenders): versions trained and exported by train_model's own code (one epoch: the answers'
form, not their quality, is under test), answered in process, each row captured into a real
PostgreSQL with the summary features the drift stage reads."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
import pytest

from test_families import interaction_rows, regression_rows
from test_train_evaluate import animal_rows, tabular_rows

from feedback_loop import dataset
from feedback_loop.serving.capture import PREDICTIONS, Capture, CaptureConfig
from feedback_loop.serving.model import SavedModelPredictor
from feedback_loop.train import core as train_core

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    cities = np.random.default_rng(0).choice(["Lyon", "Oslo", "Rome"], 240)
    frames = {
        "tabular": tabular_rows(240).assign(city=cities),
        "image": animal_rows().iloc[:200],
        "regressor": regression_rows(200),
        "recommender": interaction_rows(300),
    }
    out = {}
    for name, frame in frames.items():
        data = dataset.write_parquet(frame, root / f"{name}.parquet")
        family = "tabular_regressor" if name == "regressor" else "auto"  # a numeric label alone reads as classes
        params = train_core.TrainParams(epochs=1, seed=0, batch_size=64, family=family)
        train_core.train(data, root / name, params, model_name="m", version=f"{name}-v1")
        out[name] = root / name
    return out


def served(model_dir: Path, dsn: str, instances: list[Any]) -> tuple[dict[str, Any], list[tuple]]:
    capture = Capture(CaptureConfig(dsn=dsn)).start()
    predictor = SavedModelPredictor("m", model_dir, capture=capture)
    predictor.load()
    try:
        answer = predictor.predict({"instances": instances}, {"x-user-id": "u-7"})
        deadline = time.monotonic() + 15
        while capture.written[PREDICTIONS] < len(instances):
            assert time.monotonic() < deadline and capture.failed_rows == 0, capture.counts()
            time.sleep(0.05)
    finally:
        capture.stop()
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, model_version, features, predicted_label, predicted_value, confidence, user_id "
                        "FROM predictions ORDER BY id")
            rows = cur.fetchall()
    finally:
        conn.close()
    assert answer["model_version"] == rows[0][1] and [r[0] for r in rows] == sorted(p["prediction_id"] for p in answer["predictions"])
    return answer, rows


def test_image_classifier(versions: dict[str, Path], database_url: str) -> None:
    pixels = [list(np.frombuffer(p, np.uint8).astype(float)) for p in animal_rows().iloc[200:203]["pixels"]]
    answer, rows = served(versions["image"], database_url, pixels)
    assert {p["label"] for p in answer["predictions"]} <= {"cat", "dog"}
    for row in rows:
        assert set(row[2]) == {"brightness", "contrast", "sharpness", "ink"}  # never the pixels
        assert row[3] in {"cat", "dog"} and 0.5 <= row[5] <= 1 and row[4] is None
        assert row[6] is None  # no HMAC key: no user id stored


def test_tabular_classifier_with_text_columns(versions: dict[str, Path], database_url: str) -> None:
    frame = tabular_rows(3, seed=5)
    instances = [{**{f"f{i}": float(r[f"f{i}"]) for i in range(6)}, "city": city} for (_, r), city in zip(frame.iterrows(), ["Lyon", "Paris", "Oslo"])]
    answer, rows = served(versions["tabular"], database_url, instances)
    assert all(p["label"].startswith("class-") and len(p["probabilities"]) == 3 for p in answer["predictions"])
    assert {row[2]["city"] for row in rows} == {"Lyon", "Paris", "Oslo"} and all(set(row[2]) == {*(f"f{i}" for i in range(6)), "city"} for row in rows)


def test_a_number_float32_cannot_hold_is_refused_whichever_way_the_inputs_come(versions: dict[str, Path]) -> None:
    """v1 rows keyed by column and v2 tensors by input, for a model of several inputs: the model would answer NaN."""
    from kserve import InferInput, InferRequest
    from kserve.errors import InvalidInput

    predictor = SavedModelPredictor("m", versions["tabular"])
    predictor.load()
    numbers = np.full((2, 6), 0.5, np.float32)
    numbers[1, 3] = np.nan
    request = InferRequest("m", [InferInput("features", [2, 6], "FP32", numbers), InferInput("categories", [2, 1], "BYTES", [["Lyon"], ["Oslo"]])])
    with pytest.raises(InvalidInput, match="input 'features' holds a number float32 cannot hold .* in row 1"):
        predictor.predict(request)
    instances = [{**{f"f{i}": 0.5 for i in range(6)}, "city": "Lyon"}, {**{f"f{i}": 1e50 for i in range(6)}, "city": "Oslo"}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "overflow encountered in cast" would be a second, vaguer message
        with pytest.raises(InvalidInput, match="in row 1"):
            predictor.predict({"instances": instances})


def test_regressor(versions: dict[str, Path], database_url: str) -> None:
    instances = [{f"f{i}": 50.0 + j for i in range(4)} for j in range(3)]
    answer, rows = served(versions["regressor"], database_url, instances)
    by_id = {p["prediction_id"]: p["value"] for p in answer["predictions"]}
    for row in rows:
        assert row[3] is None and row[5] is None and row[4] == pytest.approx(by_id[row[0]], rel=1e-6)


def test_recommender(versions: dict[str, Path], database_url: str) -> None:
    instances = [{"user": "u1", "item": "i3"}, {"user": "u2", "item": "i9"}, {"user": "never-seen", "item": "i1"}]
    answer, rows = served(versions["recommender"], database_url, instances)
    by_id = {p["prediction_id"]: p["score"] for p in answer["predictions"]}
    for row in rows:
        assert 0 <= row[4] <= 1 and row[4] == pytest.approx(by_id[row[0]], rel=1e-6) and row[5] == row[4]
        assert set(row[2]) == {"item"}  # the user is a person: not a feature
