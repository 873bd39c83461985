"""Rollout scenarios on a Kubernetes API (kmock's emulator on 127.0.0.1, driven by the official
`kubernetes` client) with a small controller that sets InferenceService status as KServe does,
and the feedback of each version in a real PostgreSQL."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import kserve_crds
from kserve_emulator import GROUP, PLURAL, VERSION, KServeController, emulated_inference_service

from feedback_loop.deploy import core
from feedback_loop.deploy.publish import version_dir_uri
from feedback_loop.deploy.rollout import Release, RolloutState, Transition, start
from feedback_loop.deploy.targets.kserve import KServeTarget
from feedback_loop.deploy.analysis import AnalysisConfig
from feedback_loop.errors import DeploymentError
from feedback_loop.feedback import store

NAME, NS = "cats-vs-dogs", "ml"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


@pytest.fixture(autouse=True)
def _no_database_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.fixture
def cluster() -> Iterator[tuple[Any, KServeController]]:
    with emulated_inference_service(NS, NAME) as pair:
        yield pair


def version_dir(root: Path, version: str) -> Path:
    """A version directory as train_model writes it (the SavedModel is a stand-in: nothing loads it here)."""
    model_dir = root / "candidates" / version
    (model_dir / "saved_model" / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "saved_model" / "1" / "saved_model.pb").write_bytes(b"graph")
    (model_dir / "training_data.parquet").write_bytes(b"PAR1")
    (model_dir / "lineage.json").write_text(json.dumps({"version": version, "trained_through": "2025-02-28T00:00:00+00:00"}))
    return model_dir


def uri(tmp_path: Path, version: str) -> str:
    return f"file://{tmp_path / 'store' / NAME / version / 'saved_model'}"


def deploy(tmp_path: Path, api: Any, version: str, at: datetime, **kwargs: Any) -> tuple[RolloutState, Transition]:
    target = KServeTarget(NAME, NS, api)
    return core.deploy(version_dir(tmp_path, version), str(tmp_path / "store"), NAME, target, at, **kwargs)


def seed_feedback(database_url: str, version: str, answered: int, positive: int, at: datetime) -> None:
    conn = store.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            for i in range(answered):
                pid = f"{version}-{uuid.uuid4().hex[:10]}"
                cur.execute(
                    "INSERT INTO predictions (id, created_at, model_name, model_version, predicted_label) VALUES (%s, %s, %s, %s, 'cat')",
                    (pid, at, NAME, version),
                )
                cur.execute("INSERT INTO feedback (prediction_id, created_at, is_correct) VALUES (%s, %s, %s)", (pid, at, i < positive))
    finally:
        conn.close()


def advance(api: Any, at: datetime, database_url: str | None = None, **config: Any) -> tuple[RolloutState | None, list[Transition]]:
    """One `advance_rollout` as a pipeline run makes it: a fresh target (a new process), the analysis, the write."""
    target = KServeTarget(NAME, NS, api)
    judge = core.make_judge(AnalysisConfig(NAME, NS, **{"min_feedback_samples": 50, **config}), at, database_url)
    return core.advance_rollout(target, at, judge=judge, max_wait_hours=24)


def spec(api: Any) -> dict[str, Any]:
    return api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)["spec"]["predictor"]


def test_emulator_behaves_like_the_api_server_where_the_rollout_relies_on_it(cluster: tuple[Any, KServeController], tmp_path: Path) -> None:
    from kubernetes.client.exceptions import ApiException

    api, controller = cluster
    deploy(tmp_path, api, "v1", T0)
    obj = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)
    generation, version = obj["metadata"]["generation"], obj["metadata"]["resourceVersion"]
    controller.reconcile()  # a status write: new resourceVersion, same generation
    after = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)
    assert after["metadata"]["generation"] == generation and after["metadata"]["resourceVersion"] != version
    with pytest.raises(ApiException) as conflict:
        api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME, {"metadata": {"resourceVersion": version, "labels": {"a": "b"}}})
    assert conflict.value.status == 409
    if kserve_crds.schema("inferenceservices", "v1beta1") is None:
        pytest.skip(f"KServe CRDs not found at {kserve_crds.CRD_DIR}: the Strict-validation half needs them")
    with pytest.raises(ApiException) as invalid:  # the CRD, under Strict validation
        api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME, {"spec": {"canaryTrafficPercent": 10}})
    assert invalid.value.status == 422


def test_healthy_canary_walks_10_50_100(cluster: tuple[Any, KServeController], tmp_path: Path, database_url: str) -> None:
    api, controller = cluster
    deploy(tmp_path, api, "v1", T0 - 48 * HOUR)
    controller.reconcile()
    _, started = deploy(tmp_path, api, "v2", T0)
    assert (started.action, spec(api)["canaryTrafficPercent"]) == ("canary_started", 10)
    controller.reconcile()
    assert controller.serving() == {uri(tmp_path, "v1"): 90, uri(tmp_path, "v2"): 10}

    # A margin this wide lets a few hundred answers show non-inferiority: this test walks the
    # steps on KServe; tests/test_canary_analysis.py and bench_canary judge the statistics.
    wide = {"margin": 0.3}
    seed_feedback(database_url, "v1", 200, 160, T0 + HOUR)
    seed_feedback(database_url, "v2", 60, 50, T0 + HOUR)
    _, moved = advance(api, T0 + 2 * HOUR, database_url, **wide)
    assert [t.action for t in moved] == ["waiting"] and "non-inferior" in moved[0].reason  # healthy, still baking

    _, moved = advance(api, T0 + 24 * HOUR, database_url, **wide)
    assert [(t.action, t.traffic) for t in moved] == [("advanced", 50)]
    assert spec(api)["canaryTrafficPercent"] == 50
    _, moved = advance(api, T0 + 24 * HOUR + timedelta(minutes=10), database_url, **wide)  # KServe has not moved the traffic yet
    assert moved[0].action == "waiting" and "has not reconciled" in moved[0].reason
    controller.reconcile()
    assert controller.serving() == {uri(tmp_path, "v1"): 50, uri(tmp_path, "v2"): 50}

    seed_feedback(database_url, "v1", 100, 80, T0 + 30 * HOUR)
    seed_feedback(database_url, "v2", 100, 81, T0 + 30 * HOUR)
    state, moved = advance(api, T0 + 72 * HOUR, database_url, **wide)
    assert [(t.action, t.traffic) for t in moved] == [("promoted", 100)]
    assert "canaryTrafficPercent" not in spec(api) and spec(api)["model"]["storageUri"] == uri(tmp_path, "v2")
    status = controller.reconcile()
    assert controller.serving() == {uri(tmp_path, "v2"): 100}
    assert status["components"]["predictor"]["latestRolledoutRevision"] == f"{NAME}-predictor-00002"
    assert [h["action"] for h in state.history] == ["deployed", "canary_started", "advanced", "promoted"]


def test_worse_feedback_rolls_back_and_the_previous_model_serves_everything(
    cluster: tuple[Any, KServeController], tmp_path: Path, database_url: str
) -> None:
    api, controller = cluster
    deploy(tmp_path, api, "v1", T0 - 48 * HOUR)
    controller.reconcile()
    deploy(tmp_path, api, "v2", T0)
    controller.reconcile()
    seed_feedback(database_url, "v1", 300, 240, T0 + HOUR)  # 80 %
    seed_feedback(database_url, "v2", 80, 40, T0 + HOUR)  # 50 %
    state, moved = advance(api, T0 + 3 * HOUR, database_url)
    assert [(t.action, t.version, t.traffic) for t in moved] == [("rolled_back", "v2", 0)]
    assert "satisfaction canary 50.0% of 80 vs stable 80.0% of 300: worse" in moved[0].reason
    assert moved[0].analysis is not None and moved[0].analysis.verdict == "unhealthy"
    assert spec(api)["canaryTrafficPercent"] == 0 and spec(api)["model"]["storageUri"] == uri(tmp_path, "v1")
    status = controller.reconcile()
    # A new revision for the restored storageUri gets 0 %; the rolled-out v1 revision keeps everything.
    assert controller.serving() == {uri(tmp_path, "v1"): 100}
    assert status["components"]["predictor"]["latestRolledoutRevision"] == f"{NAME}-predictor-00001"
    assert state.stable.version == "v1" and state.canary is None


def test_too_little_feedback_waits_then_gives_up(cluster: tuple[Any, KServeController], tmp_path: Path, database_url: str) -> None:
    api, controller = cluster
    deploy(tmp_path, api, "v1", T0 - 48 * HOUR)
    controller.reconcile()
    deploy(tmp_path, api, "v2", T0)
    controller.reconcile()
    seed_feedback(database_url, "v1", 200, 150, T0 + HOUR)
    seed_feedback(database_url, "v2", 10, 2, T0 + HOUR)  # bad, but 10 answers prove nothing
    _, moved = advance(api, T0 + 30 * HOUR, database_url)
    assert moved[0].action == "waiting" and "fewer than 50 answers" in moved[0].reason and spec(api)["canaryTrafficPercent"] == 10
    _, moved = advance(api, T0 + 48 * HOUR, database_url)
    assert moved[0].action == "rolled_back" and "no verdict 24 h after the bake time" in moved[0].reason


def test_canary_not_ready_in_time_is_rolled_back(cluster: tuple[Any, KServeController], tmp_path: Path) -> None:
    api, controller = cluster
    deploy(tmp_path, api, "v1", T0 - 48 * HOUR)
    controller.reconcile()
    controller.broken_uris.add(uri(tmp_path, "v2"))
    deploy(tmp_path, api, "v2", T0)
    _, moved = advance(api, T0 + timedelta(minutes=5))  # KServe has not looked at the new spec yet
    assert moved[0].action == "waiting" and "has not reconciled generation" in moved[0].reason
    controller.reconcile()
    # Until the canary's revision is ready, its 10 % reach the latest *ready* revision: still v1.
    assert controller.serving() == {uri(tmp_path, "v1"): 100}
    _, moved = advance(api, T0 + timedelta(minutes=10))
    assert moved[0].action == "waiting" and "is not ready" in moved[0].reason and "RevisionFailed" in moved[0].reason
    _, moved = advance(api, T0 + timedelta(minutes=31))
    assert moved[0].action == "rolled_back" and "not Ready within 30 min" in moved[0].reason
    controller.reconcile()
    assert controller.serving() == {uri(tmp_path, "v1"): 100}


def test_a_crash_mid_rollout_resumes_from_the_recorded_state(
    cluster: tuple[Any, KServeController], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, controller = cluster
    deploy(tmp_path, api, "v1", T0 - 48 * HOUR)
    controller.reconcile()
    # The process dies after publishing v2 but before the InferenceService is patched.
    write = KServeTarget.write

    def crash(self: KServeTarget, state: RolloutState) -> None:
        raise KeyboardInterrupt("pod evicted")

    monkeypatch.setattr(KServeTarget, "write", crash)
    with pytest.raises(KeyboardInterrupt):
        deploy(tmp_path, api, "v2", T0)
    monkeypatch.setattr(KServeTarget, "write", write)
    assert "canaryTrafficPercent" not in spec(api)  # nothing half-applied
    _, started = deploy(tmp_path, api, "v2", T0 + HOUR)  # the retry: v2 is already published, the canary starts
    assert started.action == "canary_started"
    controller.reconcile()

    # Mid-step: the run that would advance to 50 % dies after its analysis, before writing.
    monkeypatch.setattr(KServeTarget, "write", crash)
    with pytest.raises(KeyboardInterrupt):
        advance(api, T0 + 25 * HOUR)
    monkeypatch.setattr(KServeTarget, "write", write)
    assert spec(api)["canaryTrafficPercent"] == 10
    state, moved = advance(api, T0 + 26 * HOUR)  # the next run picks up the recorded state
    assert [(t.action, t.traffic) for t in moved] == [("advanced", 50)]
    assert [h["action"] for h in state.history] == ["deployed", "canary_started", "advanced"]


def test_two_concurrent_runs_do_not_both_roll_out(cluster: tuple[Any, KServeController], tmp_path: Path) -> None:
    api, controller = cluster
    deploy(tmp_path, api, "v1", T0 - 48 * HOUR)
    controller.reconcile()
    first, second = KServeTarget(NAME, NS, api), KServeTarget(NAME, NS, api)
    store_uri = str(tmp_path / "store")
    a, b = version_dir(tmp_path, "v2"), version_dir(tmp_path, "v3")
    # Interleaved: both read the same state, both decide to start a canary.
    state_a, state_b = first.read(), second.read()
    assert state_a == state_b and state_a.canary is None
    moved_a, _ = start(state_a, Release.at("v2", version_dir_uri(store_uri, NAME, "v2")), T0)
    moved_b, _ = start(state_b, Release.at("v3", version_dir_uri(store_uri, NAME, "v3")), T0)
    controller.reconcile()  # KServe writes status in between: not a reason to refuse
    first.write(moved_a)
    with pytest.raises(DeploymentError, match="changed by another run"):
        second.write(moved_b)
    assert KServeTarget(NAME, NS, api).read().canary.version == "v2"

    # Racing for real: two threads deploy v3 and v4 beside the canary of v2; neither may replace it.
    errors: list[str] = []

    def run(version: str, directory: Path) -> None:
        try:
            core.deploy(directory, store_uri, NAME, KServeTarget(NAME, NS, api), T0 + HOUR)
        except DeploymentError as err:
            errors.append(str(err))

    threads = [threading.Thread(target=run, args=(v, version_dir(tmp_path, v))) for v in ("v3", "v4")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(errors) == 2 and all("a rollout of v2 is in progress" in e for e in errors)
    assert spec(api)["model"]["storageUri"] == uri(tmp_path, "v2") and b.exists() and a.exists()


def test_two_runs_starting_canaries_at_once_leave_one(cluster: tuple[Any, KServeController], tmp_path: Path) -> None:
    api, controller = cluster
    deploy(tmp_path, api, "v1", T0 - 48 * HOUR)
    controller.reconcile()
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    class Racing(KServeTarget):
        reads = 0

        def read(self) -> RolloutState | None:
            state = super().read()
            self.reads += 1
            if self.reads == 1:
                barrier.wait(10)  # both have read before either writes
            return state

    def run(version: str) -> None:
        try:
            _, moved = core.deploy(version_dir(tmp_path, version), str(tmp_path / "store"), NAME, Racing(NAME, NS, api), T0)
            outcomes.append(moved.action)
        except DeploymentError as err:
            outcomes.append(str(err))

    threads = [threading.Thread(target=run, args=(v,)) for v in ("v2", "v3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(o if o == "canary_started" else "refused" for o in outcomes) == ["canary_started", "refused"]
    # The loser's write failed its compare-and-swap; it read again and found the winner's canary.
    assert any("is in progress" in o for o in outcomes)
    state = KServeTarget(NAME, NS, api).read()
    assert spec(api)["model"]["storageUri"] == state.canary.storage_uri and spec(api)["canaryTrafficPercent"] == 10
