"""Fault suite, the operating side: half-done publishes and a corrupt rollout state, settings
and output errors, GCS, the Kubernetes API and Prometheus failing, retention of raw inputs,
fuzzed settings. Each ends as one line, a retry that succeeds, or an inconclusive analysis."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings as fuzz_settings, strategies as st
from psycopg2.extras import execute_values

from feedback_loop.cli import main
from feedback_loop.errors import FeedbackLoopError
from feedback_loop.feedback import store
from feedback_loop.settings import Settings, load

pytestmark = pytest.mark.faults
NOW = datetime.now(timezone.utc)
MINUTE = timedelta(minutes=1)


# ------------------------------------------------------------------ half-done work


KILLED_PUBLISH = """
import os, shutil, signal, sys
from pathlib import Path
from feedback_loop import storage
from feedback_loop.deploy import publish

copied = []
real = shutil.copyfile

def copy_then_die(src, dst, *args, **kwargs):
    if ".tmp" in str(dst) and copied:  # the second file into the store's staging: killed outright
        os.kill(os.getpid(), signal.SIGKILL)
    copied.append(dst)
    return real(src, dst, *args, **kwargs)

shutil.copyfile = copy_then_die
publish.publish(Path(sys.argv[1]), sys.argv[2], "m", "v20260101-000000")
"""


def _trained(tmp_path: Path) -> Path:
    model = tmp_path / "trained" / "v20260101-000000"
    (model / "saved_model" / "1").mkdir(parents=True)
    for name in ("saved_model.pb", "variables.data", "variables.index"):
        (model / "saved_model" / "1" / name).write_bytes(os.urandom(1 << 16))
    (model / "lineage.json").write_text(json.dumps({"version": "v20260101-000000", "created_at": "2026-01-01T00:00:00+00:00"}))
    return model


def test_a_publish_killed_midway_leaves_nothing_clean_up_does_not_remove(tmp_path: Path, monkeypatch) -> None:
    import subprocess
    import sys

    from feedback_loop import storage
    from feedback_loop.deploy.targets.local import LocalTarget
    from feedback_loop.operate import cleanup

    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    store = storage.normalize(str(tmp_path / "store"))
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_PUBLISH, str(_trained(tmp_path)), store], env={**os.environ, "TMPDIR": str(scratch_root)}
    )
    assert killed.returncode == -signal.SIGKILL
    staging = list((tmp_path / "store" / "m").glob(".*.tmp"))
    scratch = list(scratch_root.glob("feedback-loop-publish-*"))
    assert len(staging) == 1 and len(scratch) == 1  # what the kill left: the store's staging, the scratch
    assert storage.list_dirs(storage.join(store, "m")) == []  # no reader sees a version

    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    target = LocalTarget(store, "m")
    fresh = cleanup.cleanup(store, "m", target, keep_versions=1)
    assert fresh.stale == [] and staging[0].exists()  # a publish still under way is left alone
    monkeypatch.setattr(cleanup, "STALE_AFTER_S", 0)
    assert cleanup.summary(cleanup.cleanup(store, "m", target, keep_versions=1, dry_run=True), True)["stale_to_remove"]
    result = cleanup.cleanup(store, "m", target, keep_versions=1)
    assert sorted(result.stale) == sorted(str(p) for p in staging + scratch)
    assert not staging[0].exists() and not scratch[0].exists()


def test_a_failed_publish_removes_its_scratch(tmp_path: Path, monkeypatch) -> None:
    from feedback_loop import storage
    from feedback_loop.deploy import publish

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    store = storage.normalize(str(tmp_path / "store"))
    with pytest.raises(ValueError, match="evidence file"):
        publish.publish(_trained(tmp_path), store, "m", "v20260101-000000", evidence={"../escape.md": "x"})
    assert list(tmp_path.glob("feedback-loop-publish-*")) == [] and not (tmp_path / "store").exists()


@pytest.mark.parametrize("content", [b'{"stable": {"version": "v1"', b"\xff\xfe\x00binary", b'{"steps": "x"}', b"[]"])
def test_a_corrupt_rollout_state_is_one_line(tmp_path: Path, content: bytes) -> None:
    from feedback_loop import storage

    store = storage.normalize(str(tmp_path / "store"))
    (tmp_path / "store" / "cats-vs-dogs").mkdir(parents=True)
    (tmp_path / "store" / "cats-vs-dogs" / "rollout.json").write_bytes(content)
    env = {"RETRAIN_MODEL_STORE_URI": store}
    for command in (["rollback", "--target", "local"], ["cleanup", "--deploy-target", "local"]):
        result = CliRunner().invoke(main, command, env=env)
        # Before: a JSONDecodeError (or KeyError) traceback.
        assert result.exit_code == 2, result.output
        (line,) = result.output.strip().splitlines()
        assert line.startswith("error: ") and "rollout.json is not a valid rollout state" in line


# ------------------------------------------------------------------ settings and output


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"RETRAIN_NODE_SELECTOR": "{gpu: a100"}, "invalid setting node_selector (env RETRAIN_NODE_SELECTOR): not valid JSON"),
        ({"RETRAIN_CANARY_METRICS": '{"p95": {"query": '}, "invalid setting canary_metrics (env RETRAIN_CANARY_METRICS): not valid JSON"),
        ({"RETRAIN_TOLERATIONS": "["}, "invalid setting tolerations (env RETRAIN_TOLERATIONS): not valid JSON"),
    ],
)
def test_malformed_json_in_the_environment_is_one_line(env: dict[str, str], expected: str) -> None:
    result = CliRunner().invoke(main, ["history"], env=env)
    assert result.exit_code == 2 and result.output.strip() == f"error: {expected}; give e.g. " + (
        "[...]" if "TOLERATIONS" in next(iter(env)) else "{...}"
    ) + " as JSON, or unset it"


def test_config_errors_and_flags_are_named_as_given(tmp_path: Path) -> None:
    binary = tmp_path / "settings.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    result = CliRunner().invoke(main, ["--config", str(binary), "history"])
    assert result.exit_code == 2 and result.output.strip() == f"error: config file {binary} is not text (not UTF-8): pass a JSON file to --config"
    # A bad flag is named as the flag, even when the environment sets the same setting.
    result = CliRunner().invoke(main, ["cleanup", "--keep-versions", "0"], env={"RETRAIN_KEEP_VERSIONS": "3"})
    assert result.exit_code == 2 and "invalid setting keep_versions=0 (flag --keep-versions)" in result.output
    config = tmp_path / "c.json"
    config.write_text('{"days_back": 0}')
    result = CliRunner().invoke(main, ["--config", str(config), "history"])
    assert result.exit_code == 2 and f"invalid setting days_back=0 (config file {config})" in result.output


def test_unwritable_report_output_is_one_line(database_url: str, tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    result = CliRunner().invoke(main, ["report", "--output", str(blocked / "report.html")], env={"DATABASE_URL": database_url})
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if not line.startswith("20")]
    assert line.startswith(f"error: cannot write {blocked / 'report.html'}") and "--output" in line


# ------------------------------------------------------------------ services that fail for a moment


def test_gcs_answering_503_then_200_is_retried(tmp_path: Path, monkeypatch) -> None:
    from http import HTTPStatus

    import gcs_emulator
    from gcp_storage_emulator import server as emulated

    from feedback_loop import storage
    from feedback_loop.deploy import publish

    failures = {"left": 0, "served": 0}
    real = emulated.Router.handle

    def flaky(self, method):
        if failures["left"]:
            failures["left"] -= 1
            failures["served"] += 1
            length = int(self._request_handler.headers.get("content-length") or 0)
            self._request_handler.rfile.read(length)  # the request is read, then refused, as a busy GCS does
            response = emulated.Response(self._request_handler)
            response.status = HTTPStatus.SERVICE_UNAVAILABLE
            response.json({"error": {"code": 503, "message": "Backend Error"}})
            response.close()
            return None
        return real(self, method)

    monkeypatch.setattr(emulated.Router, "handle", flaky)
    with gcs_emulator.emulator(monkeypatch):
        uri = f"gs://{gcs_emulator.BUCKET}/m/rollout.json"
        failures["left"] = 2
        storage.write_bytes(uri, b'{"a": 1}')  # before: ServiceUnavailable on the first 503
        failures["left"] = 2
        assert storage.read_bytes(uri) == b'{"a": 1}'
        failures["left"] = 2
        release = publish.publish(_trained(tmp_path), f"gs://{gcs_emulator.BUCKET}/store", "m", "v20260101-000000")
        assert storage.is_complete(release.uri) and failures["served"] == 6


def test_kubernetes_api_answering_500_then_200_is_retried(monkeypatch) -> None:
    import kmock
    from kserve_emulator import kubernetes_api

    from feedback_loop.deploy.targets.kserve import KServeTarget

    with kubernetes_api() as (server, api):
        real = server.handler.handle
        failures = {"left": 2}

        async def flaky(request):
            if failures["left"]:
                failures["left"] -= 1
                raise kmock.KubernetesError(status=500, reason="InternalError", message="etcdserver: leader changed", details={})
            return await real(request)

        monkeypatch.setattr(server.handler, "handle", flaky)
        # Before: "get InferenceService ml/m failed (500 ...)" at the first answer.
        assert KServeTarget("m", "ml", api).read() is None and failures["left"] == 0
        failures["left"] = 9  # a server that stays down: one line after the attempts
        with pytest.raises(Exception) as caught:
            KServeTarget("m", "ml", api).read()
        assert "failed (500" in str(caught.value) and "\n" not in str(caught.value)


def test_prometheus_down_makes_the_analysis_inconclusive_not_a_crash() -> None:
    from serving_helpers import free_port

    from feedback_loop.deploy import analysis

    now = datetime.now(timezone.utc)
    config = analysis.AnalysisConfig("m", prometheus_url=f"http://127.0.0.1:{free_port()}")
    source = analysis.Prometheus(config.prometheus_url, timeout=1.0, backoff=0.05)
    started = time.monotonic()
    result = analysis.analyse("v2", "v1", now - timedelta(hours=1), now, analysis.Observation(True), config, metrics=source)
    assert result.verdict == analysis.INCONCLUSIVE
    assert all(c.verdict == analysis.INCONCLUSIVE and "unreachable" in c.detail for c in result.checks[1:])
    assert time.monotonic() - started >= 3 * 0.15  # each metric's query asked three times before giving up


_settings_names = sorted(n for n in Settings.model_fields if n != "database_url")


@fuzz_settings(max_examples=300, deadline=None)
@given(values=st.dictionaries(st.sampled_from(_settings_names), st.text(max_size=20) | st.sampled_from(["[", "{", "1e999", "nan", "-1", "[1,2", '{"a": [}']), max_size=4))
def test_fuzzed_settings_values_end_as_one_line_or_load(values: dict[str, str]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("RETRAIN_"):
                patch.delenv(name)
        for name, value in values.items():
            patch.setenv(f"RETRAIN_{name.upper()}", value.replace("\x00", ""))
        try:
            load()
        except FeedbackLoopError as err:
            assert "\n" not in str(err) and str(err)


# ------------------------------------------------------------------ retention reaches the raw inputs


def test_retention_deletes_expired_inputs_under_inputs_uri_only(database_url: str, tmp_path: Path) -> None:
    inputs, elsewhere = tmp_path / "inputs", tmp_path / "elsewhere"
    inputs.mkdir(), elsewhere.mkdir()
    files = {name: (inputs / f"{name}.npy") for name in ("old", "shared", "recent")}
    files["outside"] = elsewhere / "outside.npy"
    for path in files.values():
        path.write_bytes(b"pixels")
    escape = f"file://{inputs}/../elsewhere/outside.npy"
    old = NOW - 200 * 24 * 60 * MINUTE
    predictions = [
        ("p-old", old, f"file://{files['old']}"),
        ("p-shared-old", old, f"file://{files['shared']}"),
        ("p-shared-new", NOW, f"file://{files['shared']}"),  # a kept prediction still needs it
        ("p-recent", NOW, f"file://{files['recent']}"),
        ("p-outside", old, f"file://{files['outside']}"),
        ("p-escape", old, escape),
    ]
    conn = store.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            execute_values(cur, "INSERT INTO predictions (id, created_at, model_name, model_version, input_uri, predicted_label) VALUES %s",
                           [(pid, at, "m", "v1", uri, "cat") for pid, at, uri in predictions])
        assert store.purge(conn, 180, dry_run=True, inputs_uri=str(inputs))["inputs"] == 1
        assert files["old"].exists()  # a dry run deletes nothing
        counts = store.purge(conn, 180, inputs_uri=f"file://{inputs}")
    finally:
        conn.close()
    # Before: the rows went, the raw images (personal data) stayed forever.
    assert counts == {"inputs": 1, "feedback": 0, "predictions": 4}
    assert not files["old"].exists()
    assert files["shared"].exists() and files["recent"].exists() and files["outside"].exists()
