"""`train_model` with `workers` > 1: a launcher, as Google's pipeline components are for remote jobs.

It stages the rows in the model store, creates a Kubeflow Trainer `TrainJob` on our runtime
(or finds the one a previous attempt of the same run created: the name derives from the
run), follows its status with backoff, and reads the chief's version from the model store.
When the job fails, the one line a failed node recorded (else the TrainJob's own condition)
is the error; when the job fails or the task is cancelled (SIGTERM), the TrainJob is
deleted so that no node trains on for nothing. A finished job stays, so that a retried
task reads it instead of training again.

The Kubernetes client is a parameter (`CustomObjectsApi`); it only needs create, get,
watch and delete on `trainjobs` in its namespace (manifests/role.yaml).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedback_loop import storage
from feedback_loop.errors import FeedbackLoopError
from feedback_loop.layout import COMPLETE_MARKER, LINEAGE_FILE
from feedback_loop.train import trainjob
from feedback_loop.train.trainjob import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

_TRANSIENT = {429, 500, 502, 503, 504}
_HINTS = {
    403: "grant the pipeline's ServiceAccount create, get, watch and delete on trainjobs in this namespace (manifests/role.yaml)",
    404: "is Kubeflow Trainer installed, with the feedback-loop-tensorflow ClusterTrainingRuntime (manifests/)?",
    422: "the API server refused the TrainJob; check the Trainer CRD version (v1alpha1, Trainer 2.3)",
}


class TrainingFailed(FeedbackLoopError):
    """The TrainJob failed, or its result cannot be read."""


class Cancelled(FeedbackLoopError):
    """The task was stopped (SIGTERM) while its TrainJob ran."""


@dataclass(frozen=True)
class Trained:
    """What the chief wrote, read back: the same fields the component reads from `core.TrainResult`."""

    version: str
    out_dir: Path
    history: dict[str, float]
    epochs_run: int
    best_epoch: int
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def strategy(self) -> str:
        return str(self.lineage.get("strategy"))


@dataclass
class Launcher:
    api: Any  # kubernetes.client.CustomObjectsApi
    namespace: str
    name: str
    job_uri: str
    nodes: int
    poll_seconds: float = 2.0
    max_poll_seconds: float = 30.0
    sleep: Callable[[float], None] = time.sleep

    @property
    def where(self) -> str:
        return f"TrainJob {self.namespace}/{self.name}"

    # --- the steps ------------------------------------------------------------------------

    def launch(self, manifest: dict[str, Any], train_path: Path, test_path: Path) -> None:
        """Creates the TrainJob, unless this run already has one that has not failed."""
        job = self._call("get", name=self.name)
        if job is not None and trainjob.condition(job, "Failed") is None:
            log.info("%s exists (an earlier attempt of this run): following it", self.where)
            return
        if job is not None:
            log.info("%s failed in an earlier attempt: deleting it and starting again", self.where)
            self.delete()
            self._wait_gone()
        trainjob.stage_inputs(self.job_uri, train_path, test_path)
        self._call("create", body=manifest)
        log.info("created %s: %d nodes, runtime %s", self.where, self.nodes, manifest["spec"]["runtimeRef"]["name"])

    def follow(self) -> dict[str, Any]:
        """Polls the TrainJob (backing off while nothing changes) until it completes; TrainingFailed if it fails."""
        interval, last = self.poll_seconds, None
        while True:
            job = self._call("get", name=self.name)
            if job is None:
                raise TrainingFailed(f"{self.where} was deleted while it ran (by hand, or by another attempt); rerun the task")
            if trainjob.condition(job, "Complete") is not None:
                log.info("%s completed", self.where)
                return job
            if trainjob.condition(job, "Failed") is not None:
                raise TrainingFailed(self.failure_reason(job))
            state = json.dumps((job.get("status") or {}).get("jobsStatus"), sort_keys=True)
            if state != last:
                log.info("%s running: %s", self.where, _jobs_summary(job))
                last, interval = state, self.poll_seconds
            else:
                interval = min(interval * 1.5, self.max_poll_seconds)
            self.sleep(interval)

    def failure_reason(self, job: dict[str, Any]) -> str:
        """One line: what the failed nodes recorded, else the TrainJob's Failed condition."""
        recorded = []
        for index in range(self.nodes):
            uri = trainjob.failure_uri(self.job_uri, index)
            if storage.exists(uri):
                recorded.append(storage.read_bytes(uri).decode(errors="replace").strip())
        cond = trainjob.condition(job, "Failed") or {}
        jobset = " ".join(p for p in (cond.get("reason"), cond.get("message")) if p) or "no reason given"
        if recorded:  # the first node's own words; the others usually repeat it
            cause = recorded[0] + (f" (and {len(recorded) - 1} more node(s) failed)" if len(recorded) > 1 else "")
        else:
            cause = f"{jobset} (no node recorded a reason: killed from outside, e.g. out of memory?)"
        return " ".join(f"{self.where} failed: {cause}".split())

    def fetch(self, out_dir: Path) -> Trained:
        """The chief's version, copied to `out_dir` (without the store's _COMPLETE marker), and its metrics."""
        version_uri = storage.join(self.job_uri, trainjob.VERSION_DIR)
        if not storage.is_complete(version_uri):
            raise TrainingFailed(f"{self.where} completed but {version_uri} holds no complete version: rerun the task")
        out_dir = Path(out_dir)
        if version_uri.startswith("gs://"):
            storage.download_dir(version_uri, out_dir)
            (out_dir / COMPLETE_MARKER).unlink(missing_ok=True)
        else:
            shutil.copytree(storage.local_path(version_uri), out_dir, dirs_exist_ok=True,
                            ignore=lambda folder, names: [COMPLETE_MARKER] if Path(folder) == storage.local_path(version_uri) else [])
        summary = json.loads(storage.read_bytes(storage.join(self.job_uri, trainjob.RESULT_FILE)))
        lineage = json.loads((out_dir / LINEAGE_FILE).read_text())
        return Trained(lineage["version"], out_dir, summary["history"], summary["epochs_run"], summary["best_epoch"], lineage)

    def delete(self) -> None:
        """Deletes the TrainJob (and, through JobSet, its pods); already gone is fine."""
        try:
            if self._call("delete", name=self.name, propagation_policy="Foreground") is not None:
                log.info("deleted %s", self.where)
        except TrainingFailed as err:
            log.warning("could not delete %s: %s", self.where, err)

    # --- the API --------------------------------------------------------------------------

    def _wait_gone(self, attempts: int = 30) -> None:
        for _ in range(attempts):
            if self._call("get", name=self.name) is None:
                return
            self.sleep(self.poll_seconds)
        raise TrainingFailed(f"{self.where} is still being deleted; rerun the task when it is gone")

    def _call(self, verb: str, **kwargs: Any) -> Any:
        """One API call; transient errors are retried with backoff, 404 on get/delete is None."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        method = getattr(self.api, f"{verb}_namespaced_custom_object")
        if verb == "create":
            kwargs["field_validation"] = "Strict"  # refuse, rather than silently prune, a field the CRD does not know
        delay = self.poll_seconds
        for attempt in range(5):
            try:
                return method(GROUP, VERSION, self.namespace, PLURAL, **kwargs)
            except (ApiException, HTTPError) as err:  # HTTPError: the API server did not answer
                status = getattr(err, "status", None)
                if status == 404 and verb in ("get", "delete"):
                    return None
                if (status in _TRANSIENT or status is None) and attempt < 4:
                    log.warning("%s %s: %s; retrying in %.0f s", verb, self.where, status or type(err).__name__, delay)
                    self.sleep(delay)
                    delay = min(delay * 2, self.max_poll_seconds)
                    continue
                cause = " ".join(str(p) for p in (status, _api_message(err)) if p)
                hint = _HINTS.get(status, "check the cluster and the Trainer controller")
                raise TrainingFailed(f"{verb} {self.where} failed ({cause}): {hint}") from None
        raise AssertionError("unreachable")


def _api_message(err: Exception) -> str:
    try:
        return str(json.loads(getattr(err, "body", None) or "")["message"])
    except (ValueError, TypeError, KeyError):
        return str(getattr(err, "reason", None) or type(err).__name__)


def _jobs_summary(job: dict[str, Any]) -> str:
    jobs = (job.get("status") or {}).get("jobsStatus") or []
    if not jobs:
        return "waiting for its nodes"
    return ", ".join(f"{j['name']}: {j.get('ready', 0)} ready, {j.get('active', 0)} active, "
                     f"{j.get('succeeded', 0)} succeeded, {j.get('failed', 0)} failed" for j in jobs)


@contextlib.contextmanager
def cancellable(where: str) -> Iterator[None]:
    """SIGTERM (KFP cancelling the task, or the pod being evicted) raises Cancelled in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum: int, frame: Any) -> None:
        raise Cancelled(f"the task was stopped (signal {signum}) while {where} ran; the TrainJob is deleted")

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(launcher: Launcher, manifest: dict[str, Any], train_path: Path, test_path: Path, out_dir: Path) -> Trained:
    """Launch, follow, fetch; the TrainJob is deleted when any of it fails or the task is cancelled."""
    with cancellable(launcher.where):
        try:
            launcher.launch(manifest, train_path, test_path)
            launcher.follow()
            return launcher.fetch(out_dir)
        except BaseException:
            with _ignoring_sigterm():
                launcher.delete()
            raise


