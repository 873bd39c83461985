"""`submit` and `schedule` against a local KFP API server, driven by the real kfp.Client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from feedback_loop import local
from feedback_loop.cli import main
from feedback_loop.operate import kfp_api
from feedback_loop.operate.kfp_api import Connection, KfpApiError, ScheduleBusy
from kfp_api_server import KfpApiServer

PIPELINE = "feedback-loop-retraining"
ARGS = {"model_store_uri": "gs://acme-models", "model_name": "cats-vs-dogs"}


@pytest.fixture
def kfp_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[KfpApiServer]:
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads ~/.config/kfp/context.json
    with KfpApiServer() as server:
        yield server


@pytest.fixture
def package(tmp_path: Path) -> Path:
    copy = tmp_path / "retraining.yaml"
    copy.write_text(local.PIPELINE_YAML.read_text())
    return copy


def connection(server: KfpApiServer, token: str | None = "s3cret-token") -> Connection:
    return Connection(server.url, namespace="team-ml", token=token)


def test_schedule_twice_leaves_one_recurring_run_on_the_newest_version(kfp_server: KfpApiServer, package: Path) -> None:
    first = kfp_api.schedule(connection(kfp_server), package, ARGS, pipeline_name=PIPELINE, name="nightly")
    assert first.action == "created" and first.enabled

    # Same file again: nothing to re-point, no second version, the same recurring run; numbers
    # come back from the server as protobuf Values (48.0 as 48), which is no change either.
    (stored,) = kfp_server.recurring_runs.values()
    stored["runtime_config"]["parameters"] = {**ARGS, "bake_hours": [24, 48]}
    again = kfp_api.schedule(connection(kfp_server), package, {**ARGS, "bake_hours": [24.0, 48.0]}, pipeline_name=PIPELINE, name="nightly")
    assert again.action == "unchanged" and again.recurring_run_id == first.recurring_run_id

    # A changed pipeline: a new version, and the schedule now starts it.
    package.write_text(package.read_text().replace("ghcr.io/feedback-loop/", "europe-docker.pkg.dev/acme/ml/"))
    updated = kfp_api.schedule(connection(kfp_server), package, ARGS, pipeline_name=PIPELINE, name="nightly", cron="0 30 2 * * *")
    assert updated.action == "replaced" and updated.version_id != first.version_id

    (recurring,) = kfp_server.recurring_runs.values()
    newest = max(kfp_server.versions.values(), key=lambda v: v["_seq"])
    assert recurring["pipeline_version_reference"]["pipeline_version_id"] == newest["pipeline_version_id"] == updated.version_id
    assert recurring["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * *"
    assert recurring["max_concurrency"] == "1" and recurring["no_catchup"] is True and recurring["mode"] == "ENABLE"
    assert recurring["runtime_config"]["parameters"] == ARGS
    assert len(kfp_server.pipelines) == 1  # the pipeline is never deleted, only given versions
    assert len([v for v in kfp_server.versions.values() if v["display_name"].startswith(f"{PIPELINE}-")]) == 2
    # The token travels as a bearer header on every call.
    assert all(h.get("authorization") == "Bearer s3cret-token" for _, _, h in kfp_server.requests)


def test_disable_and_enable_keep_the_same_recurring_run(kfp_server: KfpApiServer, package: Path) -> None:
    created = kfp_api.schedule(connection(kfp_server), package, ARGS, pipeline_name=PIPELINE, enabled=False)
    assert not created.enabled and kfp_server.recurring_runs[created.recurring_run_id]["mode"] == "DISABLE"
    enabled = kfp_api.schedule(connection(kfp_server), package, ARGS, pipeline_name=PIPELINE, enabled=True)
    assert enabled.recurring_run_id == created.recurring_run_id
    assert kfp_server.recurring_runs[created.recurring_run_id]["mode"] == "ENABLE"
    kept = kfp_api.schedule(connection(kfp_server), package, ARGS, pipeline_name=PIPELINE)  # None keeps the mode
    assert kept.enabled and len(kfp_server.recurring_runs) == 1


def test_replacing_refuses_while_a_scheduled_run_is_in_flight(kfp_server: KfpApiServer, package: Path) -> None:
    created = kfp_api.schedule(connection(kfp_server), package, ARGS, pipeline_name=PIPELINE, name="nightly")
    running = kfp_server.start_scheduled_run(created.recurring_run_id)
    changed = {**ARGS, "days_back": 7}
    with pytest.raises(ScheduleBusy, match=f"nightly has 1 run\\(s\\) in flight \\({running}\\).*--replace-running"):
        kfp_api.schedule(connection(kfp_server), package, changed, pipeline_name=PIPELINE, name="nightly")
    assert kfp_server.runs[running]["state"] == "RUNNING"
    assert list(kfp_server.recurring_runs) == [created.recurring_run_id]

    kfp_server.set_run_state(running, "SUCCEEDED")
    replaced = kfp_api.schedule(connection(kfp_server), package, changed, pipeline_name=PIPELINE, name="nightly")
    assert replaced.action == "replaced"
    assert list(kfp_server.recurring_runs) == [replaced.recurring_run_id]
    assert kfp_server.recurring_runs[replaced.recurring_run_id]["runtime_config"]["parameters"]["days_back"] == 7


def test_submit_starts_one_run_and_lists_it(kfp_server: KfpApiServer, package: Path) -> None:
    run_id, name = kfp_api.submit(connection(kfp_server), package, ARGS, run_name="by-hand")
    assert name == "by-hand" and kfp_server.runs[run_id]["runtime_config"]["parameters"] == ARGS
    (listed,) = kfp_api.recent_runs(connection(kfp_server))
    assert listed["run_id"] == run_id and listed["state"] == "PENDING"


def test_errors_are_one_line_without_the_token(kfp_server: KfpApiServer, package: Path) -> None:
    with pytest.raises(KfpApiError, match=r"HTTP 400 unknown pipeline parameters: \['no_such_setting'\]") as err:
        kfp_api.submit(connection(kfp_server), package, {**ARGS, "no_such_setting": 1})
    assert "s3cret-token" not in str(err.value)
    with pytest.raises(KfpApiError, match="unreachable.*check KFP_HOST") as err:
        kfp_api.submit(Connection("http://127.0.0.1:9", namespace="x", token="s3cret-token"), package, ARGS)
    assert "s3cret-token" not in str(err.value)
    with pytest.raises(KfpApiError, match="six fields"):
        kfp_api.schedule(connection(kfp_server), package, ARGS, pipeline_name=PIPELINE, cron="0 3 * * *")


def test_cli_schedule_and_submit_read_host_namespace_and_token_from_env(
    kfp_server: KfpApiServer, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KFP_HOST", kfp_server.url)
    monkeypatch.setenv("KFP_NAMESPACE", "team-ml")
    monkeypatch.setenv("KFP_TOKEN", "env-token")
    monkeypatch.setenv("RETRAIN_MODEL_STORE_URI", "gs://acme-models")
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(main, ["schedule", "--package", str(package), "--name", "nightly", "--cron", "0 0 4 * * *"])
        assert result.exit_code == 0, result.output
        assert "env-token" not in result.output
    assert len(kfp_server.recurring_runs) == 1
    (recurring,) = kfp_server.recurring_runs.values()
    assert recurring["runtime_config"]["parameters"]["model_store_uri"] == "gs://acme-models"

    result = runner.invoke(main, ["schedule", "--package", str(package), "--name", "nightly", "--cron", "0 0 4 * * *", "--disable"])
    assert result.exit_code == 0 and recurring["mode"] == "DISABLE", result.output

    result = runner.invoke(main, ["submit", "--package", str(package), "--run-name", "now"])
    assert result.exit_code == 0, result.output
    assert any(r["display_name"] == "now" for r in kfp_server.runs.values())
    assert all(h.get("authorization") == "Bearer env-token" for _, _, h in kfp_server.requests)


def test_cli_refuses_a_local_model_store_for_a_cluster(kfp_server: KfpApiServer, package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RETRAIN_MODEL_STORE_URI", raising=False)
    result = CliRunner().invoke(main, ["submit", "--host", kfp_server.url, "--package", str(package)])
    assert result.exit_code == 2
    assert "model_store_uri" in result.output and "RETRAIN_MODEL_STORE_URI" in result.output
    assert not kfp_server.runs
