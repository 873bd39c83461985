"""The outcome notification: read from the real database, posted to a local webhook, harmless when it fails."""

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kfp import dsl
from kfp import local as kfp_local

from feedback_loop import local
from feedback_loop.feedback import store
from feedback_loop.operate import notify
from feedback_loop.operate.component import notify_outcome

MODEL = "cats-vs-dogs"


class Webhook:
    """A webhook on 127.0.0.1 that answers `status` and keeps what it was sent."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                outer.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/secret-part"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"  # nothing listens once the socket is closed


def decision(conn, run: str, retrain: bool, reasons: list[str]) -> None:
    store.record_run(conn, model_name=MODEL, run_name=run, retrain=retrain, reasons=reasons, stats={"satisfaction_rate": 0.6})


def move(conn, version: str, action: str, traffic: int, reason: str) -> None:
    store.record_deployment(conn, model_name=MODEL, version=version, action=action, traffic_percent=traffic, reason=reason, details={})


def test_gather_reads_this_runs_decision_rollout_and_deployment(conn) -> None:
    decision(conn, "run-1", True, ["user_feedback: satisfaction 60% (< 70%)"])
    move(conn, "v1", "canary_started", 10, "canary beside v0")  # run-1's deploy_canary
    move(conn, "v1", "advanced", 50, "healthy at 10 % for 24 h")  # run-2's advance_rollout
    move(conn, "v1", "promoted", 100, "healthy at 50 % for 48 h")
    decision(conn, "run-2", False, ["user_feedback: not enough feedback: 3 < 100"])
    move(conn, "v0", "rolled_back", 0, "operator")  # run-3's advance_rollout, after run-2's decision

    first = notify.gather(conn, MODEL, "run-1", "SUCCEEDED")
    assert first.retrain and first.rollout == []
    assert first.deployment == {"version": "v1", "action": "canary_started", "traffic_percent": 10, "reason": "canary beside v0"}
    second = notify.gather(conn, MODEL, "run-2", "SUCCEEDED")
    assert second.retrain is False and second.deployment is None
    assert [(m["action"], m["traffic_percent"]) for m in second.rollout] == [("advanced", 50), ("promoted", 100)]
    text = notify.lines(second)
    assert text[0] == "✅ cats-vs-dogs: run run-2 succeeded"
    assert "rollout: promoted v1 (healthy at 50 % for 48 h)" in text
    assert "no retrain: user_feedback: not enough feedback: 3 < 100" in text
    # A run that failed before deciding still reports the rollout moves since the last decision.
    third = notify.gather(conn, MODEL, "run-3", "FAILED", "extract-feedback failed: database unreachable")
    assert not third.decided and [m["action"] for m in third.rollout] == ["rolled_back"]
    assert notify.lines(third)[-1] == "error: extract-feedback failed: database unreachable"


def test_retrained_but_not_blessed_says_production_keeps_serving(conn) -> None:
    decision(conn, "run-1", True, ["input_drift: drift detected"])
    text = notify.lines(notify.gather(conn, MODEL, "run-1", "SUCCEEDED"))
    assert text[1:] == ["retrained: input_drift: drift detected", "not blessed: the candidate did not beat production; production keeps serving"]


def test_a_dry_run_is_not_called_not_blessed(conn, database_url: str) -> None:
    decision(conn, "run-1", True, ["input_drift: drift detected"])
    # Before: "not blessed: the candidate did not beat production", whatever the evaluation said.
    outcome, _ = notify.notify(MODEL, "run-1", "SUCCEEDED", "", database_url, None, dry_run=True)
    assert notify.lines(outcome)[1:] == [
        "retrained: input_drift: drift detected",
        "dry run: the candidate was trained and evaluated (see evaluate_model's verdict); nothing was published or deployed;"
        " production keeps serving",
    ]


def test_notify_posts_slack_json(conn, database_url: str, webhook: Webhook) -> None:
    decision(conn, "run-1", True, ["forced"])
    move(conn, "v2", "canary_started", 10, "canary beside v1: 10 % for 24 h")
    outcome, sent = notify.notify(MODEL, "run-1", "SUCCEEDED", "", database_url, webhook.url)
    assert sent and outcome.deployment["version"] == "v2"
    (payload,) = webhook.received
    assert payload["text"].splitlines()[0] == "✅ cats-vs-dogs: run run-1 succeeded"
    assert "blessed: canary started v2 at 10 % (canary beside v1: 10 % for 24 h)" in payload["text"]
    assert payload["blocks"][0]["type"] == "section" and payload["blocks"][0]["text"]["type"] == "mrkdwn"


@pytest.mark.parametrize("failure", ["500", "down", "no database"])
def test_a_failed_notification_is_harmless_and_keeps_the_url_secret(
    failure: str, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    hook = Webhook(status=500)
    try:
        url = closed_port_url() if failure == "down" else hook.url
        dsn = "postgresql://nobody:pw@127.0.0.1:9/none" if failure == "no database" else database_url
        with caplog.at_level("INFO"):
            outcome, sent = notify.notify(MODEL, "run-x", "FAILED", "train-model: out of memory", dsn, url)
    finally:
        hook.close()
    assert sent is False
    assert outcome.error == "train-model: out of memory"
    if failure == "500":
        assert len(hook.received) == 3  # retried: a 5xx may pass
        assert "the webhook answered HTTP 500" in caplog.text
    if failure == "no database":
        assert "details unavailable" in outcome.note and "pw@" not in caplog.text
    assert "secret-part" not in caplog.text and "/hook" not in caplog.text


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def record_decision(model_name: str, run_name: str) -> bool:
    """Writes this run's decision row as decide_retrain does (through the feedback store), under the run's name."""
    import os

    from feedback_loop.feedback import store

    conn = store.connect(os.environ["DATABASE_URL"])
    try:
        store.record_run(conn, model_name=model_name, run_name=run_name, retrain=False,
                         reasons=["user_feedback: not enough feedback: 3 < 100", "input_drift: no drift detected"], stats={})
    finally:
        conn.close()
    return False


def _run_with_exit_handler(tmp_path: Path, body_fails: bool) -> dict:
    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def break_down():
        raise RuntimeError("the body failed")

    @dsl.pipeline(name="notify-check")
    def check(model_name: str) -> None:
        exit_task = notify_outcome(model_name=model_name, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
        with dsl.ExitHandler(exit_task):
            decided = record_decision(model_name=model_name, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
            if body_fails:
                break_down().after(decided)

    root = tmp_path / "runs"
    root.mkdir()
    kfp_local.init(runner=kfp_local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=False)
    check(model_name=MODEL)
    (run_dir,) = root.iterdir()
    return local.task_outputs(run_dir)


@pytest.mark.slow
def test_exit_handler_under_kfp_local_reports_the_decision(tmp_path: Path, database_url: str, webhook: Webhook, monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("NOTIFY_WEBHOOK_URL", webhook.url)
    tasks = _run_with_exit_handler(tmp_path, body_fails=False)
    assert tasks["notify-outcome"]["parameters"]["Output"] is True
    (payload,) = webhook.received
    first, *rest = payload["text"].splitlines()
    assert first.startswith("✅ cats-vs-dogs: run notify-check-") and first.endswith(" succeeded")
    (said,) = rest
    assert said.startswith("no retrain: user_feedback: not enough feedback: 3 < 100; input_drift: no drift")


@pytest.mark.slow
def test_exit_handler_runs_and_succeeds_when_the_body_fails_and_the_webhook_is_down(
    tmp_path: Path, database_url: str, monkeypatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("NOTIFY_WEBHOOK_URL", closed_port_url())
    tasks = _run_with_exit_handler(tmp_path, body_fails=True)
    assert "break-down" not in tasks  # it failed: no executor output
    assert tasks["notify-outcome"]["parameters"]["Output"] is False  # the exit task itself succeeded
    message = Path(tasks["notify-outcome"]["artifacts"]["message"]["uri"]).read_text()
    assert "run notify-check-" in message and " failed" in message.splitlines()[0]
    assert "- no retrain: user_feedback: not enough feedback: 3 < 100;" in message
