"""The built images, run: each component's imports in its own image, `pip check`, user 1000
with a writable home and temp dir, the serve image answering v1 and v2, and the demo with
every task in its image (kfp.local.DockerRunner on Docker, or on Podman's Docker API).

They need a container engine and the images (`./build.sh images`); without them they skip,
saying which is missing. Everything here is real: no part is faked.
"""

from __future__ import annotations

import ast
import contextlib
import json
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from feedback_loop import containers, local
from feedback_loop.errors import FeedbackLoopError
from feedback_loop.images import image

GROUPS = ("data", "train", "deploy", "serve")
# What an image must not hold: the other groups' heavy stacks (alibi-detect breaks when TensorFlow
# is importable without tensorflow-probability; kserve pins fight TensorFlow's).
ABSENT = {
    "data": ["tensorflow", "kserve"],
    "train": ["kserve", "alibi_detect"],
    "deploy": ["tensorflow", "alibi_detect"],
    "serve": ["alibi_detect"],
}
PIPELINE_TEXT = local.PIPELINE_YAML.read_text()

# Runs inside an image: who am I, can I write home and temp, is pip content, do the imports resolve.
CHECK = r"""
import importlib.util, json, os, subprocess, sys, tempfile
imports, absent = json.loads(sys.argv[1])
out = {"uid": os.getuid(), "home": os.environ.get("HOME"), "failed": {}, "present": []}
with open(os.path.join(os.environ["HOME"], ".probe"), "w") as f:
    f.write("ok")
with tempfile.NamedTemporaryFile() as f:
    out["tmp"] = f.name
pip = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
out["pip_check"] = (pip.returncode, pip.stdout.strip())
for statement in imports:
    try:
        exec(statement, {})
    except Exception as err:
        out["failed"][statement] = f"{type(err).__name__}: {err}"
out["present"] = [m for m in absent if importlib.util.find_spec(m) is not None]
print(json.dumps(out))
"""


def component_imports(pipeline_yaml: str) -> dict[str, list[str]]:
    """Image -> the import statements of the component bodies that run in it."""
    spec = next(iter(yaml.safe_load_all(pipeline_yaml)))
    found: dict[str, list[str]] = defaultdict(list)
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        tree = ast.parse(container["command"][-1])
        function = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
        for node in ast.walk(function):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found[container["image"]].append(ast.unparse(node))
    return {k: sorted(set(v)) for k, v in found.items()}


@pytest.fixture(scope="module")
def engine() -> Iterator[str]:
    try:
        with containers.engine() as address:
            yield address
    except FeedbackLoopError as err:
        pytest.skip(f"no container engine: {err}")


@pytest.fixture(scope="module")
def client(engine: str) -> Iterator[object]:
    import docker

    client = docker.DockerClient(base_url=engine)
    yield client
    client.close()


def require_images(engine: str, *groups: str) -> None:
    missing = containers.missing_images(engine, {image(g) for g in groups})
    if missing:
        pytest.skip(f"images not built ({', '.join(missing)}): run ./build.sh images")


def test_every_task_names_one_of_our_images() -> None:
    assert set(containers.images(PIPELINE_TEXT).values()) <= {image(g) for g in GROUPS}
    assert set(component_imports(PIPELINE_TEXT)) >= {image(g) for g in ("data", "train", "deploy")}


def test_secrets_reach_only_the_tasks_that_map_them() -> None:
    secrets = {"feedback-loop-db": {"database-url": "postgresql://u:p@127.0.0.1:1/db", "hmac-key": "k" * 64}}
    spec = next(iter(yaml.safe_load_all(containers.with_secrets(PIPELINE_TEXT, secrets))))
    env = {
        name.removeprefix("exec-"): {e["name"]: e["value"] for e in ex["container"].get("env", [])}
        for name, ex in spec["deploymentSpec"]["executors"].items()
    }
    assert env["extract-feedback"] == {"DATABASE_URL": secrets["feedback-loop-db"]["database-url"], "FEEDBACK_HMAC_KEY": "k" * 64}
    assert "DATABASE_URL" in env["decide-retrain"] and "FEEDBACK_HMAC_KEY" not in env["decide-retrain"]
    for task in ("train-model", "detect-drift", "prepare-dataset", "evaluate-model"):
        assert not {"DATABASE_URL", "FEEDBACK_HMAC_KEY"} & env[task].keys(), task
    assert "NOTIFY_WEBHOOK_URL" not in env["notify-outcome"]  # optional Secret, absent here
    with pytest.raises(FeedbackLoopError, match="hmac-key"):
        containers.with_secrets(PIPELINE_TEXT, {"feedback-loop-db": {"database-url": "x"}})


