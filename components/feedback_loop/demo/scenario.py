"""Seeds the cats-vs-dogs scenario: a production model trained on an "old" period, then two
weeks of traffic from a new camera, with the users' thumbs up or down.

The feedback is honest: every prediction is the production model's real answer on the
shifted image, and a user's "wrong" is a real error. Seeding is idempotent: once a model
serves, nothing is added, so a second run sees no new traffic.
"""

from __future__ import annotations

import io
import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from psycopg2.extras import Json, execute_values

from feedback_loop import storage
from feedback_loop.dataset import write_parquet
from feedback_loop.demo.images import load_cats_and_dogs, new_camera, summary_features

log = logging.getLogger(__name__)

OLD_PERIOD_DAYS = (60, 30)  # the production model's training data: 60 to 30 days ago
TRAFFIC_DAYS = 14  # then two weeks of traffic from the new camera
FEEDBACK_SHARE = 0.8  # most users answer the thumbs up / down
# The demo keeps the first users' absolute rules (the loop's default is the performance rule).
RULES = ("user_feedback", "error_rate", "latency", "keywords", "new_data", "input_drift", "model_age")
COMMENTS = {False: ["wrong animal", "blurry photo, wrong answer", "incorrect", ""], True: ["", "", "nice"]}


@dataclass(frozen=True)
class Seeded:
    production_version: str
    training_rows: int
    predictions: int
    feedback: int
    negative: int


def image_rows(images: np.ndarray, labels: np.ndarray, ids: list[str], times: list[datetime], cameras: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({"id": ids, "created_at": pd.to_datetime(times, utc=True), "label": labels})
    frame["pixels"] = [image.tobytes() for image in images]
    for name, values in summary_features(images).items():
        frame[name] = values.astype(np.float64)
    frame["camera"] = cameras
    return frame


def seed(conn, store_uri: str, model_name: str, inputs_dir: Path, now: datetime | None = None, epochs: int = 8) -> Seeded | None:
    """Seeds everything once; returns None when a model already serves (nothing added)."""
    from feedback_loop.deploy import core as deploy
    from feedback_loop.deploy.targets.local import LocalTarget
    from feedback_loop.train import core as train

    target = LocalTarget(store_uri, model_name)
    if target.read() is not None:
        return None
    now = now or datetime.now(timezone.utc)
    rng = np.random.default_rng(11)
    images, labels = load_cats_and_dogs()
    half = len(labels) // 2
    old_x, old_y, new_x, new_y = images[:half], labels[:half], images[half:], labels[half:]

    start, end = (now - timedelta(days=d) for d in OLD_PERIOD_DAYS)
    old_times = [start + (end - start) * i / half for i in range(half)]
    old_cameras = list(rng.choice(["cam-a", "cam-b"], size=half))
    training = image_rows(old_x, old_y, [f"train-{i:05d}" for i in range(half)], old_times, old_cameras)

    with tempfile.TemporaryDirectory() as scratch:
        train_path = write_parquet(training, Path(scratch) / "train.parquet")
        model_dir = Path(scratch) / "model"
        log.info("training the production model on %d images of the old period", half)
        result = train.train(train_path, model_dir, train.TrainParams(epochs=epochs), model_name=model_name)
        deploy.deploy(model_dir, store_uri, model_name, target, now=end)
        production = train.load_model(model_dir)

        shifted = new_camera(new_x)
        probabilities = train.predict_proba(production, image_rows(shifted, new_y, ["x"] * len(new_y), [now] * len(new_y), ["cam-c"] * len(new_y)))
    predicted = np.array(production.classes)[probabilities.argmax(axis=1)]
    confidence = probabilities.max(axis=1)

    inputs_dir.mkdir(parents=True, exist_ok=True)
    features = summary_features(shifted)
    predictions, feedback = [], []
    for i in range(len(new_y)):
        pid = f"pred-{i:05d}"
        created = now - timedelta(days=TRAFFIC_DAYS) + timedelta(days=TRAFFIC_DAYS) * i / len(new_y)
        uri = storage.normalize(str(inputs_dir / f"{pid}.npy"))
        buffer = io.BytesIO()
        np.save(buffer, shifted[i])
        storage.write_bytes(uri, buffer.getvalue())
        row_features = {name: float(values[i]) for name, values in features.items()} | {"camera": "cam-c"}
        predictions.append(
            (pid, created, model_name, result.version, Json(row_features), uri, predicted[i], float(confidence[i]),
             float(rng.gamma(4, 6)), f"user-{rng.integers(0, 300):03d}", True)
        )
        if rng.random() < FEEDBACK_SHARE:
            correct = bool(predicted[i] == new_y[i])
            comment = str(rng.choice(COMMENTS[correct]))
            feedback.append((pid, created + timedelta(minutes=int(rng.integers(1, 120))), correct, None if correct else new_y[i], comment or None))
    with conn, conn.cursor() as cur:
        execute_values(
            cur,
            "INSERT INTO predictions (id, created_at, model_name, model_version, features, input_uri, predicted_label,"
            " confidence, latency_ms, user_id, consent) VALUES %s ON CONFLICT (id) DO NOTHING",
            predictions,
        )
        execute_values(cur, "INSERT INTO feedback (prediction_id, created_at, is_correct, corrected_label, comment) VALUES %s", feedback)
    negative = sum(1 for row in feedback if not row[2])
    log.info("seeded %d predictions from the new camera, %d with feedback (%d negative)", len(predictions), len(feedback), negative)
    return Seeded(result.version, half, len(predictions), len(feedback), negative)
