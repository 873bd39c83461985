"""The tabular regression scenario: house prices from river's Friedman drift stream.

The stream (river.datasets.synth.FriedmanDrift, global abrupt drift) gives ten uniform
features and a target whose formula changes at a known row. Two columns are added: `rooms`
(an integer) and `region` (a category), each with its own effect on the price, and their
mix shifts in the new period too (input drift beside the concept drift).

A model is trained on the old period with plain Keras (the user's own model), then adopted
with `feedback-loop adopt`'s code; two weeks of traffic from the new concept follow, each
prediction the adopted model's real answer, and most with the price later observed. The
loop then judges production's MSE, MAE and R² on the new data against the retrained one's,
on a time-aware split (training rows strictly before the holdout, no shared id).
"""

from __future__ import annotations

import logging
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from psycopg2.extras import Json, execute_values

OLD_ROWS, NEW_ROWS = 2000, 1000
OLD_PERIOD_DAYS = (60, 30)  # the adopted model's data: 60 to 30 days ago
TRAFFIC_DAYS = 14
TEST_SHARE = 0.2  # the newest old rows: the adopted model's test set (its validated error)
FEEDBACK_SHARE = 0.8  # most prices are observed later
EPOCHS = 40
REGIONS = ("north", "south", "east", "west")
REGION_EFFECT = {"north": 0.0, "south": 4.0, "east": -3.0, "west": 1.5}
ROOMS_EFFECT = 1.2  # per room
LABEL_COLUMN = "price"
# What the loop runs with in this scenario (the environment's RETRAIN_* win).
SETTINGS: dict[str, Any] = {
    "model_name": "house-prices",
    "family": "tabular_regressor",
    "split": "time_series",  # the holdout is the newest rows; everything trained on is older
    "holdout_fraction": 0.1,  # of old and new rows pooled: about 240 of the newest, all from the new period
    "window": "sliding",  # the concept moved: learn from the new period
    "window_days": 21.0,
    "epochs": EPOCHS,
}

log = logging.getLogger(__name__)


def stream(seed: int = 7, old_rows: int = OLD_ROWS, new_rows: int = NEW_ROWS) -> pd.DataFrame:
    """The old period then the new one: features x0..x9, rooms, region, the price, and `period`."""
    from river.datasets import synth

    total = old_rows + new_rows
    # "gra": the whole space drifts at the first position and comes back at the second (past our rows).
    generator = synth.FriedmanDrift(drift_type="gra", position=(old_rows, total + 1), seed=seed)
    rows = [{**x, "y": y} for x, y in generator.take(total)]
    frame = pd.DataFrame(rows).rename(columns={i: f"x{i}" for i in range(10)})
    rng = np.random.default_rng(seed)
    new = np.arange(total) >= old_rows
    frame["rooms"] = np.where(new, rng.integers(2, 8, total), rng.integers(1, 6, total)).astype(np.int64)
    frame["region"] = np.where(
        new, rng.choice(REGIONS, total, p=[0.1, 0.5, 0.2, 0.2]), rng.choice(REGIONS, total, p=[0.4, 0.2, 0.2, 0.2])
    )
    frame[LABEL_COLUMN] = frame.pop("y") + ROOMS_EFFECT * frame["rooms"] + frame["region"].map(REGION_EFFECT)
    frame["period"] = np.where(new, "new", "old")
    return frame


def train_outside(train: pd.DataFrame, epochs: int = EPOCHS, seed: int = 7) -> Any:
    """The user's own model: plain Keras fit, preprocessing (normalisation, region one-hot) inside the model."""
    import keras

    from feedback_loop.dataset import LABEL
    from feedback_loop.train import families

    family = families.get(families.TABULAR_REGRESSOR)()
    frame = train.rename(columns={LABEL_COLUMN: LABEL})
    spec = family.describe(frame)
    inputs = family.inputs(frame, spec)
    keras.utils.set_random_seed(seed)
    model = family.build(spec, inputs)
    model.compile(keras.optimizers.Adam(3e-3), "mse")
    model.fit(families.call_inputs(inputs), frame[LABEL].to_numpy(np.float32), epochs=epochs, batch_size=64, verbose=0)
    return model


