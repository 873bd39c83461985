"""The two-sample Kolmogorov-Smirnov test, for numeric features."""

from __future__ import annotations

import numpy as np
from scipy import stats

from feedback_loop.drift.stattests.base import Score, StatTest, alibi_score


def ks(reference: np.ndarray, current: np.ndarray, engine: str) -> Score:
    """KS distance and p-value of two 1-d float arrays (no NaN), in the asymptotic form."""
    if engine == "alibi":
        return alibi_score("KSDrift", reference, current)
    # alibi-detect's KSDrift calls ks_2samp with mode='asymp' (the old name of `method`).
    test = stats.ks_2samp(reference, current, alternative="two-sided", method="asymp")
    return Score(float(test.statistic), float(test.pvalue))


KS = StatTest(name="ks", label="KS", feature_kinds=("numeric",), score="p_value", default_threshold=0.05, run=ks)
