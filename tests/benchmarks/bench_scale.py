"""Multi-worker training: one node against two on this machine, same rows, same seed.

Both runs go through the node entry point (`python -m feedback_loop.train.node`, our
Trainer runtime's command) via `local_cluster`: one process, then two processes on
127.0.0.1 with TF_CONFIG and TensorFlow's collectives over loopback. The tabular family
trains on a generated dataset for a fixed number of epochs (no early stop), and each
version is scored on the same held-out rows. Throughput comes from the chief's epoch log
lines, first epoch (tracing) left out: steps/s counts global steps (two workers: each step
takes `batch_size` rows on each worker), rows/s the rows all workers consumed. On one
machine the workers share its cores, so this measures the cost of the collectives, not
the gain of a second node. The last line is one JSON object.

    ./build.sh bench scale [--rows 20000] [--epochs 4] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import tempfile
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
from sklearn.datasets import make_classification

from feedback_loop import dataset, storage
from feedback_loop.train import local_cluster, trainjob

_STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO feedback_loop\.train\."


def rows(n: int, seed: int) -> pd.DataFrame:
    x, y = make_classification(n_samples=n, n_features=12, n_informative=8, n_redundant=2, n_classes=3,
                               class_sep=1.0, random_state=seed)
    frame = pd.DataFrame(x * 20 + 50, columns=[f"f{i}" for i in range(x.shape[1])])
    frame.insert(0, "id", [f"row-{i}" for i in range(n)])
    frame.insert(1, "created_at", pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(n), unit="min"))
    frame.insert(2, "label", [f"class-{k}" for k in y])
    return frame


def throughput(log: str, workers: int, batch: int) -> dict[str, float]:
    """Global steps/s and rows/s over epochs 2..n, from the chief's log."""
    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
              for m in re.finditer(_STAMP + r"core: epoch \d+/\d+", log, re.M)]
    if workers > 1:
        per_worker = int(re.search(r"worker 0 trains on (\d+) of", log).group(1))
    else:
        fit = re.search(r"on (\d+) rows \((\d+) for validation\)", log)
        per_worker = int(fit.group(1)) - int(fit.group(2))
    steps_per_epoch = math.ceil(per_worker / batch)
    seconds = (stamps[-1] - stamps[0]).total_seconds()
    steps = steps_per_epoch * (len(stamps) - 1)
    return {"steps_per_s": round(steps / seconds, 2), "rows_per_s": round(steps * batch * workers / seconds, 1),
            "epochs_timed": len(stamps) - 1}


def accuracy(version_dir: Path, holdout: pd.DataFrame) -> float:
    from feedback_loop.train import core

    model = core.load_model(version_dir)
    predicted = np.asarray(model.classes)[core.predict_proba(model, holdout).argmax(axis=1)]
    return float((predicted == holdout["label"].to_numpy()).mean())


def run(workers: int, root: Path, train: Path, test: Path, params: dict, holdout: pd.DataFrame) -> dict:
    job = storage.normalize(str(root / "store" / trainjob.JOBS_DIR / f"scale-{workers}"))
    trainjob.stage_inputs(job, train, test)
    request = trainjob.NodeRequest(job, "scale", f"v-{workers}", params)
    started = time.perf_counter()
    exits = local_cluster.train(request, workers, root / f"logs-{workers}", timeout=3600)
    wall = time.perf_counter() - started
    chief = exits[0].log.read_text()
    if any(e.returncode for e in exits):
        raise SystemExit(f"{workers} worker(s) failed:\n{chief[-3000:]}")
    version = storage.local_path(storage.join(job, trainjob.VERSION_DIR))
    result = {"workers": workers, **throughput(chief, workers, params["batch_size"]),
              "accuracy": round(accuracy(version, holdout), 4), "wall_s": round(wall, 1)}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    params = {"epochs": args.epochs, "patience": args.epochs, "batch_size": args.batch_size, "learning_rate": 3e-3,
              "seed": args.seed, "family": "tabular_classifier", "strategy": "scratch"}
    data = rows(args.rows + 5000, args.seed)
    holdout = data.iloc[args.rows:]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch:
        root = Path(scratch)
        train = dataset.write_parquet(data.iloc[: args.rows], root / "train.parquet")
        test = dataset.write_parquet(holdout, root / "test.parquet")
        one, two = (run(w, root, train, test, params, holdout) for w in (1, 2))
    print(json.dumps({
        "rows": args.rows, "holdout_rows": len(holdout), "epochs": args.epochs, "batch_size_per_worker": args.batch_size,
        "one_worker": one, "two_workers": two,
        "rows_per_s_ratio": round(two["rows_per_s"] / one["rows_per_s"], 3),
        "accuracy_gap_points": round(100 * (two["accuracy"] - one["accuracy"]), 2),
        "cpu_count": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
