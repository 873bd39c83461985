"""Pearson's chi-squared test of the 2 x k table of category counts, for categorical features."""

from __future__ import annotations

import numpy as np
from scipy import stats

from feedback_loop.drift.stattests.base import Score, StatTest, alibi_score


def chi_squared(reference: np.ndarray, current: np.ndarray, engine: str) -> Score:
    """Chi-squared statistic and p-value of the counts per category on each side.

    SciPy's defaults, as alibi-detect's `ChiSquareDrift` asks `chi2_contingency` for
    them: Yates' correction included when there are two categories.
    """
    if len(reference) < 2:
        return Score(0.0, 1.0)  # one category on both sides: nothing can move
    if engine == "alibi":
        # ChiSquareDrift counts the categories itself: give it one code per row.
        codes = np.arange(len(reference))
        return alibi_score(
            "ChiSquareDrift", np.repeat(codes, reference), np.repeat(codes, current),
            categories_per_feature={0: len(reference)},
        )
    statistic, p, _, _ = stats.chi2_contingency(np.vstack([reference, current]))
    return Score(float(statistic), float(p))


CHI_SQUARED = StatTest(
    name="chi2", label="chi-squared", feature_kinds=("categorical",), score="p_value", default_threshold=0.05,
    run=chi_squared,
)
