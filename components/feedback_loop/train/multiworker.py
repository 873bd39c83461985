"""Training on several nodes: TensorFlow's `MultiWorkerMirroredStrategy`, as `core.train` uses it.

`start(cluster)` creates the strategy, first thing in the node's process (TensorFlow
refuses a multi-worker setup once it has run an op); `core.train` then finds it through
`active()`. What changes with more than one node:

- Input: the fit rows are dealt out to the workers after a seeded shuffle, the same
  number to each (at most workers - 1 rows are left out, so every worker runs the same
  number of steps: a collective waits for all of them). Each worker gathers only its own
  rows; the global batch is `batch_size` x replicas, each replica takes `batch_size`.
  Validation rows are split batch by batch (TensorFlow's DATA sharding) and the metrics
  all-reduced, so every worker's early stopping sees the same numbers.
- Output: after `fit`, only the chief (worker 0) exports; it reloads the trained model
  outside the strategy so that predictions and the export run on its own. The workers
  wait for it in `finish()`, a last all-reduce (a worker that left early would look lost).
- A worker lost mid-run: the collectives fail on the others, reported as `WorkerLost`.
- Keras 3 (3.15) trips on this strategy in two places in `fit` (keras-team/keras#20585):
  it reduces the first batch as one structure, and takes the mean of scalar logs along
  axis 0. `fitting()` corrects both while `fit` runs and restores Keras afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from feedback_loop.errors import FeedbackLoopError
from feedback_loop.train.cluster import Cluster
from feedback_loop.train.data import as_dataset

log = logging.getLogger(__name__)

# Raised by collectives whose peer is gone (health check abort, refused connection, timeout).
_LOST = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError, tf.errors.AbortedError,
         tf.errors.InternalError)


class WorkerLost(FeedbackLoopError):
    """A node of a multi-worker run stopped answering: the run cannot finish."""


@dataclass(frozen=True)
class MultiWorker:
    cluster: Cluster
    strategy: tf.distribute.Strategy

    @property
    def devices(self) -> list[str]:
        return [f"worker {i} ({address})" for i, address in enumerate(self.cluster.workers)]


_ACTIVE: MultiWorker | None = None


def start(cluster: Cluster) -> MultiWorker:
    """Joins the cluster (TF_CONFIG must be set): blocks until every worker has started."""
    global _ACTIVE
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    _ACTIVE = MultiWorker(cluster, strategy)
    log.info("worker %d of %d joined (%s), %d replicas in sync", cluster.index, cluster.size,
             cluster.workers[cluster.index], strategy.num_replicas_in_sync)
    return _ACTIVE


def active() -> MultiWorker | None:
    return _ACTIVE


def shard_rows(n: int, cluster: Cluster, seed: int) -> np.ndarray:
    """This worker's rows: a seeded permutation dealt round-robin, `n // workers` each."""
    order = np.random.default_rng(seed).permutation(n)
    per_worker = n // cluster.size
    return np.sort(order[cluster.index :: cluster.size][:per_worker])


def fit_dataset(
    inputs: dict[str, np.ndarray], targets: np.ndarray, batch: int, seed: int, weights: np.ndarray | None
) -> tf.data.Dataset:
    """The fit batches: every row on one process; this worker's shard under the multi-worker strategy."""
    if _ACTIVE is None:
        return as_dataset(inputs, targets, batch, seed=seed, weights=weights)
    rows = shard_rows(len(targets), _ACTIVE.cluster, seed)
    log.info("worker %d trains on %d of %d rows", _ACTIVE.cluster.index, len(rows), len(targets))
    data = as_dataset(
        {name: values[rows] for name, values in inputs.items()}, targets[rows], batch, seed=seed,
        weights=None if weights is None else weights[rows],
    )
    return _with_shard_policy(data, tf.data.experimental.AutoShardPolicy.OFF)  # already sharded, by rows


def validation_dataset(data: tf.data.Dataset) -> tf.data.Dataset:
    if _ACTIVE is None:
        return data
    return _with_shard_policy(data, tf.data.experimental.AutoShardPolicy.DATA)


def _with_shard_policy(data: tf.data.Dataset, policy: Any) -> tf.data.Dataset:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return data.with_options(options)


@contextlib.contextmanager
def fitting(model: keras.Model) -> Iterator[None]:
    """Runs `fit` under the multi-worker strategy (see the module docstring); a no-op on one process."""
    if _ACTIVE is None:
        yield
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer  # Keras' private module: pinned version

    strategy = _ACTIVE.strategy
    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values: Any, strategy_: Any, reduction: str = "auto") -> Any:
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy_):
            return tf.nest.map_structure(lambda v: strategy_.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy_, reduction)

    def symbolic_build(iterator: Any = None, data_batch: Any = None) -> None:
        if iterator is not None:
            for _, _, it in iterator:  # the shapes of this worker's first batch are all the build needs
                data_batch = tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_per_replica
    model._maybe_symbolic_build = symbolic_build
    try:
        yield
    except _LOST as err:
        first = (err.message or type(err).__name__).strip().splitlines()[0][:300]
        raise WorkerLost(
            f"worker {_ACTIVE.cluster.index}: another training node was lost mid-run ({type(err).__name__}: {first}); "
            "no version is written: rerun the task (see the failed node's log for why it stopped)"
        ) from None
    finally:
        tf_trainer.reduce_per_replica = original_reduce
        del model._maybe_symbolic_build


def exportable(model: keras.Model) -> keras.Model | None:
    """The model to export: itself on one process; the chief's own copy (no collectives) or None on a worker."""
    if _ACTIVE is None:
        return model
    if not _ACTIVE.cluster.is_chief:
        return None
    with tempfile.TemporaryDirectory(prefix="chief-") as scratch:
        path = Path(scratch) / "trained.keras"
        model.save(path)
        return keras.models.load_model(path)  # outside the strategy's scope: a plain, local model


def finish() -> None:
    """A last all-reduce that every worker joins once the chief has written the version.

    Without it a worker that is done leaves while the chief still exports; the chief's
    coordination service then sees a lost worker and aborts. Should the chief fail instead,
    the workers fail here too, and the job fails with it.
    """
    if _ACTIVE is None:
        return
    strategy = _ACTIVE.strategy
    try:
        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
    except _LOST as err:
        if _ACTIVE.cluster.is_chief:  # the version is written and complete: a worker leaving now costs nothing
            log.warning("a worker left before the end (%s); the version is complete", type(err).__name__)
            return
        raise WorkerLost(f"worker {_ACTIVE.cluster.index}: the chief stopped before the version was written "
                         f"({type(err).__name__}); see the chief's log") from None


def lineage() -> dict[str, Any]:
    """What the lineage adds for a multi-worker run: the workers, by address, chief first."""
    if _ACTIVE is None:
        return {}
    return {"workers": list(_ACTIVE.cluster.workers), "chief": _ACTIVE.cluster.workers[0]}
