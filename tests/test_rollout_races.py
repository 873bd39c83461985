"""Single flight on the model-store targets: two processes released together by a barrier,
20 rounds each, on a file:// store (lock file) and a gs:// one (generation preconditions,
gcp-storage-emulator driven by the real google-cloud-storage client)."""

from __future__ import annotations

import json
import multiprocessing
import random
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import gcs_emulator

from feedback_loop import storage
from feedback_loop.deploy import core
from feedback_loop.deploy.rollout import RolloutState
from feedback_loop.deploy.targets.local import LocalTarget
from feedback_loop.errors import DeploymentError

MODEL = "m"
ROUNDS = 20
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def version_dir(root: Path, version: str) -> Path:
    model_dir = root / "candidates" / version
    (model_dir / "saved_model" / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "saved_model" / "1" / "saved_model.pb").write_bytes(b"graph")
    (model_dir / "lineage.json").write_text(json.dumps({"version": version, "trained_through": "2025-02-28T00:00:00+00:00"}))
    return model_dir


class Deciding(LocalTarget):
    """A run that takes a while between its read and its write (publishing, the analysis)."""

    def __init__(self, store_uri: str, pause: float) -> None:
        super().__init__(store_uri, MODEL)
        self.pause, self.reads = pause, 0

    def read(self) -> RolloutState | None:
        state = super().read()
        self.reads += 1
        time.sleep(self.pause)
        return state


# --- what each process runs (module level: the spawned worker imports this module) ---------------


def _deploy(store_uri: str, model_dir: str, pause: float) -> dict[str, Any]:
    target = Deciding(store_uri, pause)
    _, moved = core.deploy(Path(model_dir), store_uri, MODEL, target, T0 + timedelta(hours=1))
    return {"action": moved.action, "version": moved.version, "reason": moved.reason, "reads": target.reads}


def _advance(store_uri: str, pause: float) -> dict[str, Any]:
    target = Deciding(store_uri, pause)
    _, moved = core.advance_rollout(target, T0 + timedelta(hours=2))
    return {"actions": [t.action for t in moved], "reason": moved[-1].reason, "reads": target.reads}


def _rollback(store_uri: str, pause: float) -> dict[str, Any]:
    target = Deciding(store_uri, pause)
    _, moved = core.abort_rollout(target, T0 + timedelta(hours=2), "operator: bad reviews")
    return {"action": moved.action, "reason": moved.reason, "reads": target.reads}


JOBS = {"deploy": _deploy, "advance": _advance, "rollback": _rollback}


def _worker(jobs: Any, results: Any, barrier: Any) -> None:
    import os

    while (job := jobs.get()) is not None:
        name, args, emulator_host = job
        if os.environ.get("STORAGE_EMULATOR_HOST") != emulator_host:  # each gs test starts its own emulator
            os.environ["STORAGE_EMULATOR_HOST"] = emulator_host
            storage._gcs_client.cache_clear()
        barrier.wait(60)  # both processes start their run at the same moment
        try:
            results.put((name, JOBS[name](*args)))
        except DeploymentError as err:
            results.put((name, {"refused": str(err)}))
        except Exception as err:  # reported, not hung: the parent fails the test with it
            results.put((name, {"crashed": f"{type(err).__name__}: {err}"}))


