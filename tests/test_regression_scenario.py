"""The tabular regression scenario (`feedback-loop demo --scenario regression`) on a real
PostgreSQL: river's Friedman drift stream, a first model trained with plain Keras and
adopted, then the loop under kfp.local judging MSE, MAE and R² on a leak-free time split."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from feedback_loop.demo import regression


def test_the_stream_drifts_and_has_every_column_kind() -> None:
    frame = regression.stream(old_rows=300, new_rows=300)
    assert {f"x{i}" for i in range(10)} <= set(frame.columns)
    assert frame["rooms"].dtype.kind == "i" and frame["region"].dtype == object  # integer-valued and categorical columns
    old, new = frame[frame["period"] == "old"], frame[frame["period"] == "new"]
    # The concept moved: the old period's best linear fit explains the new period much worse.
    import numpy as np

    features = [f"x{i}" for i in range(10)] + ["rooms"]
    coef, *_ = np.linalg.lstsq(np.c_[old[features], np.ones(len(old))], old["price"], rcond=None)
    error = lambda rows: float(np.mean((np.c_[rows[features], np.ones(len(rows))] @ coef - rows["price"]) ** 2))  # noqa: E731
    assert error(new) > 1.5 * error(old)
    assert (new["region"] == "south").mean() > (old["region"] == "south").mean() + 0.2  # and the input mix too


@pytest.mark.slow
def test_regression_demo_retrains_and_judges_mse_mae_r2(tmp_path: Path, database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "TF_CPP_MIN_LOG_LEVEL": "2"}
    package = tmp_path / "pipeline.yaml"  # compiled from this checkout (test_pipeline checks the packaged one is current)
    subprocess.run([sys.executable, "-m", "feedback_loop.cli", "compile", "--output", str(package)], env=env, check=True, capture_output=True)
    result = subprocess.run(
        [sys.executable, "-m", "feedback_loop.cli", "demo", "--scenario", "regression", "--workdir", str(tmp_path), "--package", str(package)],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "last-run.json").read_text())
    assert summary["status"] == "succeeded" and summary["decision"]["retrain"] is True
    assert any(r.startswith("performance") for r in summary["decision"]["reasons"])
    candidate, production = summary["evaluation"]["candidate"], summary["evaluation"]["production"]
    for metrics in (candidate, production):
        assert all(math.isfinite(metrics[k]) for k in ("mse", "mae", "r2"))
    assert candidate["mse"] < production["mse"] and candidate["r2"] > production["r2"]
    assert "MSE" in result.stdout and "MAE" in result.stdout and "R²" in result.stdout

    # The split: every training row is older than every holdout row, and no id is in both.
    prepared = Path(summary["artifacts"]) / "prepare-dataset"
    train, holdout = pd.read_parquet(prepared / "train"), pd.read_parquet(prepared / "holdout")
    assert len(train) > 300 and len(holdout) > 100
    assert train["created_at"].max() < holdout["created_at"].min()
    assert not set(train["id"]) & set(holdout["id"])
