"""Model-store clean-up: the newest N stay, and no serving or rollback version is ever deleted."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from feedback_loop import storage
from feedback_loop.cli import main
from feedback_loop.deploy import core as deploy
from feedback_loop.deploy.publish import version_dir_uri
from feedback_loop.deploy.rollout import ROLLED_BACK
from feedback_loop.deploy.targets.local import LocalTarget
from feedback_loop.layout import LINEAGE_FILE, SAVED_MODEL_DIR
from feedback_loop.operate import cleanup
from feedback_loop.operate.cleanup import ProtectedVersion
from feedback_loop.operate.component import clean_model_store

MODEL = "cats-vs-dogs"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def model_dir(tmp_path: Path, version: str, day: int) -> Path:
    """A version directory as train_model writes it (only what publishing and lineage need)."""
    path = tmp_path / "trained" / version
    (path / SAVED_MODEL_DIR).mkdir(parents=True)
    (path / SAVED_MODEL_DIR / "saved_model.pb").write_bytes(b"model")
    created = (T0 + timedelta(days=day)).isoformat()
    (path / LINEAGE_FILE).write_text(json.dumps({"version": version, "created_at": created, "trained_through": created}))
    return path


@pytest.fixture
def store(tmp_path: Path) -> str:
    return storage.normalize(str(tmp_path / "model-store"))


def deploy_versions(tmp_path: Path, store: str, versions: list[str], canary_last: bool) -> LocalTarget:
    """Deploys each version in turn through the real rollout (zero bake: each promotion is immediate)."""
    target = LocalTarget(store, MODEL)
    for day, version in enumerate(versions):
        now = T0 + timedelta(days=day)
        deploy.deploy(model_dir(tmp_path, version, day), store, MODEL, target, now, steps=[10, 100], bake_hours=[0])
        if not (canary_last and version == versions[-1]):
            deploy.advance_rollout(target, now)
    return target


def on_disk(store: str) -> list[str]:
    return storage.list_dirs(storage.join(store, MODEL))


def test_keeps_the_newest_and_every_version_the_rollout_needs(tmp_path: Path, store: str) -> None:
    versions = [f"v2026010{d}-000000" for d in range(1, 8)]
    target = deploy_versions(tmp_path, store, versions, canary_last=True)
    state = target.read()
    assert state.canary.version == versions[-1] and state.stable.version == versions[-2]

    result = cleanup.cleanup(store, MODEL, target, keep_versions=1)
    assert result.protected == {
        versions[-2]: "serves (stable), the rollback target of the canary",
        versions[-1]: "serves (canary at 10 %)",
        versions[-3]: "previous production version (to go back one step)",
    }
    assert result.keep == [] and result.delete == versions[:4]
    assert on_disk(store) == versions[-3:]
    # The rollout still works: roll the canary back to the stable version, whose files are there.
    _, transition = deploy.abort_rollout(target, T0 + timedelta(days=30), "operator")
    assert transition.action == ROLLED_BACK
    assert storage.is_complete(target.read().stable.uri)


@pytest.mark.parametrize("which", ["stable", "canary"])
def test_deleting_a_serving_or_rollback_version_is_refused(tmp_path: Path, store: str, which: str) -> None:
    versions = ["v20260101-000000", "v20260102-000000"]
    target = deploy_versions(tmp_path, store, versions, canary_last=True)
    version = getattr(target.read(), which).version
    with pytest.raises(ProtectedVersion, match=f"{version} is not deleted: it serves"):
        cleanup.delete_version(store, MODEL, version, target)
    assert version in on_disk(store) and storage.is_complete(version_dir_uri(store, MODEL, version))


def test_a_rollout_started_after_planning_is_honoured(tmp_path: Path, store: str) -> None:
    versions = ["v20260101-000000", "v20260102-000000", "v20260103-000000"]
    target = deploy_versions(tmp_path, store, versions, canary_last=False)
    planned = cleanup.plan(*cleanup.survey(store, MODEL)[:2], state=None, keep_versions=1)
    assert versions[0] in planned.delete  # a plan made without the state would delete it...
    # ...but the live state is read again at deletion time: v2 is the previous production version.
    with pytest.raises(ProtectedVersion, match="previous production"):
        cleanup.delete_version(store, MODEL, versions[1], target)


def test_incomplete_uploads_are_left_alone(tmp_path: Path, store: str) -> None:
    versions = ["v20260101-000000", "v20260102-000000"]
    target = deploy_versions(tmp_path, store, versions, canary_last=False)
    half = storage.local_path(storage.join(store, MODEL, "v20251231-000000"))
    half.mkdir()
    (half / "lineage.json").write_text("{}")
    result = cleanup.cleanup(store, MODEL, target, keep_versions=1)
    assert result.incomplete == ["v20251231-000000"] and half.exists()


def test_component_and_cli(tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    versions = [f"v2026010{d}-000000" for d in range(1, 6)]
    deploy_versions(tmp_path, store, versions, canary_last=False)
    monkeypatch.setenv("RETRAIN_MODEL_STORE_URI", store)
    dry = CliRunner().invoke(main, ["cleanup", "--deploy-target", "local", "--keep-versions", "2", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    # The newest two are the stable version and the previous production one: v1 to v3 go.
    assert json.loads(dry.output)["would_delete"] == versions[:3] and on_disk(store) == versions

    record = tmp_path / "record.md"
    from kfp.dsl import Markdown

    artifact = Markdown(uri=str(record))  # a local URI is its own path
    deleted = clean_model_store.python_func(record=artifact, model_name=MODEL, model_store_uri=store, deploy_target="local", keep_versions=2)
    assert deleted == 3 and on_disk(store) == versions[3:]
    text = record.read_text()
    assert f"| `{versions[-1]}` | protected: serves (stable) |" in text and f"| `{versions[0]}` | deleted |" in text
