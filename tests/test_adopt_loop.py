"""Bring your own model and database: a model trained outside the project (plain Keras,
integer labels) is adopted, then `feedback-loop run` runs the compiled pipeline with
kfp.local against a real PostgreSQL holding the traffic it answered."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from psycopg2.extras import Json, execute_values

from feedback_loop.feedback import store

NAME = "species"
NOW = datetime.now(timezone.utc)


def rows(n: int, seed: int, start: datetime, end: datetime, moved: bool = False) -> pd.DataFrame:
    """Class 0, 1 or 2 by which of two sums is largest; after the move the second sum's sign flips."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    second = (x[:, 2] - x[:, 1]) if moved else (x[:, 1] - x[:, 2])
    y = np.argmax(np.stack([x[:, 0] + x[:, 1], second, 0.3 * np.ones(n)], axis=1), axis=1)
    times = [start + (end - start) * i / n for i in range(n)]
    return pd.DataFrame({"created_at": times, "a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "kind": y})


def feedback_loop(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "feedback_loop.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}, timeout=900)


def compiled(tmp_path: Path) -> Path:
    """The pipeline compiled from this checkout (test_pipeline checks that the packaged YAML is not stale)."""
    path = tmp_path / "pipeline.yaml"
    done = feedback_loop("compile", "--output", str(path), env={})
    assert done.returncode == 0, done.stderr[-2000:]
    return path


@pytest.mark.slow
def test_adopted_model_is_retrained_and_judged_against(tmp_path: Path, database_url: str) -> None:
    train = rows(1500, 1, NOW - timedelta(days=40), NOW - timedelta(days=20))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(train[["a", "b", "c"]].to_numpy(np.float32), train["kind"].to_numpy(), epochs=15, verbose=0)
    model.save(tmp_path / "model.keras")
    train.to_csv(tmp_path / "train.csv", index=False)

    env = {"DATABASE_URL": database_url, "RETRAIN_MODEL_NAME": NAME, "RETRAIN_DEPLOY_TARGET": "local",
           "RETRAIN_MODEL_STORE_URI": f"file://{tmp_path / 'store'}", "RETRAIN_EPOCHS": "15",
           # The concept moved: learn from the last twelve days only (the adopted model's rows are older).
           "RETRAIN_WINDOW": "sliding", "RETRAIN_WINDOW_DAYS": "12"}
    adopted = feedback_loop("adopt", "--model", str(tmp_path / "model.keras"), "--data", str(tmp_path / "train.csv"),
                            "--label", "kind", "--version", "v-adopted", env=env)
    assert adopted.returncode == 0, adopted.stderr[-3000:]
    assert "adopted species v-adopted (tabular_classifier, 1500 rows" in adopted.stdout

    # Ten days of traffic after the concept moved: the adopted model's real answers, most of them corrected.
    new = rows(800, 2, NOW - timedelta(days=10), NOW - timedelta(hours=1), moved=True)
    answers = model.predict(new[["a", "b", "c"]].to_numpy(np.float32), verbose=0)
    conn = store.connect(database_url)
    rng = np.random.default_rng(3)
    with conn, conn.cursor() as cur:
        execute_values(cur, "INSERT INTO predictions (id, created_at, model_name, model_version, features, predicted_label, confidence)"
                       " VALUES %s", [(f"p{i}", r.created_at, NAME, "v-adopted", Json({"a": r.a, "b": r.b, "c": r.c}),
                                       str(int(answers[i].argmax())), float(answers[i].max())) for i, r in enumerate(new.itertuples())])
        execute_values(cur, "INSERT INTO feedback (prediction_id, created_at, is_correct, corrected_label) VALUES %s",
                       [(f"p{i}", r.created_at + timedelta(minutes=5), int(answers[i].argmax()) == r.kind, str(r.kind))
                        for i, r in enumerate(new.itertuples()) if rng.random() < 0.8])
    conn.close()

    ran = feedback_loop("run", "--workdir", str(tmp_path / "work"), "--package", str(compiled(tmp_path)), env=env)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    summary = json.loads((tmp_path / "work" / "last-run.json").read_text())
    assert summary["status"] == "succeeded"
    assert summary["rollout_before_run"]["production_version"] == "v-adopted"
    assert summary["decision"]["retrain"] is True, summary["decision"]
    assert any(r.startswith("performance") for r in summary["decision"]["reasons"]), summary["decision"]
    evaluation = summary["evaluation"]
    assert evaluation["blessed"] is not None and evaluation["production"]["accuracy"] < evaluation["candidate"]["accuracy"]
    lineage = json.loads((Path(evaluation["candidate_model"]) / "lineage.json").read_text())
    assert lineage["parent_version"] == "v-adopted"  # judged against, and descended from, the adopted model
    # Quiet: one line per task, kfp.local's task JSON in the log file.
    assert len(ran.stdout) < 5000 and "outputs:" not in ran.stdout and "advance-rollout" in ran.stdout
    logs = list((tmp_path / "work" / "logs").glob("run-*.log"))
    assert len(logs) == 1 and "Task 'train-model' outputs:" in re.sub(r"\x1b\[[0-9;]*m", "", logs[0].read_text())


def test_a_failed_task_fails_the_run_and_is_named(tmp_path: Path, database_url: str) -> None:
    # KServe as the target but no cluster to reach: the first task fails, and nothing after it runs.
    env = {"DATABASE_URL": database_url, "RETRAIN_DEPLOY_TARGET": "kserve", "KUBECONFIG": str(tmp_path / "none"),
           "RETRAIN_MODEL_STORE_URI": f"file://{tmp_path / 'store'}"}
    ran = feedback_loop("run", "--workdir", str(tmp_path / "work"), "--package", str(compiled(tmp_path)), env=env)
    assert ran.returncode == 2
    error = ran.stderr.strip().splitlines()[-1]
    assert error.startswith("error: the run failed: task advance-rollout failed; its log is in "), error
    log = Path(error.rsplit(" ", 1)[-1])
    assert log.is_file() and "no Kubernetes credentials" in log.read_text()
    assert "Traceback" not in ran.stderr