def seed(conn: Any, settings: Any, inputs_dir: Path, now: datetime | None = None) -> str:
    """Adopts the first model and seeds the new period's traffic once; the demo's line about it."""
    from feedback_loop import adopt as adopting
    from feedback_loop.deploy import adopt as deployment
    from feedback_loop.deploy.targets.local import LocalTarget
    from feedback_loop.train.core import load_model, predict

    target = LocalTarget(settings.model_store_uri, settings.model_name)
    if target.read() is not None:
        return "already seeded: no new traffic since the last run"
    now = now or datetime.now(timezone.utc)
    frame = stream()
    start, end = (now - timedelta(days=d) for d in OLD_PERIOD_DAYS)
    old = frame[frame["period"] == "old"].drop(columns="period").reset_index(drop=True)
    new = frame[frame["period"] == "new"].drop(columns="period").reset_index(drop=True)
    old.insert(0, "created_at", [start + (end - start) * i / len(old) for i in range(len(old))])
    old.insert(0, "id", [f"old-{i:05d}" for i in range(len(old))])
    cut = int(len(old) * (1 - TEST_SHARE))
    folder = inputs_dir / "adopt"
    folder.mkdir(parents=True, exist_ok=True)
    old.iloc[:cut].to_parquet(folder / "train.parquet", index=False)
    old.iloc[cut:].to_parquet(folder / "test.parquet", index=False)
    train_outside(old.iloc[:cut]).save(folder / "model.keras")

    request = adopting.Request(folder / "model.keras", folder / "train.parquet", LABEL_COLUMN, settings.model_name,
                               folder / "test.parquet", family="tabular_regressor")
    with tempfile.TemporaryDirectory() as scratch:
        built = adopting.build(request, Path(scratch) / "version", end)
        deployment.adopt(built.model_dir, settings.model_store_uri, settings.model_name, built.version, target, end)
        production = load_model(built.model_dir)
        answers = predict(production, new.rename(columns={LABEL_COLUMN: "label"}))

    rng = np.random.default_rng(11)
    features = [c for c in new.columns if c != LABEL_COLUMN]
    predictions, feedback = [], []
    for i, row in new.iterrows():
        pid = f"house-{i:05d}"
        created = now - timedelta(days=TRAFFIC_DAYS) + timedelta(days=TRAFFIC_DAYS) * i / len(new)
        values = {c: (row[c].item() if hasattr(row[c], "item") else row[c]) for c in features}
        answer = float(answers[i])
        predictions.append((pid, created, settings.model_name, built.version, Json(values), f"{answer:.6g}", answer,
                            float(rng.gamma(4, 2)), f"user-{rng.integers(0, 300):03d}", True))
        if rng.random() < FEEDBACK_SHARE:
            price = float(row[LABEL_COLUMN])
            # The observed price is the correction; an answer within 0.5 counts as right.
            observed = min(created + timedelta(hours=int(rng.integers(1, 48))), now - timedelta(minutes=1))
            feedback.append((pid, observed, abs(answer - price) <= 0.5, f"{price:.6g}"))
    with conn, conn.cursor() as cur:
        execute_values(
            cur,
            "INSERT INTO predictions (id, created_at, model_name, model_version, features, predicted_label, predicted_value,"
            " latency_ms, user_id, consent) VALUES %s ON CONFLICT (id) DO NOTHING",
            predictions,
        )
        execute_values(cur, "INSERT INTO feedback (prediction_id, created_at, is_correct, corrected_label) VALUES %s", feedback)
    v = built.lineage["validation"]
    return (
        f"seeded: adopted {built.version} (trained outside the loop on {built.rows} rows, test MSE {v['value']:.3g}); "
        f"{len(predictions)} predictions from the new period, {len(feedback)} with the observed price"
    )