class Pair:
    """Two long-lived worker processes; `race` hands each a job and releases them together."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")  # no threads of the test process (the emulator) are forked
        self.barrier = context.Barrier(2)
        self.queues = [context.Queue(), context.Queue()]
        self.results = context.Queue()
        self.processes = [context.Process(target=_worker, args=(q, self.results, self.barrier), daemon=True) for q in self.queues]
        for process in self.processes:
            process.start()

    def race(self, first: tuple[str, tuple[Any, ...]], second: tuple[str, tuple[Any, ...]]) -> dict[str, dict[str, Any]]:
        import os

        emulator_host = os.environ.get("STORAGE_EMULATOR_HOST", "")
        self.queues[0].put((*first, emulator_host))
        self.queues[1].put((*second, emulator_host))
        outcomes = [self.results.get(timeout=120) for _ in range(2)]
        crashed = [o for _, o in outcomes if "crashed" in o]
        assert not crashed, crashed
        return {name: outcome for name, outcome in outcomes} if first[0] != second[0] else {"a": outcomes[0][1], "b": outcomes[1][1]}

    def close(self) -> None:
        for queue in self.queues:
            queue.put(None)
        for process in self.processes:
            process.join(30)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    workers = Pair()
    yield workers
    workers.close()


@pytest.fixture(params=["file", "gs"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "file":
        yield str(tmp_path / "store")
        return
    with gcs_emulator.emulator(monkeypatch):  # `race` hands the workers its STORAGE_EMULATOR_HOST
        yield f"gs://{gcs_emulator.BUCKET}/store"


def pauses() -> tuple[float, float]:
    # Each run spends 0-30 ms between read and write: both orders occur, and most rounds overlap.
    return random.uniform(0, 0.03), random.uniform(0, 0.03)


def test_two_deploys_released_together_start_one_canary(pair: Pair, store: str, tmp_path: Path) -> None:
    random.seed(7)
    conflicts = 0
    for i in range(ROUNDS):
        root = f"{store}/round-{i}"
        core.deploy(version_dir(tmp_path, "v1"), root, MODEL, LocalTarget(root, MODEL), T0)
        a, b = pauses()
        out = pair.race(
            ("deploy", (root, str(version_dir(tmp_path / f"r{i}", "v2")), a)),
            ("deploy", (root, str(version_dir(tmp_path / f"r{i}", "v3")), b)),
        )
        started = [o for o in out.values() if o.get("action") == "canary_started"]
        refused = [o for o in out.values() if "refused" in o]
        assert len(started) == 1 and len(refused) == 1, out
        assert "is in progress" in refused[0]["refused"], refused  # a clear reason: the winner's canary
        state = LocalTarget(root, MODEL).read()
        assert state is not None and state.stable.version == "v1" and state.canary.version == started[0]["version"]
        assert [h["action"] for h in state.history] == ["deployed", "canary_started"]  # nothing lost, nothing doubled
        assert storage.is_complete(state.canary.uri)
        conflicts += sum(o.get("reads", 1) > 1 for o in out.values()) + sum("refused" in o for o in out.values())
    assert conflicts >= 1


def test_an_operator_rollback_wins_over_an_advance_in_flight(pair: Pair, store: str, tmp_path: Path) -> None:
    random.seed(11)
    wins = {"rollback": 0, "advance": 0}
    retried = 0
    for i in range(ROUNDS):
        root = f"{store}/round-{i}"
        core.deploy(version_dir(tmp_path, "v1"), root, MODEL, LocalTarget(root, MODEL), T0)
        core.deploy(version_dir(tmp_path, "v2"), root, MODEL, LocalTarget(root, MODEL), T0, bake_hours=[0.0, 0.0])
        a, b = pauses()
        out = pair.race(("advance", (root, a)), ("rollback", (root, b)))
        state = LocalTarget(root, MODEL).read()
        assert state is not None and state.canary is None
        if out["rollback"]["action"] == "rolled_back":
            wins["rollback"] += 1
            # The advance's write failed its precondition, or it read after the roll-back: never promoted.
            assert state.stable.version == "v1" and state.history[-1]["action"] == "rolled_back", (out, state.history)
            assert "promoted" not in out["advance"]["actions"], out
        else:  # the advance had written its promotion before the roll-back read: nothing was in progress
            wins["advance"] += 1
            assert out["rollback"]["action"] == "idle" and "last move: promoted v2" in out["rollback"]["reason"], out
            assert state.stable.version == "v2" and out["advance"]["actions"][-1] == "promoted", out
        retried += out["advance"]["reads"] > 1 or out["rollback"]["reads"] > 1
    assert wins["rollback"] >= 1 and retried >= 1, (wins, retried)
