"""`feedback-loop report`: one self-contained HTML page from the run and deployment history."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from feedback_loop.cli import main
from feedback_loop.feedback import store
from feedback_loop.operate import report

MODEL = "cats-vs-dogs"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def seed(conn, now: datetime) -> None:
    """Twelve daily runs: satisfaction falls, drift appears, a retrain, a canary, a rollback, a promotion."""
    for day in range(12):
        feedback, negative = 200, 20 + day * 8
        stats = {"feedback_count": feedback, "negative_count": negative, "satisfaction_rate": 1 - negative / feedback,
                 "is_drift": day >= 6, "rollout_in_progress": False, "force": False}
        retrain = day in (6, 9)
        reasons = ["input_drift: drift detected"] if retrain else ["user_feedback: satisfaction above 70%"]
        store.record_run(conn, model_name=MODEL, run_name=f"run-{day}", retrain=retrain, reasons=reasons, stats=stats)
        _at(conn, "retrain_runs", now - timedelta(days=12 - day))
    steps = [
        (0, "v1", "deployed", 100, "first deployment"),
        (6.1, "v2", "canary_started", 10, "canary beside v1: 10 % for 24 h"),
        (7.1, "v2", "rolled_back", 0, "canary judged unhealthy <error rate up>; v1 serves 100 %"),
        (9.1, "v3", "canary_started", 10, "canary beside v1: 10 % for 24 h"),
        (10.1, "v3", "advanced", 50, "healthy at 10 % for 24 h"),
        (11.1, "v3", "promoted", 100, "healthy at 50 % for 24 h"),
    ]
    for day, version, action, traffic, reason in steps:
        store.record_deployment(conn, model_name=MODEL, version=version, action=action, traffic_percent=traffic, reason=reason, details={})
        _at(conn, "deployments", now - timedelta(days=12 - day))


def _at(conn, table: str, moment: datetime) -> None:
    column = "started_at" if table == "retrain_runs" else "at"
    with conn, conn.cursor() as cur:
        cur.execute(f"UPDATE {table} SET {column} = %s WHERE id = (SELECT max(id) FROM {table})", (moment,))  # noqa: S608 (two fixed names)


def test_page_shows_trends_decisions_versions_and_rollbacks(conn) -> None:
    now = datetime(2026, 3, 1, tzinfo=timezone.utc)
    seed(conn, now)
    history = report.load(conn, MODEL, days=30, now=now)
    assert len(history.runs) == 12 and len(history.deployments) == 6

    figures = report.series(history)
    assert [round(v, 2) for _, v in figures["satisfaction"][:2]] == [0.9, 0.86]
    assert [v for _, v in figures["drift"]] == [0.0] * 6 + [1.0] * 6
    assert figures["error rate"][-1][1] == pytest.approx(108 / 200)

    outcomes = {v["version"]: v["outcome"] for v in report.versions(history)}
    assert outcomes == {"v3": "serves 100 %", "v2": "rolled back: canary judged unhealthy <error rate up>; v1 serves 100 %", "v1": "replaced"}

    page = report.render(history, now=now)
    assert page.count("<svg") == 3 and page.count("<polyline") == 3
    assert len(re.findall(r"<circle ", page)) == 36  # 12 runs × 3 charts
    assert "&lt;error rate up&gt;" in page and "<error rate up>" not in page  # escaped
    assert "<script" not in page and "http" not in page.split("</style>")[1]  # nothing fetched: self-contained
    assert page.count('class="mark"') == 3 * 3  # 2 retrains + 1 rollback, on each chart


def test_cli_writes_the_page_and_an_empty_history_still_renders(database_url: str, conn, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    out = tmp_path / "empty.html"
    result = CliRunner().invoke(main, ["report", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "no data in this period" in out.read_text() and "No rollback in this period." in out.read_text()

    seed(conn, datetime.now(timezone.utc))
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", "--output", str(out), "--days", "30"])
    assert result.exit_code == 0 and "12 runs, 6 deployment steps" in result.output, result.output


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Chromium to render the page")
def test_page_renders_in_headless_chromium(conn, tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    seed(conn, now)
    page = tmp_path / "report.html"
    page.write_text(report.render(report.load(conn, MODEL, days=30, now=now), now=now))
    png = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1280,1800", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a blank page compresses to a few KiB
