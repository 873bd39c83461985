"""The whole graph under kfp.local, twice, on the cats-vs-dogs scenario and a real PostgreSQL.

This is `./build.sh demo` with a test database: the first run must find drift, decide to
retrain, bless the candidate and start its canary; the second, right after, must not retrain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest


def demo(workdir: Path, database_url: str) -> dict:
    env = {**os.environ, "DATABASE_URL": database_url, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "feedback_loop.cli", "demo", "--workdir", str(workdir)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((workdir / "last-run.json").read_text())


@pytest.mark.slow
def test_loop_retrains_once_then_waits(tmp_path: Path, database_url: str) -> None:
    first = demo(tmp_path, database_url)
    assert first["status"] == "succeeded"
    assert first["drift"]["is_drift"] is True and first["drift"]["drifted"]
    assert first["decision"]["retrain"] is True
    assert any(r.startswith("user_feedback") for r in first["decision"]["reasons"])
    assert 0.55 < first["feedback"]["satisfaction_rate"] < 0.8  # about a third of the answers are negative
    assert first["evaluation"]["blessed"] is True
    assert first["evaluation"]["candidate"]["accuracy"] >= 1.02 * first["evaluation"]["production"]["accuracy"]
    assert first["deployment"]["status"] == "canary_started" and first["deployment"]["traffic_percent"] == 10
    report = Path(first["drift"]["report"])
    assert report.is_file() and "<svg" in report.read_text()
    assert Path(first["drift"]["report_html"]).read_text() == report.read_text()

    state = json.loads((tmp_path / "model-store" / "cats-vs-dogs" / "rollout.json").read_text())
    assert state["canary"]["version"] == first["deployment"]["version"]
    assert (tmp_path / "model-store" / "cats-vs-dogs" / first["deployment"]["version"] / "_COMPLETE").exists()

    second = demo(tmp_path, database_url)
    assert second["status"] == "succeeded"
    assert second["decision"]["retrain"] is False
    assert second["evaluation"]["blessed"] is None and second["deployment"]["status"] == "unchanged"

    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT retrain FROM retrain_runs ORDER BY id")
        assert [r[0] for r in cur.fetchall()] == [True, False]
        cur.execute("SELECT action, traffic_percent FROM deployments ORDER BY id")
        assert cur.fetchall()[-1] == ("canary_started", 10)
