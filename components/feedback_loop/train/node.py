"""`python -m feedback_loop.train.node ...`: one node of a TrainJob (our runtime's command).

Every node joins the cluster (TF_CONFIG, derived from JobSet's hostnames when not set),
reads the staged rows from the model store and trains its shard. The chief then exports
and uploads the version with its `_COMPLETE` marker last, and writes `result.json`; the
other nodes write nothing. A node that fails writes one line under `failures/` (what the
launcher reports), prints it, and exits 1: JobSet then fails the whole job.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

from feedback_loop import logs, storage
from feedback_loop.train import cluster as clusters
from feedback_loop.train import trainjob

log = logging.getLogger("feedback_loop.train.node")


def run(request: trainjob.NodeRequest, scratch: Path) -> None:
    cluster = clusters.export_tf_config()  # before TensorFlow starts
    from feedback_loop.train import core, multiworker  # TensorFlow loads here

    if cluster is not None and cluster.size > 1:
        multiworker.start(cluster)  # first TensorFlow work of the process
    inputs = scratch / "input"
    inputs.mkdir()
    train_path, test_path = inputs / "train.parquet", inputs / "test.parquet"
    train_path.write_bytes(storage.read_bytes(storage.join(request.job_uri, trainjob.TRAIN_FILE)))
    test_path.write_bytes(storage.read_bytes(storage.join(request.job_uri, trainjob.TEST_FILE)))
    params = core.TrainParams(**request.params)
    wanted = request.production_model_uri and params.strategy != core.SCRATCH
    parent_dir = storage.download_dir(request.production_model_uri, scratch / "parent") if wanted else None
    out = scratch / "version"
    result = core.train(
        train_path, out, params, model_name=request.model_name, parent_version=request.parent_version or None,
        version=request.version, parent_dir=parent_dir, drift_share=request.drift_share, test_path=test_path,
    )
    if cluster is None or cluster.is_chief:
        storage.upload_dir(out, storage.join(request.job_uri, trainjob.VERSION_DIR))  # _COMPLETE last
        summary = {"version": result.version, "history": result.history, "epochs_run": result.epochs_run,
                   "best_epoch": result.best_epoch}
        storage.write_bytes(storage.join(request.job_uri, trainjob.RESULT_FILE), json.dumps(summary, sort_keys=True).encode())
    multiworker.finish()  # the workers leave only once the chief has written the version


def main(argv: list[str] | None = None) -> None:
    logs.setup()
    request = trainjob.NodeRequest.parse(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="node-") as scratch:
            run(request, Path(scratch))
    except Exception as err:  # noqa: BLE001 (every failure becomes the one line the launcher reports)
        from feedback_loop.errors import FeedbackLoopError

        if not isinstance(err, FeedbackLoopError) or log.isEnabledFor(logging.DEBUG):
            log.exception("training failed")
        index = _index()
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        line = f"node {index}: {first if isinstance(err, FeedbackLoopError) else f'{type(err).__name__}: {first}'}"
        try:
            storage.write_bytes(trainjob.failure_uri(request.job_uri, index), line.encode())
        except Exception as write_err:  # noqa: BLE001 (the store may be what failed)
            log.warning("could not record the failure in the model store: %s", write_err)
        print(f"error: {line}", file=sys.stderr, flush=True)
        sys.exit(1)


def _index() -> int:
    try:
        found = clusters.current()
    except Exception:  # noqa: BLE001 (a broken TF_CONFIG is itself the failure being reported)
        return 0
    return found.index if found is not None else 0


if __name__ == "__main__":
    main()
