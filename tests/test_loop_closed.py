"""The loop closed end to end, here: our predictor serves a stable and a canary version (two
real model servers, from what the rollout published), both capture into a real PostgreSQL;
simulated users call the InferenceService, whose traffic split comes from the emulated KServe
controller (tests/kserve_emulator.py: no Kubernetes can run here, the one fake), and answer
thumbs up/down through the feedback endpoint; `advance_rollout` then judges from what was
captured: a good canary is promoted, a bad one rolled back."""

from __future__ import annotations

import json
import random
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
import pytest

from kserve_emulator import GROUP, PLURAL, VERSION, KServeController, emulated_inference_service
from serving_helpers import CLASSES, FEATURES, ModelServerProcess, make_version

from feedback_loop.deploy import core
from feedback_loop.deploy.analysis import AnalysisConfig
from feedback_loop.deploy.targets.kserve import KServeTarget

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

NAME, NS = "cats-vs-dogs", "ml"
# The truth users know: a cat when x . TRUTH[:, 0] beats x . TRUTH[:, 1].
TRUTH = np.array([[1.0, -1.0], [2.0, -2.0], [-1.0, 1.0], [0.5, -0.5]]) * 2


@pytest.fixture
def cluster() -> Iterator[tuple[Any, KServeController]]:
    with emulated_inference_service(NS, NAME) as pair:
        yield pair


class InferenceService:
    """What a client of the InferenceService meets: each request goes to a revision with the
    probability KServe's routes give it (the emulated controller's status), served by our
    model server for that revision's storageUri."""

    def __init__(self, controller: KServeController) -> None:
        self.controller = controller
        self.servers: dict[str, ModelServerProcess] = {}
        self.rng = random.Random(0)

    def predict(self, rows: np.ndarray) -> dict[str, Any]:
        split = self.controller.serving()
        uri = self.rng.choices(list(split), weights=list(split.values()))[0]
        server = self.servers[uri]
        request = urllib.request.Request(f"{server.url}/v1/models/{NAME}:predict", json.dumps({"instances": rows.tolist()}).encode(),
                                         {"Content-Type": "application/json", "x-user-id": f"user-{self.rng.randrange(50)}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return {**json.loads(answer.read()), "server": server.url}

    def feedback(self, server_url: str, prediction_id: str, is_correct: bool, truth: str) -> None:
        body = {"prediction_id": prediction_id, "is_correct": is_correct, **({} if is_correct else {"corrected_label": truth})}
        request = urllib.request.Request(f"{server_url}/v1/feedback", json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 202


def users(service: InferenceService, n: int, seed: int) -> dict[str, list[bool]]:
    """`n` users each ask once and say whether the answer was right; per version, their thumbs."""
    x = np.random.default_rng(seed).uniform(-1, 1, size=(n, FEATURES)).astype(np.float32)
    truth = [CLASSES[int(i)] for i in (x @ TRUTH).argmax(axis=1)]

    def one(i: int) -> tuple[str, bool]:
        answer = service.predict(x[i : i + 1])
        (row,) = answer["predictions"]
        service.feedback(answer["server"], row["prediction_id"], row["label"] == truth[i], truth[i])
        return answer["model_version"], row["label"] == truth[i]

    thumbs: dict[str, list[bool]] = {}
    with ThreadPoolExecutor(8) as pool:
        for version, right in pool.map(one, range(n)):
            thumbs.setdefault(version, []).append(right)
    return thumbs


def captured(dsn: str) -> dict[str, tuple[int, int]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT p.model_version, count(DISTINCT p.id), count(f.id) FROM predictions p "
                        "LEFT JOIN feedback f ON f.prediction_id = p.id GROUP BY 1")
            return {v: (int(p), int(f)) for v, p, f in cur.fetchall()}
    finally:
        conn.close()


def until_captured(dsn: str, expected: dict[str, int], timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while {v: captured(dsn).get(v, (0, 0)) for v in expected} != {v: (n, n) for v, n in expected.items()}:
        assert time.monotonic() < deadline, f"captured {captured(dsn)}, expected {expected} predictions and answers"
        time.sleep(0.2)


def test_users_feedback_through_our_predictor_promotes_a_good_canary_and_rolls_back_a_bad_one(
    cluster: tuple[Any, KServeController], tmp_path: Path, database_url: str
) -> None:
    api, controller = cluster
    rng = np.random.default_rng(3)
    candidates = tmp_path / "candidates"
    make_version(candidates, "v1", weights=TRUTH + rng.normal(0, 1.2, TRUTH.shape))  # right most of the time
    make_version(candidates, "v2", weights=TRUTH)  # always right
    make_version(candidates, "v3", weights=-TRUTH)  # always wrong
    store_uri, service = str(tmp_path / "store"), InferenceService(controller)
    env = {"DATABASE_URL": database_url, "FEEDBACK_HMAC_KEY": "k"}
    judge_config = AnalysisConfig(NAME, NS, min_feedback_samples=50, margin=0.1)

    def deploy(version: str) -> str:
        core.deploy(candidates / version, store_uri, NAME, KServeTarget(NAME, NS, api), datetime.now(timezone.utc), steps=[50, 100], bake_hours=[0])
        controller.reconcile()
        uri = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)["spec"]["predictor"]["model"]["storageUri"]
        # What KServe mounts at /mnt/models, served by our runtime's entry point.
        service.servers[uri] = ModelServerProcess(Path(uri.removeprefix("file://")), NAME, env=env).wait_ready()
        return uri

    def advance() -> list[Any]:
        now = datetime.now(timezone.utc)
        _, moved = core.advance_rollout(KServeTarget(NAME, NS, api), now, judge=core.make_judge(judge_config, now, database_url))
        controller.reconcile()
        return moved

    try:
        v1 = deploy("v1")
        assert controller.serving() == {v1: 100}
        v2 = deploy("v2")
        assert controller.serving() == {v1: 50, v2: 50}
        thumbs = users(service, 240, seed=1)
        until_captured(database_url, {v: len(t) for v, t in thumbs.items()})
        assert set(thumbs) == {"v1", "v2"} and min(len(t) for t in thumbs.values()) >= 50
        assert np.mean(thumbs["v2"]) == 1.0 and np.mean(thumbs["v1"]) < 0.95

        moved = advance()
        assert [(t.action, t.version) for t in moved] == [("promoted", "v2")], [t.reason for t in moved]
        assert controller.serving() == {v2: 100}

        v3 = deploy("v3")
        assert controller.serving() == {v2: 50, v3: 50}
        thumbs = users(service, 240, seed=2)
        until_captured(database_url, {"v3": len(thumbs["v3"])})
        assert np.mean(thumbs["v3"]) == 0.0
        moved = advance()
        assert [(t.action, t.version) for t in moved] == [("rolled_back", "v3")], [t.reason for t in moved]
        assert controller.serving() == {v2: 100}
        assert "worse" in moved[0].reason or "guard" in moved[0].reason
    finally:
        for server in service.servers.values():
            server.stop()
