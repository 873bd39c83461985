"""A multi-node training run as Kubeflow Trainer sees it: the `TrainJob`, its name, and what
its nodes read and write in the model store (no Kubernetes client, no TensorFlow here).

    <store>/.trainjobs/<job>/
        input/train.parquet, input/test.parquet   staged by the launcher before it creates the job
        version/                                  the chief's export, _COMPLETE written last
        result.json                               the kept epoch's metrics, epochs run (chief)
        failures/node-<i>.txt                     one line per node that failed, in its own words

Nodes read the store, not the pipeline's artifact store: they run outside KFP, and the
model store is the one place every image can read and write (file:// or gs://).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pathlib import Path

from feedback_loop.storage import join, write_bytes
from feedback_loop.train.cluster import NODES, REPLICATED_JOB

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
RUNTIME = "feedback-loop-tensorflow"  # manifests/training-runtime.yaml
MANAGER = "feedback-loop"  # owner of our runtime patch
JOBS_DIR = ".trainjobs"
TRAIN_FILE, TEST_FILE = "input/train.parquet", "input/test.parquet"
VERSION_DIR, RESULT_FILE, FAILURES_DIR = "version", "result.json", "failures"
RUN_LABEL = "feedback-loop/run"


def job_name(run_name: str, model_name: str) -> str:
    """The TrainJob of a run: the same run (a retried task) always gets the same name.

    An RFC 1035 label short enough for JobSet's pod hostnames (`<name>-node-0-<i>`).
    """
    digest = hashlib.sha256(run_name.encode()).hexdigest()[:10]
    return f"train-{model_name[:24].rstrip('-')}-{digest}"


def job_uri(model_store_uri: str, name: str) -> str:
    return join(model_store_uri, JOBS_DIR, name)


def failure_uri(job: str, index: int) -> str:
    return join(job, FAILURES_DIR, f"node-{index}.txt")


def stage_inputs(job: str, train_path: Path, test_path: Path) -> None:
    """Copies the rows every node reads into the job's folder of the model store."""
    write_bytes(join(job, TRAIN_FILE), Path(train_path).read_bytes())
    write_bytes(join(job, TEST_FILE), Path(test_path).read_bytes())


@dataclass(frozen=True)
class NodeRequest:
    """What every node is asked to do: the node entry point's arguments (`python -m feedback_loop.train.node`)."""

    job_uri: str
    model_name: str
    version: str
    params: dict[str, Any]  # TrainParams as a dict
    parent_version: str = ""
    production_model_uri: str = ""
    drift_share: float | None = None

    def args(self) -> list[str]:
        args = ["--job-uri", self.job_uri, "--model-name", self.model_name, "--version", self.version,
                "--params", json.dumps(self.params, sort_keys=True)]
        if self.parent_version:
            args += ["--parent-version", self.parent_version]
        if self.production_model_uri:
            args += ["--production-model-uri", self.production_model_uri]
        if self.drift_share is not None:
            args += ["--drift-share", repr(float(self.drift_share))]
        return args

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> NodeRequest:
        parser = argparse.ArgumentParser(prog="python -m feedback_loop.train.node", description="One node of a TrainJob.")
        parser.add_argument("--job-uri", required=True)
        parser.add_argument("--model-name", required=True)
        parser.add_argument("--version", required=True)
        parser.add_argument("--params", required=True, type=json.loads)
        parser.add_argument("--parent-version", default="")
        parser.add_argument("--production-model-uri", default="")
        parser.add_argument("--drift-share", type=float, default=None)
        a = parser.parse_args(argv)
        return cls(a.job_uri, a.model_name, a.version, a.params, a.parent_version, a.production_model_uri, a.drift_share)


def trainjob(
    name: str,
    namespace: str,
    request: NodeRequest,
    *,
    nodes: int,
    image: str,
    accelerator_type: str = "",
    accelerator_count: int = 0,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    runtime: str = RUNTIME,
    cpu: str = "2",
    memory: str = "8G",
    memory_limit: str = "16G",
) -> dict[str, Any]:
    """The TrainJob manifest: `nodes` nodes of `image` on our runtime, each with the same
    accelerators, node selector and tolerations (the single-node task's, applied per node)."""
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory_limit}}
    if accelerator_count:
        resources["limits"][accelerator_type] = str(accelerator_count)
    variables = {**(env or {}), NODES: str(nodes)}
    pod: dict[str, Any] = {}
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod["tolerations"] = [dict(t) for t in tolerations]
    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": runtime},
        "trainer": {
            "image": image,
            "args": request.args(),  # the runtime's command stays: it is the node entry point
            "env": [{"name": k, "value": v} for k, v in sorted(variables.items())],
            "numNodes": nodes,
            "resourcesPerNode": resources,
        },
    }
    if pod:
        spec["runtimePatches"] = [
            {
                "manager": MANAGER,
                "trainingRuntimeSpec": {
                    "template": {
                        "spec": {"replicatedJobs": [{"name": REPLICATED_JOB, "template": {"spec": {"template": {"spec": pod}}}}]}
                    }
                },
            }
        ]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": spec,
    }


def condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The TrainJob's condition of type `kind` (Complete, Failed, Suspended) when it is True."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None