@contextlib.contextmanager
def _ignoring_sigterm() -> Iterator[None]:
    """The clean-up runs to its end even if a second SIGTERM comes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def kubernetes_api() -> Any:
    """CustomObjectsApi from the pod's ServiceAccount, else the kube-config (KUBECONFIG)."""
    from feedback_loop.kube import custom_objects_api

    return custom_objects_api(TrainingFailed, "workers > 1 runs a TrainJob; run in the cluster, or set KUBECONFIG")


def train_on_cluster(
    *,
    train_path: Path,
    test_path: Path,
    out_dir: Path,
    params: dict[str, Any],
    model_name: str,
    version: str,
    model_store_uri: str,
    namespace: str,
    run_name: str,
    workers: int,
    image: str | None = None,
    parent_version: str = "",
    production_model_uri: str = "",
    drift_share: float | None = None,
    accelerator_type: str = "",
    accelerator_count: int = 0,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    api: Any = None,
    poll_seconds: float = 2.0,
) -> Trained:
    """`train_model`'s body for `workers` > 1: the TrainJob of this run, from creation to the version it wrote."""
    from feedback_loop.images import TRAIN_IMAGE
    from feedback_loop.lineage import GIT_SHA_ENV, IMAGE_ENV

    image = image or os.environ.get(IMAGE_ENV) or TRAIN_IMAGE  # the task's own image, registry rewrite included
    if env is None:  # what the nodes' lineage and logs need from the task's environment
        env = {k: os.environ[k] for k in (IMAGE_ENV, GIT_SHA_ENV, "RETRAIN_LOG_LEVEL") if os.environ.get(k)}
    name = trainjob.job_name(run_name or version, model_name)
    job = trainjob.job_uri(storage.normalize(model_store_uri), name)
    request = trainjob.NodeRequest(job, model_name, version, params, parent_version, production_model_uri, drift_share)
    manifest = trainjob.trainjob(
        name, namespace, request, nodes=workers, image=image, accelerator_type=accelerator_type,
        accelerator_count=accelerator_count, node_selector=node_selector, tolerations=tolerations, env=env,
        labels={"app.kubernetes.io/part-of": "feedback-loop", "feedback-loop/model": model_name},
    )
    launcher = Launcher(api if api is not None else kubernetes_api(), namespace, name, job, workers, poll_seconds)
    return run(launcher, manifest, Path(train_path), Path(test_path), Path(out_dir))
