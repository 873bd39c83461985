"""Normalized Wasserstein distance, an effect size for numeric features.

The earth mover's distance between the two samples divided by the reference's standard
deviation: 0.1 means the mass moved a tenth of a standard deviation on average, whatever
the feature's unit. It has no p-value; with many rows the KS test finds tiny, harmless shifts
significant, and this distance says whether the shift is large enough to matter.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from feedback_loop.drift.stattests.base import Score, StatTest

# A constant reference has no spread to scale by: any movement off it counts in these units.
MIN_SCALE = 1e-3


def normalized_wasserstein(reference: np.ndarray, current: np.ndarray, engine: str) -> Score:
    """Wasserstein distance / std(reference); the same whatever the engine (alibi-detect has none)."""
    scale = float(np.std(reference))
    return Score(float(stats.wasserstein_distance(reference, current)) / (scale if scale > 0 else MIN_SCALE))


WASSERSTEIN = StatTest(
    name="wasserstein", label="Wasserstein/std", feature_kinds=("numeric",), score="distance", default_threshold=0.1,
    run=normalized_wasserstein,
)
