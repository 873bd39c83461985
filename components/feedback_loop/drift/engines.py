"""The two engines that run the per-feature tests: alibi-detect (default) and SciPy.

Both run the same tests the same way: the two-sample Kolmogorov-Smirnov test in its
asymptotic form (what alibi-detect's `KSDrift` asks `ks_2samp` for), and the chi-squared
test of a 2 x k contingency table with SciPy's defaults (what `ChiSquareDrift` asks
`chi2_contingency` for, Yates' correction included when k == 2).

alibi-detect stores p-values and statistics in float32 arrays, so its p-values are
SciPy's float64 p-values rounded to float32: equal within half a float32 step (about
6e-8 relative), and 0 below float32's range (~1e-45). That holds only for alibi-detect;
the SciPy engine returns the float64 values.
"""

from __future__ import annotations

import functools
import sys

import numpy as np
from scipy import stats

ENGINES = ("alibi", "scipy")


@functools.cache
def alibi_detectors() -> tuple[type, type]:
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
    return KSDrift, ChiSquareDrift


def ks(reference: np.ndarray, current: np.ndarray, engine: str) -> tuple[float, float]:
    """KS distance and p-value of two 1-d float arrays (no NaN)."""
    if engine == "alibi":
        ks_drift, _ = alibi_detectors()
        # The correction is ours (across all features); a one-feature detector needs none.
        detector = ks_drift(reference.reshape(-1, 1), p_val=0.05)
        p_values, distances = detector.score(current.reshape(-1, 1))
        return float(distances[0]), float(p_values[0])
    # alibi-detect's KSDrift calls ks_2samp with mode='asymp' (the old name of `method`).
    test = stats.ks_2samp(reference, current, alternative="two-sided", method="asymp")
    return float(test.statistic), float(test.pvalue)


def chi_squared(
    reference_codes: np.ndarray, current_codes: np.ndarray, n_categories: int, engine: str
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Chi-squared statistic and p-value of two arrays of category codes in [0, n_categories).

    Returns:
        The statistic, the p-value, and the count per category on each side.
    """
    reference_counts = np.bincount(reference_codes, minlength=n_categories)
    current_counts = np.bincount(current_codes, minlength=n_categories)
    if n_categories < 2:
        return 0.0, 1.0, reference_counts, current_counts  # one category on both sides: nothing can move
    if engine == "alibi":
        _, chi_square_drift = alibi_detectors()
        detector = chi_square_drift(
            reference_codes.reshape(-1, 1), p_val=0.05, categories_per_feature={0: n_categories}
        )
        p_values, distances = detector.score(current_codes.reshape(-1, 1))
        return float(distances[0]), float(p_values[0]), reference_counts, current_counts
    statistic, p, _, _ = stats.chi2_contingency(np.vstack([reference_counts, current_counts]))
    return float(statistic), float(p), reference_counts, current_counts


def two_proportions(errors_a: int, n_a: int, errors_b: int, n_b: int) -> tuple[float, float]:
    """Pooled two-proportion z-test, two-sided: z (positive when b's rate is higher) and p-value."""
    pooled = (errors_a + errors_b) / (n_a + n_b)
    spread = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if spread == 0:
        return 0.0, 1.0  # all right or all wrong on both sides: the rates cannot differ
    z = (errors_b / n_b - errors_a / n_a) / spread
    return float(z), float(2 * stats.norm.sf(abs(z)))
