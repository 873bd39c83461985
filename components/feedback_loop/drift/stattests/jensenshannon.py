"""Jensen-Shannon distance, an effect size for categorical features.

The square root of the Jensen-Shannon divergence (base 2) between the category shares of
the two sides: 0 for the same mix, 1 for disjoint categories. It has no p-value; with many
rows the chi-squared test finds tiny, harmless shifts significant, and this distance says
whether the mix moved enough to matter.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import distance

from feedback_loop.drift.stattests.base import Score, StatTest


def jensen_shannon(reference: np.ndarray, current: np.ndarray, engine: str) -> Score:
    """Distance between the shares of each category (counts in the same order on both sides)."""
    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    if ref.sum() <= 0 or cur.sum() <= 0:
        return Score(0.0)
    return Score(float(np.clip(distance.jensenshannon(ref / ref.sum(), cur / cur.sum(), base=2), 0.0, 1.0)))


JENSEN_SHANNON = StatTest(
    name="jensenshannon", label="Jensen-Shannon", feature_kinds=("categorical",), score="distance", default_threshold=0.1,
    run=jensen_shannon,
)
