"""train_model with workers > 1: the TrainJob launcher against the emulated Kubernetes API.

The Kubernetes API is kmock's emulator (kserve_emulator) validating every write against
Kubeflow Trainer's real TrainJob CRD; Trainer and JobSet are played by `TrainerController`
(trainer_emulator), which runs the nodes as real processes on 127.0.0.1: no cluster can run
here, everything else (launcher, node entry point, TensorFlow's collectives, the model
store) is the real code.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

import trainer_crds
from feedback_loop import dataset
from feedback_loop.layout import COMPLETE_MARKER, LINEAGE_FILE
from feedback_loop.train import launcher, trainjob
from feedback_loop.train.trainjob import GROUP, PLURAL, VERSION
from test_train_multiworker import tabular_rows
from trainer_emulator import TrainerController, trainer_api

NS = "team-a"
PARAMS = {"epochs": 2, "batch_size": 32, "learning_rate": 3e-3, "seed": 1, "family": "tabular_classifier", "strategy": "scratch"}


def data(tmp_path: Path, n: int = 900, drop: tuple[str, ...] = ()) -> tuple[Path, Path]:
    rows = tabular_rows(n, seed=2).drop(columns=list(drop))
    cut = n * 2 // 3
    return (dataset.write_parquet(rows.iloc[:cut], tmp_path / "train.parquet"),
            dataset.write_parquet(rows.iloc[cut:], tmp_path / "test.parquet"))


def launch(api: object, tmp_path: Path, train: Path, test: Path, out: str = "model", version: str = "v-1",
           run_name: str = "run-1") -> launcher.Trained:
    return launcher.train_on_cluster(
        train_path=train, test_path=test, out_dir=tmp_path / out, params=PARAMS, model_name="m", version=version,
        model_store_uri=str(tmp_path / "store"), namespace=NS, run_name=run_name, workers=2, image="local/train:test",
        api=api, poll_seconds=0.2,
    )


def get(api: object, name: str) -> dict | None:
    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)  # type: ignore[attr-defined]
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def test_the_trainjob_validates_against_the_crd_and_carries_every_node_setting() -> None:
    validator = trainer_crds.validator("trainjobs")
    if validator is None:
        pytest.skip(f"Trainer CRDs not found at {trainer_crds.CRD_DIR}")
    request = trainjob.NodeRequest("gs://b/store/.trainjobs/x", "cats-vs-dogs", "v1", {"epochs": 1}, "v0", "gs://b/store/m/v0", 0.25)
    toleration = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
    name = trainjob.job_name("feedback-loop-retraining-abcde", "cats-vs-dogs")
    job = trainjob.trainjob(name, NS, request, nodes=3, image="r/train:0.1.0", accelerator_type="nvidia.com/gpu",
                            accelerator_count=2, node_selector={"pool": "gpu"}, tolerations=[toleration])
    validator.validate(job)
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 3 and trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"name": "FEEDBACK_LOOP_NODES", "value": "3"} in trainer["env"]
    (patch,) = job["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    assert node["template"]["spec"]["template"]["spec"] == {"nodeSelector": {"pool": "gpu"}, "tolerations": [toleration]}
    assert trainjob.NodeRequest.parse(trainer["args"]) == request  # what every node is told
    # The run names its job: a retried task finds it; JobSet's pod hostnames stay under 63 characters.
    assert name == trainjob.job_name("feedback-loop-retraining-abcde", "cats-vs-dogs") != trainjob.job_name("other-run", "cats-vs-dogs")
    assert len(f"{name}-node-0-63") <= 63 and name[0].isalpha()
    wrong = copy.deepcopy(job)
    wrong["spec"]["trainer"]["nodes"] = 3  # not a TrainJob field: the API server refuses it
    assert not validator.is_valid(wrong)


def test_without_node_settings_there_is_no_runtime_patch() -> None:
    job = trainjob.trainjob("train-m-1", NS, trainjob.NodeRequest("file:///s/.trainjobs/j", "m", "v1", {}), nodes=2, image="i")
    assert "runtimePatches" not in job["spec"] and "nvidia.com/gpu" not in str(job)


@pytest.mark.slow
def test_a_completed_trainjob_gives_the_task_the_chiefs_version_and_a_retry_reads_it_again(tmp_path: Path) -> None:
    train, test = data(tmp_path)
    with trainer_api(trainer_crds.validator("trainjobs")) as (_, api), TrainerController(api, NS, tmp_path / "nodes") as trainer:
        result = launch(api, tmp_path, train, test)
        name = trainjob.job_name("run-1", "m")
        assert result.version == "v-1" and len(result.lineage["workers"]) == 2 and result.epochs_run >= 1
        assert (tmp_path / "model" / LINEAGE_FILE).exists() and not (tmp_path / "model" / COMPLETE_MARKER).exists()
        assert "val_accuracy" in result.history
        assert trainjob.condition(get(api, name), "Complete") is not None  # kept: a retry of the task reads it

        again = launch(api, tmp_path, train, test, out="model-retry", version="v-2")
        assert again.version == "v-1" and trainer.created == [name]  # no second job, no second training


@pytest.mark.slow
def test_a_failed_node_fails_the_task_with_its_reason_in_one_line_and_deletes_the_job(tmp_path: Path) -> None:
    train, test = data(tmp_path, drop=("label",))  # every node refuses these rows, in its own words
    with trainer_api(trainer_crds.validator("trainjobs")) as (_, api), TrainerController(api, NS, tmp_path / "nodes"):
        with pytest.raises(launcher.TrainingFailed) as failure:
            launch(api, tmp_path, train, test)
        message = str(failure.value)
        assert "\n" not in message
        assert message.startswith(f"TrainJob {NS}/{trainjob.job_name('run-1', 'm')} failed: node ")
        assert "has no 'label' column" in message
        assert get(api, trainjob.job_name("run-1", "m")) is None  # deleted: no node trains on for nothing
        assert not (tmp_path / "model" / LINEAGE_FILE).exists()


def test_a_cancelled_task_deletes_its_trainjob(tmp_path: Path) -> None:
    train, test = data(tmp_path, n=60)
    with trainer_api(trainer_crds.validator("trainjobs")) as (server, api), TrainerController(api, NS, tmp_path, mode="hold"):
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: emulator\n"
            f"clusters: [{{name: emulator, cluster: {{server: '{server.url}'}}}}]\n"
            "users: [{name: emulator, user: {}}]\n"
            f"contexts: [{{name: emulator, context: {{cluster: emulator, user: emulator, namespace: {NS}}}}}]\n"
        )
        script = (
            "import sys; from pathlib import Path; from feedback_loop import logs; logs.setup(); "
            "from feedback_loop.train import launcher; "
            "launcher.train_on_cluster(train_path=Path(sys.argv[1]), test_path=Path(sys.argv[2]), out_dir=Path(sys.argv[3]), "
            f"params={PARAMS!r}, model_name='m', version='v-1', model_store_uri=sys.argv[4], namespace={NS!r}, "
            "run_name='run-1', workers=2, image='local/train:test', poll_seconds=0.2)"
        )
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        task = subprocess.Popen([sys.executable, "-c", script, str(train), str(test), str(tmp_path / "model"), str(tmp_path / "store")],
                                env=env, stderr=subprocess.PIPE, text=True)
        name = trainjob.job_name("run-1", "m")
        deadline = time.monotonic() + 120
        while get(api, name) is None:
            assert task.poll() is None and time.monotonic() < deadline, task.stderr.read() if task.poll() is not None else "no TrainJob"
            time.sleep(0.2)
        task.send_signal(signal.SIGTERM)  # KFP cancelling the run
        _, stderr = task.communicate(timeout=60)
        assert task.returncode != 0
        assert stderr.strip().splitlines()[-1] == (
            f"error: the task was stopped (signal 15) while TrainJob {NS}/{name} ran; the TrainJob is deleted"
        )
        assert get(api, name) is None


def test_workers_above_one_without_a_cluster_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kfp import dsl

    from feedback_loop.train.component import train_model

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    train, test = data(tmp_path, n=60)
    with pytest.raises(launcher.TrainingFailed, match=r"^no Kubernetes credentials .*: workers > 1 runs a TrainJob"):
        train_model.python_func(
            train=dsl.Dataset(uri=str(train)), test=dsl.Dataset(uri=str(test)), drift_metrics=dsl.Metrics(uri=str(tmp_path / "d")),
            model=dsl.Model(uri=str(tmp_path / "model")), metrics=dsl.Metrics(uri=str(tmp_path / "m")), model_name="m",
            workers=2, model_store_uri=str(tmp_path / "store"),
        )
    assert not (tmp_path / "store").exists()  # nothing staged before the cluster answered
