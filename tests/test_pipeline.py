"""The compiled pipeline: committed, fresh, gated in the graph, secrets and GPU where they belong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from feedback_loop.cli import main, pipeline_arguments
from feedback_loop.settings import load

COMMITTED = Path(__file__).resolve().parents[1] / "pipelines" / "retraining_pipeline.yaml"


def compiled(tmp_path: Path, *args: str) -> str:
    out = tmp_path / "pipeline.yaml"
    result = CliRunner().invoke(main, ["compile", "--output", str(out), *args])
    assert result.exit_code == 0, result.output
    return out.read_text()


def test_committed_yaml_is_not_stale(tmp_path: Path) -> None:
    assert compiled(tmp_path) == COMMITTED.read_text(), "run `./build.sh compile` and commit pipelines/retraining_pipeline.yaml"


def test_registry_is_a_compile_option_and_tags_are_pinned(tmp_path: Path) -> None:
    text = compiled(tmp_path, "--registry", "europe-docker.pkg.dev/acme/ml")
    images = {line.split("image:")[1].strip() for line in text.splitlines() if "image:" in line}
    assert images and all(i.startswith("europe-docker.pkg.dev/acme/ml/") for i in images)
    assert not any(i.endswith(":latest") for i in images)


def tasks_of(pipeline: dict, component: str) -> dict[str, dict]:
    dag = pipeline["root"]["dag"] if component == "root" else pipeline["components"][component]["dag"]
    return dag["tasks"]


def group(pipeline: dict, parent: str, name: str) -> tuple[dict, str]:
    """A named `dsl.If` / `dsl.ExitHandler` inside `parent`: its task and its component."""
    (task,) = [t for t in tasks_of(pipeline, parent).values() if t["taskInfo"]["name"] == name]
    return task, task["componentRef"]["name"]


def test_graph_gates_gpu_secrets_and_caching() -> None:
    spec = yaml.safe_load_all(COMMITTED.read_text())
    pipeline, platform = next(spec), next(spec)
    # Everything runs inside the exit handler; the notification runs last, whatever happened.
    root = tasks_of(pipeline, "root")
    assert root["notify-outcome"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    _, body = group(pipeline, "root", "notify")
    dag = tasks_of(pipeline, body)
    # Gates live in the graph: retrain → (prepare, train, evaluate) → blessed → publish → deploy.
    retrain, retrain_body = group(pipeline, body, "retrain")
    assert retrain["triggerPolicy"]["condition"].endswith("decide-retrain-Output'] == true")
    assert {"prepare-dataset", "train-model", "evaluate-model"} <= set(tasks_of(pipeline, retrain_body))
    blessed, blessed_body = group(pipeline, retrain_body, "blessed")
    assert blessed["triggerPolicy"]["condition"].endswith("evaluate-model-Output'] == true")
    publish, publish_body = group(pipeline, blessed_body, "publish")
    assert publish["triggerPolicy"]["condition"].endswith("dry_run'] == false")
    assert "deploy-canary" in tasks_of(pipeline, publish_body)
    cleanup, cleanup_body = group(pipeline, body, "cleanup")
    assert cleanup["triggerPolicy"]["condition"].endswith("cleanup'] == true")
    # The training task asks for a GPU.
    train = pipeline["deploymentSpec"]["executors"]["exec-train-model"]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    # Database credentials come from a Kubernetes Secret, as env, on each task that needs them.
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for task in ("exec-extract-feedback", "exec-advance-rollout", "exec-decide-retrain", "exec-deploy-canary", "exec-notify-outcome"):
        secrets = {s["secretName"]: s for s in executors[task]["secretAsEnv"]}
        db = secrets["feedback-loop-db"]
        assert db["keyToEnv"][0]["envVar"] == "DATABASE_URL"
    # Only the extraction gets the HMAC key; the webhook URL is optional (clusters without it still run).
    hmac_holders = [t for t, e in executors.items() for s in e.get("secretAsEnv", []) for k in s["keyToEnv"] if k["envVar"] == "FEEDBACK_HMAC_KEY"]
    assert hmac_holders == ["exec-extract-feedback"]
    (webhook,) = [s for s in executors["exec-notify-outcome"]["secretAsEnv"] if s["secretName"] == "feedback-loop-notify"]
    assert webhook["optional"] is True
    # The training task gets no secret; its node selector and tolerations are run-time parameters.
    assert "secretAsEnv" not in executors["exec-train-model"]
    assert executors["exec-train-model"]["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("node_selector")
    # Results that depend on the clock are never cached.
    for task in ("advance-rollout", "extract-feedback", "decide-retrain"):
        assert dag[task]["cachingOptions"] == {}, task
    assert tasks_of(pipeline, publish_body)["deploy-canary"]["cachingOptions"] == {}
    assert root["notify-outcome"]["cachingOptions"] == {}


def test_pipeline_parameters_are_the_settings() -> None:
    arguments = pipeline_arguments(load(model_store_uri="gs://bucket/models", days_back=7))
    assert arguments["days_back"] == 7 and arguments["model_store_uri"] == "gs://bucket/models"
    spec = yaml.safe_load(COMMITTED.read_text().split("\n---\n")[0])
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == set(arguments)


def test_compiling_does_not_read_the_environment(tmp_path: Path) -> None:
    env = {"RETRAIN_DAYS_BACK": "3", "PATH": "/usr/bin:/bin"}
    out = tmp_path / "env.yaml"
    subprocess.run([sys.executable, "-m", "feedback_loop.cli", "compile", "--output", str(out)], env=env, check=True, capture_output=True)
    assert out.read_text() == COMMITTED.read_text()
