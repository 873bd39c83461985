"""The predictor: in process (load/predict), then behind KServe's real ModelServer over HTTP,
called with plain JSON (v1 and v2) and with tritonclient[http] (v2, JSON and binary tensors)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving_helpers import CLASSES, FEATURES, ModelServerProcess, make_version

from feedback_loop.serving.model import SavedModelPredictor, SignatureRunner

# TensorFlow's import and a model-server start take tens of seconds on a small machine.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("versions")
    make_version(root, "v1", seed=1)
    make_version(root, "v2-faulty", seed=2, fail_above=5.0)
    return root


@pytest.fixture(scope="module")
def server(versions: Path) -> Iterator[ModelServerProcess]:
    with ModelServerProcess(versions / "v1") as running:
        yield running


def post(url: str, body: Any) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, FEATURES)).astype(np.float32)


# --- in process ----------------------------------------------------------------------------


def test_predictor_answers_v1_with_its_version(versions: Path) -> None:
    predictor = SavedModelPredictor("m", versions / "v1")
    assert predictor.load() and predictor.ready and predictor.version == "v1"
    x = rows(3)
    answer = predictor.predict({"instances": x.tolist()})
    expected = SignatureRunner(versions / "v1")(x)
    assert answer["model_version"] == "v1" and len(answer["predictions"]) == 3
    for row, probabilities in zip(answer["predictions"], expected):
        assert row["label"] == CLASSES[int(probabilities.argmax())]
        assert [row["probabilities"][c] for c in CLASSES] == pytest.approx(probabilities.tolist(), rel=1e-6)


def test_faulty_model_is_a_server_error_not_a_crash(versions: Path) -> None:
    from kserve.errors import InferenceError, InvalidInput

    predictor = SavedModelPredictor("m", versions / "v2-faulty")
    predictor.load()
    assert predictor.predict({"instances": [[1, 1, 1, 1]]})["model_version"] == "v2-faulty"
    with pytest.raises(InferenceError, match="version v2-faulty failed"):
        predictor.predict({"instances": [[9, 1, 1, 1]]})
    with pytest.raises(InvalidInput, match="shape"):
        predictor.predict({"instances": [[1, 2, 3]]})
    with pytest.raises(InvalidInput, match="instances"):
        predictor.predict({"rows": []})


def test_a_directory_without_lineage_is_refused(tmp_path: Path) -> None:
    (tmp_path / "saved_model" / "1").mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "-m", "feedback_loop.cli", "serve", str(tmp_path), "--port", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'lineage.json'} not found: serve a version directory written by train_model"


# --- behind KServe's ModelServer ---------------------------------------------------------------------


def test_server_binds_loopback_and_reports_ready(server: ModelServerProcess) -> None:
    with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=5) as answer:
        assert answer.status == 200
    with urllib.request.urlopen(f"{server.url}/v1/models/{server.name}", timeout=5) as answer:
        assert json.loads(answer.read()) == {"name": server.name, "ready": True}
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True)
    if listening.returncode == 0 and listening.stdout.strip():
        assert [line.split()[3] for line in listening.stdout.splitlines()] == [f"127.0.0.1:{server.port}"]


def test_v1_batch_over_http(server: ModelServerProcess, versions: Path) -> None:
    x = rows(32, seed=3)
    status, headers, body = post(f"{server.url}/v1/models/{server.name}:predict", {"instances": x.tolist()})
    assert status == 200, body
    assert body["model_version"] == "v1" and headers["x-model-version"] == "v1"
    expected = SignatureRunner(versions / "v1")(x)
    got = np.array([[p["probabilities"][c] for c in CLASSES] for p in body["predictions"]])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    status, _, body = post(f"{server.url}/v1/models/{server.name}:predict", {"instances": [[1, 2, 3]]})
    assert status == 400 and "shape [4]" in body["error"]


def test_v1_requests_the_direct_route_leaves_to_kserve_are_answered_as_kserve_answers(server: ModelServerProcess) -> None:
    """Plain JSON goes straight to the model (serving.http.direct_v1_predict); a CloudEvent,
    another model's name and bad JSON take KServe's own endpoint, or meet the same errors."""
    url = f"{server.url}/v1/models/{server.name}:predict"
    x = rows(2, seed=6)
    _, _, direct = post(url, {"instances": x.tolist()})
    event = {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "tests", "ce-type": "predict", "Content-Type": "application/json"}
    request = urllib.request.Request(url, json.dumps({"instances": x.tolist()}).encode(), event)
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200 and answer.headers["ce-specversion"] == "1.0"  # KServe answers a CloudEvent in kind
        via_kserve = json.loads(answer.read())
    assert via_kserve["model_version"] == direct["model_version"] == "v1"
    np.testing.assert_allclose([p["probabilities"]["cat"] for p in via_kserve["predictions"]],
                               [p["probabilities"]["cat"] for p in direct["predictions"]], rtol=1e-6)
    status, _, body = post(f"{server.url}/v1/models/other:predict", {"instances": x.tolist()})
    assert status == 404 and "other" in body["error"]
    request = urllib.request.Request(url, b"{not json", {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400 and "Unrecognized request format" in json.loads(refused.value.read())["error"]


def test_v2_over_http_names_the_version(server: ModelServerProcess) -> None:
    x = rows(2, seed=4)
    request = {"id": "r-1", "inputs": [{"name": "features", "shape": [2, FEATURES], "datatype": "FP32", "data": x.ravel().tolist()}]}
    status, _, body = post(f"{server.url}/v2/models/{server.name}/infer", request)
    assert status == 200, body
    assert (body["model_name"], body["model_version"], body["id"]) == (server.name, "v1", "r-1")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, len(CLASSES)] and outputs["label"]["shape"] == [2]


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_v2(server: ModelServerProcess, versions: Path, binary: bool) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_ready() and client.is_model_ready(server.name)
        x = rows(32, seed=5)
        tensor = triton.InferInput("features", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary), triton.InferRequestedOutput("label", binary_data=False)]
        # Without binary tensors tritonclient sends no Content-Type, and KServe reads such a body as binary.
        headers = None if binary else {"Content-Type": "application/json"}
        result = client.infer(server.name, [tensor], outputs=outputs, headers=headers)
        response = result.get_response()
        assert response["model_version"] == "v1"
        np.testing.assert_allclose(result.as_numpy("probabilities"), SignatureRunner(versions / "v1")(x), rtol=1e-5)
        labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()]
        assert set(labels) <= set(CLASSES) and len(labels) == 32
        # The outputs asked for, each in the form asked for, and the prediction ids, always.
        sent = {o["name"]: "binary_data_size" in (o.get("parameters") or {}) for o in response["outputs"]}
        assert sent == {"probabilities": binary, "label": False, "prediction_id": False}
        assert len(set(result.as_numpy("prediction_id").tolist())) == 32
    finally:
        client.close()


def binary_v2(x: np.ndarray, size: int | None = None) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes if size is None else size}}]}).encode()
    return header + x.tobytes(), {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}


def post_bytes(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_binary_v2_goes_straight_to_the_model_and_says_what_does_not_add_up(server: ModelServerProcess, versions: Path) -> None:
    x = rows(32, seed=9)
    status, answer = post_bytes(f"{server.url}/v2/models/{server.name}/infer", *binary_v2(x))
    assert status == 200 and answer["model_version"] == "v1", answer
    outputs = {o["name"]: o for o in answer["outputs"]}
    np.testing.assert_allclose(np.reshape(outputs["probabilities"]["data"], (32, len(CLASSES))), SignatureRunner(versions / "v1")(x), rtol=1e-5)
    assert len(set(outputs["prediction_id"]["data"])) == 32
    # Sizes that do not add up are named (KServe's own route leaves them to numpy's reshape error).
    status, answer = post_bytes(f"{server.url}/v2/models/{server.name}/infer", *binary_v2(x, size=x.nbytes - 4))
    assert status == 400 and "binary_data_size is" in answer["error"] and "\n" not in answer["error"], answer
    # NaN in the bytes: refused with its row (the model would answer NaN).
    x[5, 2] = np.nan
    status, answer = post_bytes(f"{server.url}/v2/models/{server.name}/infer", *binary_v2(x))
    assert status == 400 and "float32 cannot hold" in answer["error"] and "in row 5" in answer["error"], answer
    # Another model's name: KServe's route, unchanged.
    status, answer = post_bytes(f"{server.url}/v2/models/other/infer", *binary_v2(x))
    assert status == 404 and "other" in answer["error"], answer


def test_metrics_count_requests_per_version(server: ModelServerProcess) -> None:
    def count(code: str) -> float:
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        prefix = f'feedback_loop_requests_total{{code="{code}",model_name="{server.name}",model_version="v1"}} '
        return next((float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)), 0.0)

    ok, bad = count("2xx"), count("4xx")
    for _ in range(3):
        post(f"{server.url}/v1/models/{server.name}:predict", {"instances": rows(1).tolist()})
    post(f"{server.url}/v1/models/{server.name}:predict", {"instances": [[1]]})
    assert (count("2xx") - ok, count("4xx") - bad) == (3, 1)


def test_server_stops_on_sigterm(versions: Path) -> None:
    process = ModelServerProcess(versions / "v1").wait_ready()
    process.process.terminate()
    assert process.process.wait(timeout=30) is not None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{process.url}/v2/health/ready", timeout=2)


# --- capture, feedback, limits: a server writing to a real PostgreSQL -----------------------------


@pytest.fixture(scope="module")
def capture_dsn(postgres_server: str) -> Iterator[str]:
    from conftest import migrated_database

    with migrated_database(postgres_server) as dsn:
        yield dsn


@pytest.fixture(scope="module")
def capturing(versions: Path, capture_dsn: str) -> Iterator[ModelServerProcess]:
    env = {"DATABASE_URL": capture_dsn, "FEEDBACK_HMAC_KEY": "test-key"}
    with ModelServerProcess(versions / "v1", args=["--max-rows", "256", "--max-body-bytes", str(1 << 20)], env=env) as running:
        yield running


def query(dsn: str, statement: str, params: tuple = ()) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall()
    finally:
        conn.close()


def until(condition: Any, timeout: float = 15.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def metric(server: ModelServerProcess, prefix: str) -> float:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_every_prediction_is_captured_with_its_version_and_id(capturing: ModelServerProcess, capture_dsn: str) -> None:
    import hmac

    x = rows(5, seed=7)
    request = urllib.request.Request(
        f"{capturing.url}/v1/models/{capturing.name}:predict", json.dumps({"instances": x.tolist()}).encode(),
        {"Content-Type": "application/json", "x-user-id": "alice@example.com", "x-consent": "false"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        body = json.loads(answer.read())
    ids = [p["prediction_id"] for p in body["predictions"]]
    assert body["model_version"] == "v1" and len(set(ids)) == 5
    until(lambda: query(capture_dsn, "SELECT count(*) FROM predictions WHERE id = ANY(%s)", (ids,))[0][0] == 5)
    stored = query(capture_dsn, "SELECT id, model_name, model_version, predicted_label, confidence, user_id, consent, features, latency_ms "
                                "FROM predictions WHERE id = ANY(%s) ORDER BY id", (ids,))
    digest = hmac.digest(b"test-key", b"alice@example.com", "sha256").hex()
    for row, (pid, answer_row) in zip(stored, sorted(zip(ids, body["predictions"]))):
        assert row[:4] == (pid, capturing.name, "v1", answer_row["label"])
        assert row[4] == pytest.approx(max(answer_row["probabilities"].values()), rel=1e-5)
        assert row[5] == digest and row[6] is False and set(row[7]) == {"f0", "f1", "f2", "f3"} and row[8] > 0

    # v2 answers carry the ids as a tensor, and are captured too.
    request_v2 = {"inputs": [{"name": "features", "shape": [2, FEATURES], "datatype": "FP32", "data": rows(2, seed=8).ravel().tolist()}]}
    status, _, answer_v2 = post(f"{capturing.url}/v2/models/{capturing.name}/infer", request_v2)
    (v2_ids,) = [o["data"] for o in answer_v2["outputs"] if o["name"] == "prediction_id"]
    assert status == 200 and answer_v2["model_version"] == "v1" and len(set(v2_ids)) == 2
    # Time-ordered: a later request's ids sort after an earlier one's (the primary key appends).
    assert min(v2_ids) > max(ids) and all(len(pid.split("-")[0]) == 32 for pid in ids + v2_ids)
    until(lambda: query(capture_dsn, "SELECT count(*) FROM predictions WHERE id = ANY(%s)", (v2_ids,))[0][0] == 2)

    # The feedback endpoint writes the answer; an unknown id is kept (the extraction counts it as an orphan).
    status, _, accepted = post(f"{capturing.url}/v1/feedback", {"prediction_id": ids[0], "is_correct": False, "corrected_label": "dog"})
    assert status == 202 and accepted == {"prediction_id": ids[0], "accepted": True}
    assert post(f"{capturing.url}/v1/feedback", {"prediction_id": "nobody-0", "is_correct": True})[0] == 202
    assert post(f"{capturing.url}/v1/feedback", {"prediction_id": ids[0]})[0] == 400
    until(lambda: len(query(capture_dsn, "SELECT 1 FROM feedback")) == 2)
    assert query(capture_dsn, "SELECT prediction_id, is_correct, corrected_label FROM feedback ORDER BY id") == [
        (ids[0], False, "dog"), ("nobody-0", True, None)]

    assert metric(capturing, 'feedback_loop_captured_total{kind="predictions"') >= 7
    assert metric(capturing, 'feedback_loop_captured_total{kind="feedback"') == 2
    assert metric(capturing, "feedback_loop_capture_queue_rows{") == 0
    assert metric(capturing, "feedback_loop_capture_dropped_total{") == 0
    assert metric(capturing, 'feedback_loop_request_seconds_count{model_name="cats-vs-dogs",model_version="v1"}') >= 2


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def test_a_hostile_client_meets_limits_and_short_errors(capturing: ModelServerProcess) -> None:
    import http.client

    url = f"{capturing.url}/v1/models/{capturing.name}:predict"
    before = rss_kib(capturing.process.pid)
    huge = b'{"instances": [' + b"[0.1, 0.2, 0.3, 0.4]," * 2_500_000 + b"[0,0,0,0]]}"  # 50 MB
    conn = http.client.HTTPConnection("127.0.0.1", capturing.port, timeout=30)
    try:
        conn.request("POST", url.split(str(capturing.port), 1)[1], huge, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        status, error = answer.status, json.loads(answer.read())["error"]
    except (BrokenPipeError, ConnectionResetError):  # the server may close before the whole body is sent
        status, error = 413, "over this server's limit (connection closed)"
    finally:
        conn.close()
    assert status == 413 and "over this server's limit" in error
    assert rss_kib(capturing.process.pid) - before < 50 * 1024, "the refused body was read into memory"

    status, _, body = post(url, {"instances": rows(300).tolist()})
    assert status == 413 and "300 rows in one request, over this server's limit of 256" in body["error"]

    garbage = "[" * 200_000
    request = urllib.request.Request(url, f'{{"instances": {garbage}'.encode(), {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    message = json.loads(refused.value.read())["error"]
    assert refused.value.code == 400 and len(message) < 400
    status, _, body = post(url, {"instances": [["x" * 100_000] * 4]})
    assert status == 400 and len(body["error"]) < 400
    # A number float32 cannot hold, and an integer over 64 bits (simdjson refuses it; orjson reads it).
    status, _, body = post(url, {"instances": [[10**50, 2, 3, 4]]})
    assert status == 400 and "float32 cannot hold" in body["error"] and "row 0" in body["error"]
    assert post(url, {"instances": [[10**400, 2, 3, 4]]})[0] == 400
    log = capturing.output()
    assert "Traceback" not in log and max(len(line) for line in log.splitlines()) < 1000
