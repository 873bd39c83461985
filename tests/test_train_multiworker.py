"""Real multi-worker training: two node processes on 127.0.0.1, TensorFlow's collectives over loopback.

No cluster runs here, but TensorFlow's MultiWorkerMirroredStrategy does: the node entry
point (our runtime's command) runs twice with TF_CONFIG, exactly as on two pods, and the
chief's version is compared with one process trained on the same rows and seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification

from feedback_loop import dataset, storage
from feedback_loop.errors import SettingsError
from feedback_loop.layout import COMPLETE_MARKER, LINEAGE_FILE
from feedback_loop.train import cluster, local_cluster, trainjob

START = pd.Timestamp("2024-01-01", tz="UTC")


def tabular_rows(n: int, seed: int) -> pd.DataFrame:
    x, y = make_classification(n_samples=n, n_features=6, n_informative=4, n_redundant=0, n_classes=2, class_sep=1.5,
                               random_state=seed)
    frame = pd.DataFrame(x * 50 + 100, columns=[f"f{i}" for i in range(x.shape[1])])
    frame.insert(0, "id", [f"row-{i}" for i in range(n)])
    frame.insert(1, "created_at", START + pd.to_timedelta(np.arange(n), unit="min"))
    frame.insert(2, "label", [f"class-{'ab'[int(k)]}" for k in y])
    return frame


PARAMS = {"epochs": 8, "batch_size": 32, "learning_rate": 3e-3, "seed": 7, "family": "tabular_classifier", "strategy": "scratch"}


def accuracy(version_dir: Path, rows: pd.DataFrame) -> float:
    from feedback_loop.train import core

    model = core.load_model(version_dir)
    predicted = np.asarray(model.classes)[core.predict_proba(model, rows).argmax(axis=1)]
    return float((predicted == rows["label"].to_numpy()).mean())


@pytest.mark.slow
def test_two_workers_train_a_complete_version_as_good_as_one(tmp_path: Path) -> None:
    from feedback_loop.train import core

    rows = tabular_rows(6000, seed=3)
    train_path = dataset.write_parquet(rows.iloc[:4000], tmp_path / "train.parquet")
    test_path = dataset.write_parquet(rows.iloc[4000:], tmp_path / "test.parquet")
    job = storage.normalize(str(tmp_path / "store" / trainjob.JOBS_DIR / "job"))
    trainjob.stage_inputs(job, train_path, test_path)
    request = trainjob.NodeRequest(job, "m", "v1-two", PARAMS)

    exits = local_cluster.train(request, nodes=2, log_dir=tmp_path / "logs", timeout=600)
    logs = {e.index: e.log.read_text() for e in exits}
    assert [e.returncode for e in exits] == [0, 0], {i: text[-3000:] for i, text in logs.items()}

    version = storage.local_path(storage.join(job, trainjob.VERSION_DIR))
    assert (version / COMPLETE_MARKER).exists()
    record = json.loads((version / LINEAGE_FILE).read_text())
    assert len(record["workers"]) == 2 and record["chief"] == record["workers"][0]
    assert record["replicas"] == 2 and record["global_batch_size"] == 2 * PARAMS["batch_size"]
    assert record["learning_rate"] == PARAMS["learning_rate"] and record["version"] == "v1-two"
    result = json.loads(storage.read_bytes(storage.join(job, trainjob.RESULT_FILE)))
    assert result["version"] == "v1-two" and result["epochs_run"] >= 1
    assert "worker 1 trains on 1700 of 3400 rows" in logs[1]  # its shard: half the fit rows

    single = core.train(train_path, tmp_path / "single", core.TrainParams(**PARAMS), model_name="m", test_path=test_path)
    holdout = rows.iloc[4000:]
    two, one = accuracy(version, holdout), accuracy(single.out_dir, holdout)
    assert one > 0.85 and abs(two - one) <= 0.01, (two, one)


def test_tf_config_derives_from_jobset_hostnames() -> None:
    env = {cluster.JOBSET_NAME: "train-m-abc", cluster.COMPLETION_INDEX: "1", cluster.NODES: "3"}
    found = cluster.current(env)
    assert found == cluster.Cluster(
        ("train-m-abc-node-0-0.train-m-abc:2222", "train-m-abc-node-0-1.train-m-abc:2222", "train-m-abc-node-0-2.train-m-abc:2222"), 1
    )
    assert not found.is_chief and found.tf_config()["task"] == {"type": "worker", "index": 1}
    assert cluster.current({}) is None  # one process: no cluster
    exported: dict[str, str] = dict(env)
    cluster.export_tf_config(exported)
    assert json.loads(exported[cluster.TF_CONFIG])["cluster"]["worker"][0].startswith("train-m-abc-node-0-0.")


@pytest.mark.parametrize("env,message", [
    ({cluster.TF_CONFIG: "not json"}, "TF_CONFIG is not"),
    ({cluster.TF_CONFIG: json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}})}, "only 'worker'"),
    ({cluster.JOBSET_NAME: "j", cluster.COMPLETION_INDEX: "2", cluster.NODES: "2"}, "outside the 2 nodes"),
])
def test_a_wrong_cluster_description_is_one_clear_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        cluster.current(env)


def test_shards_are_disjoint_equal_and_seeded() -> None:
    pytest.importorskip("tensorflow")
    from feedback_loop.train import multiworker

    shards = [multiworker.shard_rows(101, cluster.Cluster(("a:1", "b:1", "c:1"), i), seed=5) for i in range(3)]
    assert [len(s) for s in shards] == [33, 33, 33]
    assert len(set(np.concatenate(shards))) == 99
    assert np.array_equal(shards[0], multiworker.shard_rows(101, cluster.Cluster(("a:1", "b:1", "c:1"), 0), seed=5))


@pytest.mark.slow
def test_a_worker_lost_mid_run_fails_the_chief_in_one_line_and_no_version_is_written(tmp_path: Path) -> None:
    import signal
    import time

    rows = tabular_rows(6000, seed=4)
    train_path = dataset.write_parquet(rows.iloc[:5000], tmp_path / "train.parquet")
    test_path = dataset.write_parquet(rows.iloc[5000:], tmp_path / "test.parquet")
    job = storage.normalize(str(tmp_path / "store" / trainjob.JOBS_DIR / "job"))
    trainjob.stage_inputs(job, train_path, test_path)
    request = trainjob.NodeRequest(job, "m", "v1", {**PARAMS, "epochs": 30, "patience": 30})
    log_dir = tmp_path / "logs"
    chief, worker = local_cluster.start(request.args(), local_cluster.loopback_cluster(2), log_dir)
    try:
        deadline = time.monotonic() + 300
        while "epoch 1/30" not in (log_dir / "node-1.log").read_text():
            assert worker.poll() is None and time.monotonic() < deadline, (log_dir / "node-1.log").read_text()[-2000:]
            time.sleep(0.5)
        worker.send_signal(signal.SIGKILL)  # the node is gone: no goodbye, as when a machine fails
        chief.wait(timeout=300)  # the chief notices on its own: its collectives fail
    finally:
        local_cluster.stop([chief, worker])
    log = (log_dir / "node-0.log").read_text()
    assert chief.returncode == 1, log[-3000:]
    (line,) = [text for text in log.splitlines() if text.startswith("error: ")]
    assert line.startswith("error: node 0: worker 0: another training node was lost mid-run ("), line
    assert storage.read_bytes(trainjob.failure_uri(job, 0)).decode() == line.removeprefix("error: ")
    assert not storage.exists(storage.join(job, trainjob.VERSION_DIR, COMPLETE_MARKER))
