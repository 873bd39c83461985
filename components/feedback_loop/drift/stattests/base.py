"""What a drift test declares, and the alibi-detect engine the tests share.

Two engines run every test the same way: alibi-detect (the default) and SciPy, called the
way alibi-detect calls it. alibi-detect stores p-values and statistics in float32 arrays,
so its p-values are SciPy's float64 p-values rounded to float32: equal within half a
float32 step (about 6e-8 relative), and 0 below float32's range (~1e-45). That holds only
for alibi-detect; the SciPy engine returns the float64 values. alibi-detect >= 0.11.5 is
under the Business Source License; the SciPy engine gives the same verdicts without it.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from feedback_loop.drift.result import Kind

ENGINES = ("alibi", "scipy")


class Score(NamedTuple):
    """A test's figures for one feature."""

    statistic: float  # a distance for distance tests
    p_value: float = math.nan  # NaN for distance tests, which have none


@dataclass(frozen=True)
class StatTest:
    """One drift test, as the registry knows it.

    `run(reference, current, engine)` takes one array per side: the finite values of a
    numeric feature, or the count of each category (the same categories, in the same
    order, on both sides) of a categorical one. A test alibi-detect has no detector for
    computes the same figures whatever the engine.
    """

    name: str  # the registry key, e.g. "ks"
    label: str  # what the results and reports call it, e.g. "KS"
    feature_kinds: tuple[Kind, ...]
    score: Literal["p_value", "distance"]  # drift below a p-value threshold, or at or above a distance
    default_threshold: float
    run: Callable[[np.ndarray, np.ndarray, str], Score]


@functools.cache
def alibi_detectors() -> dict[str, type]:
    """Imports alibi-detect's KSDrift and ChiSquareDrift with TensorFlow hidden.

    alibi-detect imports TensorFlow whenever it is importable and then fails on its
    TensorFlow-Probability paths; the statistical detectors need neither, so TensorFlow is
    made unimportable for the duration of the import and restored afterwards. This is the
    only place in the project that imports alibi-detect.
    """
    hidden = {name: sys.modules.pop(name) for name in list(sys.modules) if name.startswith("tensorflow")}
    sys.modules["tensorflow"] = None  # type: ignore[assignment]  # makes `import tensorflow` raise ImportError
    try:
        from alibi_detect.cd import ChiSquareDrift, KSDrift
    finally:
        sys.modules.pop("tensorflow", None)
        sys.modules.update(hidden)
    return {"KSDrift": KSDrift, "ChiSquareDrift": ChiSquareDrift}


def alibi_score(detector: str, reference: np.ndarray, current: np.ndarray, **options: object) -> Score:
    """Scores `current` against `reference` (1-d) with a one-feature alibi-detect detector."""
    # The correction is ours (across all features); a one-feature detector needs none.
    fitted = alibi_detectors()[detector](reference.reshape(-1, 1), p_val=0.05, **options)
    p_values, distances = fitted.score(current.reshape(-1, 1))
    return Score(float(distances[0]), float(p_values[0]))
