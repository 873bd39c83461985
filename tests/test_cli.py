"""The command line: settings precedence, one-line errors, rendered manifests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from feedback_loop.cli import main
from feedback_loop.errors import SettingsError
from feedback_loop.settings import load


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "feedback_loop.cli", *args], capture_output=True, text=True, env=env, timeout=120)


def test_settings_precedence_defaults_file_env_flags(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"days_back": 10, "min_feedback": 50, "epochs": 3}))
    monkeypatch.setenv("RETRAIN_MIN_FEEDBACK", "60")
    monkeypatch.setenv("RETRAIN_EPOCHS", "4")
    settings = load(config, epochs=5)
    assert settings.min_negative == 20  # default
    assert settings.days_back == 10  # file
    assert settings.min_feedback == 60  # env over file
    assert settings.epochs == 5  # flag over env


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"RETRAIN_MIN_POSITIVE_RATE": "1.7"}, "invalid setting min_positive_rate=1.7 (env RETRAIN_MIN_POSITIVE_RATE)"),
        ({"RETRAIN_DAYS_BACK": "-1"}, "invalid setting days_back=-1 (env RETRAIN_DAYS_BACK)"),
        ({"RETRAIN_ROLLOUT_STEPS": "10,50"}, "rollout_steps must rise strictly from above 0 to 100"),
    ],
)
def test_invalid_settings_are_refused_by_name(env: dict[str, str], expected: str, monkeypatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as caught:
        load()
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_unreachable_database_exits_non_zero_with_one_line() -> None:
    result = run("history", env={"DATABASE_URL": "postgresql://loop:hunter2@127.0.0.1:9/feedback", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: feedback database unreachable")
    assert "hunter2" not in result.stderr + result.stdout


def test_bad_setting_exits_non_zero_with_one_line() -> None:
    result = run("history", env={"RETRAIN_MIN_POSITIVE_RATE": "1.7", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "RETRAIN_MIN_POSITIVE_RATE" in result.stderr


def test_a_user_error_inside_a_component_is_one_line_too(tmp_path: Path) -> None:
    """What a task log shows when the reference and current data share no column."""
    pd.DataFrame({"a": [1.0, 2.0]}).to_parquet(tmp_path / "ref.parquet")
    pd.DataFrame({"b": [1.0, 2.0]}).to_parquet(tmp_path / "cur.parquet")
    code = (
        "from feedback_loop import logs; logs.setup();"
        "from feedback_loop.drift import core;"
        f"core.detect('{tmp_path / 'ref.parquet'}', '{tmp_path / 'cur.parquet'}', engine='scipy')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: reference and current share no feature column") and "Traceback" not in result.stderr


def test_render_isvc_prints_a_canary_manifest() -> None:
    result = CliRunner().invoke(main, ["render-isvc", "--name", "cats-vs-dogs", "--storage-uri", "gs://b/m/v2/saved_model", "--canary", "10"])
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(result.output)
    assert manifest["kind"] == "InferenceService" and manifest["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert manifest["spec"]["predictor"]["model"]["storageUri"] == "gs://b/m/v2/saved_model"
