"""Cat and dog silhouettes from the `animal-mnist` package, a camera change, and the
summary features the serving app logs with each prediction (never the raw image)."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np
from scipy import ndimage

CLASSES = {2: "cat", 4: "dog"}  # animal-mnist's class ids


def load_cats_and_dogs() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels "cat"/"dog"), shuffled with a fixed seed.

    Read from the package's data files directly: importing `animal_mnist` pulls in
    TensorFlow and Keras dataset downloads that the demo must not need.
    """
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("animal-mnist is not installed: pip install --no-deps animal-mnist")
    folder = Path(spec.submodule_search_locations[0]) / "data" / "Animal_MNIST"
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as handle:
        images = pickle.load(handle)
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as handle:
        labels = pickle.load(handle)
    keep = np.isin(labels, list(CLASSES))
    images, labels = images[keep], np.array([CLASSES[int(k)] for k in labels[keep]])
    order = np.random.default_rng(7).permutation(len(labels))
    return images[order], labels[order]


def new_camera(
    images: np.ndarray, seed: int = 0, zoom: float = 0.85, blur: float = 0.7, gain: float = 0.75, offset: float = 30, noise: float = 6
) -> np.ndarray:
    """The shift: a new camera frames the animal smaller, blurs it and washes out the contrast."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    for i, image in enumerate(images.astype(np.float32)):
        small = ndimage.zoom(image, zoom, order=1)
        canvas = np.zeros_like(image)
        top, left = rng.integers(0, 28 - small.shape[0] + 1, size=2)
        canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
        blurred = ndimage.gaussian_filter(canvas, sigma=blur)
        out[i] = np.clip(blurred * gain + offset + rng.normal(0, noise, size=image.shape), 0, 255).astype(np.uint8)
    return out


def summary_features(images: np.ndarray) -> dict[str, np.ndarray]:
    """What the app logs per prediction: cheap statistics that move when the camera does."""
    x = images.astype(np.float32) / 255.0
    lap = np.abs(ndimage.laplace(x, mode="nearest") if x.ndim == 2 else np.stack([ndimage.laplace(i) for i in x]))
    return {
        "brightness": x.mean(axis=(1, 2)),
        "contrast": x.std(axis=(1, 2)),
        "sharpness": lap.mean(axis=(1, 2)),
        "ink": (x > 0.5).mean(axis=(1, 2)),
    }
