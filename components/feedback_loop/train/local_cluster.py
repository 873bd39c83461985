"""Several training nodes on this machine: one process per node on 127.0.0.1, each with its `TF_CONFIG`.

What Kubeflow Trainer does on a cluster, in miniature, for a laptop, the tests and
`./build.sh bench scale`: start the node entry point once per node, and, as JobSet's
failure policy does, stop the others as soon as one fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from feedback_loop.train.cluster import TF_CONFIG, Cluster
from feedback_loop.train.trainjob import NodeRequest

NODE_MODULE = "feedback_loop.train.node"


def free_ports(n: int) -> list[int]:
    """`n` ports nothing listens on now (bound together, so they differ)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def loopback_cluster(nodes: int) -> tuple[str, ...]:
    return tuple(f"127.0.0.1:{port}" for port in free_ports(nodes))


@dataclass(frozen=True)
class NodeExit:
    index: int
    returncode: int
    log: Path


def start(
    args: Sequence[str], workers: tuple[str, ...], log_dir: Path, env: Mapping[str, str] | None = None,
    command: Sequence[str] = (sys.executable, "-m", NODE_MODULE),
) -> list[subprocess.Popen]:
    """One process per worker address, running `command + args`, logs in `log_dir/node-<i>.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    processes = []
    for index in range(len(workers)):
        variables = {**os.environ, **(env or {}), TF_CONFIG: json.dumps(Cluster(workers, index).tf_config())}
        with open(log_dir / f"node-{index}.log", "wb") as log:
            processes.append(subprocess.Popen([*command, *args], env=variables, stdout=log, stderr=subprocess.STDOUT))
    return processes


def wait(processes: list[subprocess.Popen], log_dir: Path, timeout: float) -> list[NodeExit]:
    """Waits for every node; when one fails (or time runs out) the others are stopped, as JobSet does."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in processes):
        failed = any(p.returncode not in (None, 0) for p in processes)
        if failed or time.monotonic() > deadline:
            stop(processes)
            break
        time.sleep(0.2)
    return [NodeExit(i, p.wait(), log_dir / f"node-{i}.log") for i, p in enumerate(processes)]


def stop(processes: list[subprocess.Popen], grace: float = 10.0) -> None:
    for p in processes:
        if p.poll() is None:
            p.terminate()
    end = time.monotonic() + grace
    for p in processes:
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def train(request: NodeRequest, nodes: int, log_dir: Path, timeout: float = 1800.0) -> list[NodeExit]:
    """Runs the TrainJob's nodes here (the inputs must be staged under `request.job_uri`)."""
    return wait(start(request.args(), loopback_cluster(nodes), log_dir), log_dir, timeout)
