"""The rollout as operated: a bake that follows a daily schedule (two weeks under an injected
clock, locally and on KServe), completion markers checked wherever a version would serve,
and `rollback --to` undoing a promotion."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kserve_emulator import GROUP, PLURAL, VERSION, KServeController, kubernetes_api

from feedback_loop import storage
from feedback_loop.cli import main
from feedback_loop.deploy import core, rollout
from feedback_loop.deploy.targets.kserve import KServeTarget
from feedback_loop.deploy.targets.local import LocalTarget
from feedback_loop.errors import ModelNotFound
from feedback_loop.feedback import store as feedback_store
from feedback_loop.layout import COMPLETE_MARKER

MODEL, NS = "m", "ml"
DAY0 = datetime(2025, 3, 3, 0, 0, tzinfo=timezone.utc)  # a Monday; the schedule runs daily at 00:00
RUN_STARTS = timedelta(minutes=1)  # advance_rollout, the run's first step
DEPLOY_AT = timedelta(minutes=50)  # deploy_canary, after training and evaluation


@pytest.fixture(autouse=True)
def _no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)


def version_dir(root: Path, version: str) -> Path:
    model_dir = root / "candidates" / version
    (model_dir / "saved_model" / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "saved_model" / "1" / "saved_model.pb").write_bytes(b"graph")
    (model_dir / "training_data.parquet").write_bytes(b"PAR1")
    lineage = {"version": version, "trained_through": "2025-02-28T00:00:00+00:00", "classes": ["cat", "dog"], "input_name": "x"}
    (model_dir / "lineage.json").write_text(json.dumps(lineage))
    return model_dir


# --- 4. a bake that matches the schedule -----------------------------------------------------------


def two_weeks(tmp_path: Path, make_target: Any, bake_tolerance: float, after_write: Any = lambda at: None) -> dict[int, list[str]]:
    """Fourteen daily runs: each advances the rollout, and deploys a new version when none is in progress."""
    store = str(tmp_path / "store")
    core.deploy(version_dir(tmp_path, "v0"), store, MODEL, make_target(), DAY0 - timedelta(days=7))
    after_write(DAY0 - timedelta(days=7))
    moves: dict[int, list[str]] = {}
    for day in range(14):
        start = DAY0 + timedelta(days=day)
        state, transitions = core.advance_rollout(make_target(), start + RUN_STARTS, bake_tolerance=bake_tolerance)
        moves[day] = [f"{t.action} {t.traffic}" for t in transitions if t.changed]
        if any(t.changed for t in transitions):
            after_write(start + RUN_STARTS)
        if state is None or state.canary is None:
            _, started = core.deploy(version_dir(tmp_path, f"v{day + 1}"), store, MODEL, make_target(), start + DEPLOY_AT)
            moves[day].append(f"{started.action} {started.traffic}")
            after_write(start + DEPLOY_AT)
    return moves


# 10 % for 24 h then 50 % for 48 h: each canary takes three days, a new one starts the day it is promoted.
ON_SCHEDULE = {
    **{d: ["canary_started 10"] for d in (0,)},
    **{d: ["advanced 50"] for d in (1, 4, 7, 10, 13)},
    **{d: [] for d in (2, 5, 8, 11)},
    **{d: ["promoted 100", "canary_started 10"] for d in (3, 6, 9, 12)},
}


def test_daily_runs_keep_a_24_h_step_to_one_day_locally(tmp_path: Path) -> None:
    assert two_weeks(tmp_path, lambda: LocalTarget(str(tmp_path / "store"), MODEL), bake_tolerance=0.1) == ON_SCHEDULE


def test_without_the_tolerance_each_step_waits_a_day_longer(tmp_path: Path) -> None:
    moves = two_weeks(tmp_path, lambda: LocalTarget(str(tmp_path / "store"), MODEL), bake_tolerance=0.0)
    assert moves[1] == [] and moves[2] == ["advanced 50"]  # the 24 h step began at 00:50: the 00:01 run is early


class StampingController(KServeController):
    """The emulator's controller, with the conditions' lastTransitionTime as Knative sets them.

    A new revision (new storageUri) takes the Ready conditions through Unknown and back to
    True when it is ready: their lastTransitionTime is then. A new traffic split alone flips
    nothing, so their times stay.
    """

    def reconcile_at(self, when: datetime) -> dict[str, Any]:
        revisions = len(self.revisions)
        previous = copy.deepcopy(self._conditions())
        status = self.reconcile()
        stamped = []
        for condition in status["conditions"]:
            before = previous.get(condition["type"])
            flipped = before is None or before["status"] != condition["status"] or len(self.revisions) != revisions
            time = when if flipped else rollout.parse_time(before["lastTransitionTime"].replace("Z", "+00:00"))
            stamped.append({**condition, "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ")})
        status["conditions"] = stamped
        self.api.patch_namespaced_custom_object_status(GROUP, VERSION, self.namespace, PLURAL, self.name, {"status": status})
        return status

    def _conditions(self) -> dict[str, dict[str, Any]]:
        obj = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)
        return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


@pytest.fixture
def cluster() -> Iterator[tuple[Any, StampingController]]:
    with kubernetes_api() as (_, api):
        yield api, StampingController(api, NS, MODEL)


def test_daily_runs_keep_a_24_h_step_to_one_day_on_kserve(tmp_path: Path, cluster: tuple[Any, StampingController]) -> None:
    api, controller = cluster
    pull = timedelta(minutes=20)  # the canary's pods take a while to pull and load the model
    seen: list[datetime | None] = []

    class Watched(KServeTarget):
        def serving_since(self, state: rollout.RolloutState) -> datetime | None:
            seen.append(super().serving_since(state))
            return seen[-1]

    def reconcile(written_at: datetime) -> None:
        controller.reconcile_at(written_at + pull)

    assert two_weeks(tmp_path, lambda: Watched(MODEL, NS, api), 0.1, after_write=reconcile) == ON_SCHEDULE
    # Each canary's first step counted from its revision's Ready, 20 min after deploy_canary wrote it.
    assert DAY0 + DEPLOY_AT + pull in seen and DAY0 + timedelta(days=3) + DEPLOY_AT + pull in seen
    state = KServeTarget(MODEL, NS, api).read()
    # The step of the last canary was written at 00:01 and changed only the split: its own start stands.
    assert state.step_started_at == rollout.format_time(DAY0 + timedelta(days=13) + RUN_STARTS) and state.serving_since is None


def test_kserve_records_when_the_canary_revision_became_ready(tmp_path: Path, cluster: tuple[Any, StampingController]) -> None:
    api, controller = cluster
    store = str(tmp_path / "store")
    core.deploy(version_dir(tmp_path, "v1"), store, MODEL, KServeTarget(MODEL, NS, api), DAY0 - timedelta(days=3))
    controller.reconcile_at(DAY0 - timedelta(days=3))
    core.deploy(version_dir(tmp_path, "v2"), store, MODEL, KServeTarget(MODEL, NS, api), DAY0 + DEPLOY_AT)
    ready = DAY0 + DEPLOY_AT + timedelta(hours=3)  # a slow start: Ready three hours after the patch
    state, moved = core.advance_rollout(KServeTarget(MODEL, NS, api), DAY0 + timedelta(hours=2), bake_tolerance=0.1)
    assert moved[0].action == "waiting" and state.serving_since is None  # not reconciled yet: nothing to record
    controller.reconcile_at(ready)
    state, moved = core.advance_rollout(KServeTarget(MODEL, NS, api), DAY0 + timedelta(days=1, minutes=1), bake_tolerance=0.1)
    assert state.serving_since == rollout.format_time(ready)  # recorded by a run that only waited
    assert moved[0].action == "waiting" and rollout.format_time(ready + timedelta(hours=24)) in moved[0].reason
    assert KServeTarget(MODEL, NS, api).read().serving_since == rollout.format_time(ready)
    _, moved = core.advance_rollout(KServeTarget(MODEL, NS, api), DAY0 + timedelta(days=2, minutes=1), bake_tolerance=0.1)
    assert [(t.action, t.traffic) for t in moved] == [("advanced", 50)]


def test_the_tolerance_is_a_share_of_the_bake() -> None:
    state = rollout.RolloutState(
        stable=rollout.Release.at("v1", "file:///s/m/v1"), canary=rollout.Release.at("v2", "file:///s/m/v2"),
        step_started_at=rollout.format_time(DAY0), serving_since=rollout.format_time(DAY0 + timedelta(hours=1)),
    )
    due = DAY0 + timedelta(hours=25)
    assert rollout.bake_ends_at(state) == due
    assert not rollout.is_baked(state, due - timedelta(hours=2.5), 0.1) and rollout.is_baked(state, due - timedelta(hours=2.3), 0.1)
    # The maximum wait of an inconclusive step is met early by the same share.
    _, moved = rollout.advance(state, due + timedelta(hours=21.7), "inconclusive", max_wait_hours=24, bake_tolerance=0.1)
    assert moved.action == "rolled_back"
    with pytest.raises(Exception, match="bake_tolerance"):
        rollout.is_baked(state, due, 1.5)
    assert rollout.RolloutState.from_json(state.to_json()) == state
    old = json.loads(state.to_json())
    del old["serving_since"]  # a state written before the field existed
    assert rollout.RolloutState.from_json(json.dumps(old)).serving_since is None


# --- 6. markers everywhere --------------------------------------------------------------------------


def test_a_canary_without_its_marker_is_rolled_back_without_any_analysis(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    target = LocalTarget(store, MODEL)
    core.deploy(version_dir(tmp_path, "v1"), store, MODEL, target, DAY0)
    state, _ = core.deploy(version_dir(tmp_path, "v2"), store, MODEL, target, DAY0, bake_hours=[0.0, 0.0])
    storage.local_path(storage.join(state.canary.uri, COMPLETE_MARKER)).unlink()  # e.g. a store restored without it
    state, moved = core.advance_rollout(LocalTarget(store, MODEL), DAY0 + timedelta(days=1))
    assert [(t.action, t.version) for t in moved] == [("rolled_back", "v2")]
    assert f"v2 is incomplete in the model store (no {COMPLETE_MARKER}" in moved[0].reason and "v1 serves 100 %" in moved[0].reason
    assert state.canary is None and state.stable.version == "v1"


def published(tmp_path: Path, version: str) -> Path:
    store = str(tmp_path / "store")
    core.deploy(version_dir(tmp_path, version), store, MODEL, LocalTarget(store, MODEL), DAY0)
    return tmp_path / "store" / MODEL / version


def test_serve_refuses_a_directory_without_its_marker(tmp_path: Path) -> None:
    from feedback_loop.serving.model import require_complete

    version = published(tmp_path, "v1")
    require_complete(version)
    require_complete(version / "saved_model")  # what KServe mounts carries its own marker
    (version / "saved_model" / COMPLETE_MARKER).unlink()
    require_complete(version / "saved_model")  # served in place: its version's marker vouches for it
    (version / COMPLETE_MARKER).unlink()
    with pytest.raises(ModelNotFound, match="no _COMPLETE marker"):
        require_complete(version)

    result = CliRunner().invoke(main, ["serve", str(version), "--port", "1"])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith(f"error: {version} has no _COMPLETE marker")
    run = subprocess.run([sys.executable, "-m", "feedback_loop.serving", str(version)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        f"error: {version} has no {COMPLETE_MARKER} marker: an unpublished or half-uploaded version is never served; "
        "serve a version from the model store (deploy_canary publishes it, marker last)"
    ]


# --- 7. undo a promotion ------------------------------------------------------------------------


def promote_v2(tmp_path: Path) -> str:
    store = str(tmp_path / "store")
    core.deploy(version_dir(tmp_path, "v1"), store, MODEL, LocalTarget(store, MODEL), DAY0)
    core.deploy(version_dir(tmp_path, "v2"), store, MODEL, LocalTarget(store, MODEL), DAY0, bake_hours=[0.0, 0.0])
    state, _ = core.advance_rollout(LocalTarget(store, MODEL), DAY0 + timedelta(hours=1))
    assert state.stable.version == "v2" and state.canary is None
    return store


def test_restore_puts_an_earlier_version_back_at_100_percent(tmp_path: Path) -> None:
    store = promote_v2(tmp_path)
    state, moved = core.restore_version(LocalTarget(store, MODEL), store, MODEL, "v1", DAY0 + timedelta(days=1), "operator: v2 misroutes")
    assert [(t.action, t.version, t.traffic) for t in moved] == [("rolled_back", "v2", 0), ("deployed", "v1", 100)]
    assert moved[1].reason == "operator: v2 misroutes: v1 restored to 100 % in place of v2"
    assert state.stable.version == "v1" and state.canary is None and LocalTarget(store, MODEL).read() == state
    _, again = core.restore_version(LocalTarget(store, MODEL), store, MODEL, "v1", DAY0 + timedelta(days=1), "again")
    assert [t.action for t in again] == ["unchanged"]
    # A canary in progress is dropped first.
    core.deploy(version_dir(tmp_path, "v3"), store, MODEL, LocalTarget(store, MODEL), DAY0 + timedelta(days=2))
    state, moved = core.restore_version(LocalTarget(store, MODEL), store, MODEL, "v2", DAY0 + timedelta(days=2), "operator")
    assert [(t.action, t.version) for t in moved] == [("rolled_back", "v3"), ("rolled_back", "v1"), ("deployed", "v2")]
    assert state.stable.version == "v2" and state.canary is None


def deployment_rows(database_url: str) -> list[tuple[Any, ...]]:
    conn = feedback_store.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version, action, traffic_percent, reason, details->>'stable' FROM deployments ORDER BY id")
            return cur.fetchall()
    finally:
        conn.close()


def test_cli_rollback_to_a_version_is_recorded(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = promote_v2(tmp_path)
    for name, value in {"RETRAIN_MODEL_STORE_URI": store, "RETRAIN_MODEL_NAME": MODEL, "DATABASE_URL": database_url}.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["rollback", "--target", "local", "--to", "v1", "--reason", "v2 misroutes"])
    assert result.exit_code == 0, result.output
    assert "deployed: v2 misroutes: v1 restored to 100 % in place of v2" in result.output
    assert deployment_rows(database_url) == [
        ("v2", "rolled_back", 0, "v2 misroutes; v1 serves 100 % again", "v1"),
        ("v1", "deployed", 100, "v2 misroutes: v1 restored to 100 % in place of v2", "v1"),
    ]


def test_cli_rollback_to_refuses_a_missing_or_incomplete_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = promote_v2(tmp_path)
    monkeypatch.setenv("RETRAIN_MODEL_STORE_URI", store)
    monkeypatch.setenv("RETRAIN_MODEL_NAME", MODEL)
    result = CliRunner().invoke(main, ["rollback", "--target", "local", "--to", "v9"])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"error: v9 is not in the model store at file://{tmp_path / 'store' / MODEL} (complete versions: v1, v2)"
    ]
    (tmp_path / "store" / MODEL / "v1" / COMPLETE_MARKER).unlink()
    result = CliRunner().invoke(main, ["rollback", "--target", "local", "--to", "v1"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert f"v1 is incomplete (no {COMPLETE_MARKER}: an interrupted upload); it cannot serve" in result.output
    assert LocalTarget(store, MODEL).read().stable.version == "v2"  # nothing changed
    result = CliRunner().invoke(main, ["rollback", "--target", "local"])  # without --to: the canary kill switch, as before
    assert result.exit_code == 0 and "idle: no rollout in progress: nothing to roll back (last move: promoted v2" in result.output


def test_kserve_restore_replaces_the_model_outright(tmp_path: Path, cluster: tuple[Any, StampingController]) -> None:
    api, controller = cluster
    store = str(tmp_path / "store")
    core.deploy(version_dir(tmp_path, "v1"), store, MODEL, KServeTarget(MODEL, NS, api), DAY0)
    controller.reconcile_at(DAY0)
    core.deploy(version_dir(tmp_path, "v2"), store, MODEL, KServeTarget(MODEL, NS, api), DAY0, bake_hours=[0.0, 0.0])
    controller.reconcile_at(DAY0)
    state, moved = core.advance_rollout(KServeTarget(MODEL, NS, api), DAY0 + timedelta(hours=1))
    assert moved[-1].action == "promoted"
    controller.reconcile_at(DAY0 + timedelta(hours=1))
    core.restore_version(KServeTarget(MODEL, NS, api), store, MODEL, "v1", DAY0 + timedelta(hours=2), "operator")
    predictor = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, MODEL)["spec"]["predictor"]
    # No canary split left to pin traffic to v2's revision: v1's new revision takes everything once ready.
    assert "canaryTrafficPercent" not in predictor and predictor["model"]["storageUri"].endswith("/v1/saved_model")
    controller.reconcile_at(DAY0 + timedelta(hours=2))
    assert controller.serving() == {f"file://{tmp_path / 'store' / MODEL / 'v1' / 'saved_model'}": 100}
