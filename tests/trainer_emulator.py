"""A small Kubeflow Trainer for the launcher tests, on the emulated Kubernetes API (kserve_emulator).

No Kubernetes, Trainer or JobSet runs here, so this controller plays them, and says so:
it sees each new TrainJob, and in `run` mode starts its nodes as processes on 127.0.0.1
with the command of our ClusterTrainingRuntime (manifests/training-runtime.yaml), the
TrainJob's args and env, and a TF_CONFIG on loopback ports (JobSet's hostnames do not
resolve here; `cluster.derive` is tested on its own). As JobSet's failure policy does, the
first node that fails stops the others. Status follows: `jobsStatus`, then the condition
Complete or Failed. In `hold` mode the nodes never finish (a task cancelled mid-run). A
TrainJob deleted through the API stops its nodes, as JobSet's garbage collection would.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from feedback_loop.train import local_cluster
from feedback_loop.train.trainjob import GROUP, PLURAL, VERSION
from kserve_emulator import ApiServerThread, kubernetes_api

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"


def runtime_container() -> dict[str, Any]:
    runtime = yaml.safe_load((MANIFESTS / "training-runtime.yaml").read_text())
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    (container,) = job["template"]["spec"]["template"]["spec"]["containers"]
    return container


@contextmanager
def trainer_api(validator: Any = None) -> Iterator[tuple[ApiServerThread, Any]]:
    """The emulated API serving TrainJobs (declared, so that the controller can list them)."""
    with kubernetes_api(validator) as (server, api):
        server.handler.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = {}
        yield server, api


class TrainerController:
    def __init__(self, api: Any, namespace: str, log_dir: Path, mode: str = "run") -> None:
        self.api, self.namespace, self.log_dir, self.mode = api, namespace, log_dir, mode
        self.created: list[str] = []  # every TrainJob name seen, in order (a name twice: created twice)
        self._running: dict[str, tuple[str, list[subprocess.Popen]]] = {}  # name -> (uid, nodes)
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TrainerController:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        for _, processes in self._running.values():
            local_cluster.stop(processes)

    def _loop(self) -> None:
        while not self._stop.is_set():
            listed = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)["items"]
            live = {job["metadata"]["name"]: job for job in listed}
            for name, (uid, processes) in list(self._running.items()):
                if name not in live or live[name]["metadata"]["uid"] != uid:  # deleted: JobSet's pods go with it
                    local_cluster.stop(processes)
                    del self._running[name]
            for name, job in live.items():
                if job["metadata"]["uid"] not in self._seen:
                    self._seen.add(job["metadata"]["uid"])
                    self.created.append(name)
                    self._start(job)
                elif name in self._running:
                    self._reconcile(job)
            time.sleep(0.2)

    def _start(self, job: dict[str, Any]) -> None:
        name, trainer = job["metadata"]["name"], job["spec"]["trainer"]
        nodes = int(trainer["numNodes"])
        self._status(name, [], active=1)
        if self.mode == "hold":
            self._running[name] = (job["metadata"]["uid"], [])
            return
        container = runtime_container()
        command = [sys.executable if part == "python" else part for part in container["command"]]
        env = {e["name"]: e["value"] for e in [*container.get("env", []), *trainer.get("env", [])] if "value" in e}
        processes = local_cluster.start(trainer["args"], local_cluster.loopback_cluster(nodes), self.log_dir / name, env, command)
        self._running[name] = (job["metadata"]["uid"], processes)

    def _reconcile(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        _, processes = self._running[name]
        if not processes:
            return  # hold
        codes = [p.poll() for p in processes]
        failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            local_cluster.stop(processes)
            message = f"jobset failed: job {name}-node-0 has failed pods (node {failed[0]} exited with code {codes[failed[0]]})"
            self._status(name, [{"type": "Failed", "status": "True", "reason": "JobSetFailed", "message": message}], failed=1)
            del self._running[name]
        elif all(code == 0 for code in codes):
            self._status(name, [{"type": "Complete", "status": "True", "reason": "JobSetCompleted", "message": "jobset completed"}],
                         succeeded=1)
            del self._running[name]

    def _status(self, name: str, conditions: list[dict[str, Any]], **counts: int) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        stamped = [{**c, "lastTransitionTime": now} for c in conditions]
        jobs = [{"name": "node", "active": 0, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0, **counts}]
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, name, {"status": {"conditions": stamped, "jobsStatus": jobs}}
            )
        except ApiException as err:
            if err.status != 404:  # deleted meanwhile: nothing left to report on
                raise