def test_a_socket_dsn_is_relayed_over_tcp(database_url: str) -> None:
    import psycopg2
    from psycopg2.extensions import parse_dsn

    with containers.reachable_dsn(database_url) as relayed:
        assert parse_dsn(relayed)["host"] == "127.0.0.1"
        with psycopg2.connect(relayed) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone()[0] == parse_dsn(database_url)["dbname"]
    tcp = "postgresql://u@db.example:5432/feedback"
    with containers.reachable_dsn(tcp) as same:
        assert same == tcp


@pytest.mark.parametrize("group", GROUPS)
def test_image_runs_its_components_as_user_1000(group: str, engine: str, client) -> None:
    require_images(engine, group)
    imports = component_imports(PIPELINE_TEXT).get(image(group), [])
    if group == "serve":
        imports = ["import feedback_loop.serving.__main__", "import feedback_loop.serving.capture", "import tensorflow", "import psycopg2"]
    output = client.containers.run(
        image(group), ["-c", CHECK, json.dumps([imports, ABSENT[group]])], entrypoint=["python"], remove=True, network_mode="host"
    )
    result = json.loads(output.decode().strip().splitlines()[-1])
    assert result["uid"] == 1000 and result["home"] == "/home/loop"
    assert result["tmp"].startswith("/tmp/")
    assert result["pip_check"][0] == 0, result["pip_check"][1]
    assert result["failed"] == {}, f"{group}: imports that fail in its image: {result['failed']}"
    assert result["present"] == [], f"{group} holds another group's stack: {result['present']}"


@pytest.mark.slow
def test_serve_image_answers_v1_and_v2(engine: str, client, tmp_path: Path, database_url: str) -> None:
    from serving_helpers import make_version, free_port

    require_images(engine, "serve")
    version = make_version(tmp_path, "v1")
    containers.open_to_image_user(version)
    port = free_port()
    stack = contextlib.ExitStack()
    container = client.containers.run(
        image("serve"), ["--model_name", "cats-vs-dogs", "--http_port", str(port), "--host", "127.0.0.1"],
        detach=True, network_mode="host", environment={"DATABASE_URL": stack.enter_context(containers.reachable_dsn(database_url))},
        volumes={str(version): {"bind": "/mnt/models", "mode": "ro"}},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(f"{base}/v2/models/cats-vs-dogs/ready", container)
        v1 = _post(f"{base}/v1/models/cats-vs-dogs:predict", {"instances": [[0.1, 0.2, 0.3, 0.4]]})
        assert len(v1["predictions"]) == 1
        v2 = _post(f"{base}/v2/models/cats-vs-dogs/infer", {
            "inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4, 1, 0, 0, 0]}]
        })
        assert v2["model_name"] == "cats-vs-dogs" and v2["outputs"]
        assert _captured(database_url) >= 1, container.logs().decode()[-3000:]
        # The rows were built in the helper process (spawned in the image, as user 1000).
        assert "building rows in the server's process" not in container.logs().decode()
    finally:
        container.stop(timeout=10)
        container.remove()
        stack.close()


@pytest.mark.slow
def test_demo_in_containers_ends_as_the_subprocess_demo(engine: str, tmp_path: Path, database_url: str) -> None:
    import os
    import subprocess
    import sys

    require_images(engine, *GROUPS)
    env = {**os.environ, "DATABASE_URL": database_url, "TF_CPP_MIN_LOG_LEVEL": "2", "DOCKER_HOST": engine}
    cli = [sys.executable, "-m", "feedback_loop.cli", "demo", "--containers", "--workdir", str(tmp_path)]
    result = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=1500)
    logs = "\n".join(p.read_text()[-4000:] for p in (tmp_path / "logs").glob("*.log"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + logs
    first = json.loads((tmp_path / "last-run.json").read_text())
    # What test_loop asserts of the subprocess demo.
    assert first["status"] == "succeeded" and first["drift"]["is_drift"] is True
    assert first["decision"]["retrain"] is True
    assert 0.55 < first["feedback"]["satisfaction_rate"] < 0.8
    assert first["evaluation"]["blessed"] is True
    assert first["deployment"]["status"] == "canary_started" and first["deployment"]["traffic_percent"] == 10
    assert (tmp_path / "model-store" / "cats-vs-dogs" / first["deployment"]["version"] / "_COMPLETE").exists()
    key = (tmp_path / "hmac-key").read_text().strip()
    assert key not in result.stdout + result.stderr + logs  # the Secret's value is never logged


def _wait_ready(url: str, container, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        if container.status == "exited":
            raise AssertionError(f"the serve container exited:\n{container.logs().decode()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"not ready after {timeout} s:\n{container.logs().decode()[-3000:]}")


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def _captured(dsn: str, timeout: float = 20) -> int:
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM predictions")
            count = cur.fetchone()[0]
        if count or time.monotonic() > deadline:
            return count
        time.sleep(0.5)
