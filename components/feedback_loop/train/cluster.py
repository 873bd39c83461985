"""Which training node this process is: TensorFlow's `TF_CONFIG`, read or derived (no TensorFlow import).

On a cluster, Kubeflow Trainer runs our `ClusterTrainingRuntime` (manifests/training-runtime.yaml)
as a JobSet with one indexed Job called `node`. JobSet gives every pod a stable DNS name,
`<jobset>-node-0-<index>.<jobset>` (the TrainJob's name is the JobSet's), so each node can
work out the whole cluster from three values the runtime hands it: the JobSet's name (a pod
label, through the downward API), its completion index (set by Kubernetes on indexed Jobs)
and the node count (set by the launcher). Node 0 is the chief: it alone writes the version.

Locally and in tests, a `TF_CONFIG` that is already set wins (two processes on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from feedback_loop.errors import SettingsError

TF_CONFIG = "TF_CONFIG"
JOBSET_NAME = "JOBSET_NAME"  # downward API: metadata.labels['jobset.sigs.k8s.io/jobset-name']
COMPLETION_INDEX = "JOB_COMPLETION_INDEX"  # set by Kubernetes in every pod of an indexed Job
NODES = "FEEDBACK_LOOP_NODES"  # set by the launcher: the TrainJob's numNodes
PORT = "FEEDBACK_LOOP_PORT"  # the runtime's collective port
DEFAULT_PORT = 2222
REPLICATED_JOB = "node"  # the runtime's replicated job (Trainer's convention for the trainer step)


@dataclass(frozen=True)
class Cluster:
    """The training cluster as this process sees it."""

    workers: tuple[str, ...]  # host:port of every node, index order
    index: int  # this node's place in `workers`

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    @property
    def size(self) -> int:
        return len(self.workers)

    def tf_config(self) -> dict:
        return {"cluster": {"worker": list(self.workers)}, "task": {"type": "worker", "index": self.index}}


def node_hosts(jobset: str, nodes: int, replicated_job: str = REPLICATED_JOB) -> list[str]:
    """JobSet's stable pod hostnames: `<jobset>-<job>-<job index>-<pod index>.<subdomain = jobset>`."""
    return [f"{jobset}-{replicated_job}-0-{i}.{jobset}" for i in range(nodes)]


def derive(env: Mapping[str, str]) -> Cluster | None:
    """The cluster from the runtime's variables; None when they are not set (a single process)."""
    jobset, index, nodes = env.get(JOBSET_NAME), env.get(COMPLETION_INDEX), env.get(NODES)
    if not (jobset and index is not None and nodes):
        return None
    try:
        count, me, port = int(nodes), int(index), int(env.get(PORT) or DEFAULT_PORT)
    except ValueError:
        raise SettingsError(f"{NODES}={nodes!r}, {COMPLETION_INDEX}={index!r}: the training runtime must set integers") from None
    if not 0 <= me < count:
        raise SettingsError(f"{COMPLETION_INDEX}={me} is outside the {count} nodes of {jobset}: the TrainJob's numNodes and {NODES} differ")
    return Cluster(tuple(f"{host}:{port}" for host in node_hosts(jobset, count)), me)


def parse(raw: str) -> Cluster:
    """A `TF_CONFIG` string as a Cluster; one clear line when it cannot be one."""
    try:
        config = json.loads(raw)
        workers = tuple(config["cluster"]["worker"])
        task = config["task"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError):
        raise SettingsError(
            f"{TF_CONFIG} is not {{\"cluster\": {{\"worker\": [host:port, ...]}}, \"task\": {{\"type\": \"worker\", \"index\": i}}}}"
        ) from None
    if task.get("type") != "worker" or set(config["cluster"]) - {"worker"}:
        raise SettingsError(f"{TF_CONFIG}: only 'worker' tasks are used (worker 0 is the chief); found {sorted(config['cluster'])}")
    if not 0 <= index < len(workers):
        raise SettingsError(f"{TF_CONFIG}: task index {index} is outside the {len(workers)} workers")
    return Cluster(workers, index)


def current(env: Mapping[str, str] | None = None) -> Cluster | None:
    """This process's cluster: `TF_CONFIG` if set, else derived from the runtime; None for one process."""
    env = os.environ if env is None else env
    if env.get(TF_CONFIG):
        return parse(env[TF_CONFIG])
    return derive(env)


def export_tf_config(env: dict[str, str] | None = None) -> Cluster | None:
    """Sets `TF_CONFIG` (before TensorFlow starts) from the runtime's variables when it is not set."""
    env = os.environ if env is None else env  # type: ignore[assignment]
    cluster = current(env)
    if cluster is not None and not env.get(TF_CONFIG):
        env[TF_CONFIG] = json.dumps(cluster.tf_config())
    return cluster
