"""Training throughput: our input pipeline (Parquet -> tf.data) against in-memory arrays.

The same CNN (the image_classifier family) trains for the same number of steps on the
animal-mnist cats and dogs, once from the Parquet file through `train.core.as_dataset`
(the read and the decoding are inside the timing) and once from NumPy arrays handed to
`model.fit` (Keras' own array adapter). Rounds alternate A/B so that the machine's noise
falls on both; the median counts, and the ratio is the median of the per-round ratios. The last line is one JSON object.

    ./build.sh bench train [--epochs 2] [--rounds 3] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from feedback_loop.dataset import write_parquet
from feedback_loop.demo.images import load_cats_and_dogs
from feedback_loop.train import core, families


def write_dataset(folder: Path) -> Path:
    images, labels = load_cats_and_dogs()
    start = pd.Timestamp("2024-01-01", tz="UTC")
    frame = pd.DataFrame(
        {
            "id": [f"row-{i}" for i in range(len(labels))],
            "created_at": start + pd.to_timedelta(np.arange(len(labels)), unit="min"),
            "label": labels,
            "pixels": [image.astype(np.uint8).tobytes() for image in images],
        }
    )
    return write_parquet(frame, folder / "train.parquet")


def new_model(family: families.Family, spec: dict, inputs: dict) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = family.build(spec, inputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=family.loss, metrics=list(family.metrics))
    return model


def run_pipeline(path: Path, steps: int, batch: int) -> float:
    """Steps per second: read Parquet, decode, tf.data (as training does), fit."""
    family = families.resolve(families.IMAGE_CLASSIFIER)
    warm = core.read_labelled(path)
    spec = family.describe(warm)
    model = new_model(family, spec, family.inputs(warm.iloc[:64], spec))
    examples = family.examples(warm.iloc[: batch * 4], spec, np.random.default_rng(0))
    warm_up = core.as_dataset(examples.inputs, examples.targets, batch, seed=0).repeat()
    model.fit(warm_up, steps_per_epoch=3, verbose=0, shuffle=False)
    started = time.perf_counter()
    frame = core.read_labelled(path)
    frame = frame.iloc[: len(frame) // batch * batch]  # whole batches only, as in the array run
    examples = family.examples(frame, spec, np.random.default_rng(0))
    data = core.as_dataset(examples.inputs, examples.targets, batch, seed=0).repeat()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return steps / (time.perf_counter() - started)


def run_in_memory(x: np.ndarray, y: np.ndarray, steps: int, batch: int) -> float:
    """Steps per second: NumPy arrays already in memory, Keras' array adapter shuffling them."""
    family = families.resolve(families.IMAGE_CLASSIFIER)
    spec = {"classes": ["cat", "dog"]}
    model = new_model(family, spec, {"pixels": x[:64]})
    model.fit(x[: batch * 3], y[: batch * 3], batch_size=batch, epochs=1, verbose=0)
    per_epoch = len(x) // batch
    epochs, rest = divmod(steps, per_epoch)
    if rest:
        raise SystemExit(f"--steps must be a multiple of {per_epoch} (steps per epoch over {len(x)} rows)")
    started = time.perf_counter()
    # Keras needs whole epochs over arrays; drop the last partial batch so both runs do equal steps.
    model.fit(x[: per_epoch * batch], y[: per_epoch * batch], batch_size=batch, epochs=epochs, shuffle=True, verbose=0)
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4, help="steps = epochs x (rows // batch size)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        path = write_dataset(Path(scratch))
        frame = core.read_labelled(path)
        x = families.image_array(frame)
        y = families.encode_labels(frame["label"], ["cat", "dog"])
        steps = args.epochs * (len(x) // args.batch_size)
        ours, in_memory = [], []
        for round_ in range(args.rounds):
            ours.append(run_pipeline(path, steps, args.batch_size))
            in_memory.append(run_in_memory(x, y, steps, args.batch_size))
            print(f"round {round_ + 1}: pipeline {ours[-1]:.1f} steps/s, in-memory {in_memory[-1]:.1f} steps/s", flush=True)

    gpus = tf.config.list_logical_devices("GPU")
    result = {
        "steps": steps,
        "rows": len(x),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "steps_per_s": round(statistics.median(ours), 2),
        "in_memory_steps_per_s": round(statistics.median(in_memory), 2),
        # Paired per round (both runs of a round share the machine's load), then the median.
        "input_pipeline_ratio": round(statistics.median(a / b for a, b in zip(ours, in_memory, strict=True)), 3),
        "device": gpus[0].name if gpus else "CPU",
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
