"""One feature column compared across the two sides: the test it gets, the test run, and
the summaries and histogram the report draws; then the correction across features.

Numeric features are tested on their finite values, categorical ones on the count of
each category; the test comes from the registry in `stattests`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feedback_loop.drift import stattests
from feedback_loop.drift.reading import as_numbers
from feedback_loop.drift.result import FeatureDrift, Histogram, Kind

CORRECTIONS = ("bonferroni", "fdr")
N_BINS = 20
MAX_CATEGORIES_SHOWN = 20  # beyond this, the rarest categories are pooled in charts and summaries
MAX_UNSEEN_LISTED = 50
HISTOGRAM_SAMPLE = 10_000


def family(type_: pa.DataType) -> str:
    """number, text, boolean, or the type itself: what a column holds, whatever its width."""
    t = pa.types
    if t.is_dictionary(type_):
        type_ = type_.value_type
    if t.is_integer(type_) or t.is_floating(type_) or t.is_decimal(type_):
        return "number"
    if t.is_string(type_) or t.is_large_string(type_) or t.is_string_view(type_):
        return "text"
    if t.is_boolean(type_):
        return "boolean"
    return str(type_)


def kind_of(ref_type: pa.DataType, cur_type: pa.DataType, declared: str | None) -> tuple[Kind | None, str]:
    """The test a feature gets, or None and why it gets none."""
    ref, cur = family(ref_type), family(cur_type)
    if declared == "numeric":
        if ref == "number" and cur in ("number", "text", "boolean"):
            return "numeric", ""  # the current side's non-numbers count as missing
        return None, f"declared numeric but holds {ref_type} in reference and {cur_type} in current"
    if declared == "categorical":
        if ref in ("number", "text", "boolean") and cur in ("number", "text", "boolean"):
            return "categorical", ""
        return None, f"declared categorical but holds {ref_type} in reference and {cur_type} in current"
    inferred = {"number": "numeric", "text": "categorical", "boolean": "categorical"}
    if ref not in inferred:
        return None, f"type {ref_type} is neither numeric nor text"
    if cur not in inferred:
        return None, f"type {cur_type} is neither numeric nor text"
    if ref == "number":
        # The reference's type holds: one "NaN", true or "" sent for a number turns the current
        # column into text; its non-numbers count as missing and the type change is reported.
        return "numeric", ""
    if inferred[ref] != inferred[cur]:
        return None, f"{inferred[ref]} ({ref_type}) in reference but {inferred[cur]} ({cur_type}) in current"
    return inferred[ref], ""  # type: ignore[return-value]


def compare_column(name: str, kind: Kind, ref: pa.ChunkedArray, cur: pa.ChunkedArray, engine: str) -> FeatureDrift | str:
    """The feature's test, or why it cannot run."""
    if kind == "numeric":
        ref_values, cur_values = _finite(ref), _finite(cur)
    else:
        ref_values, cur_values = _strings(ref), _strings(cur)
    if not len(ref_values) or not len(cur_values):
        return f"no values in the {'reference' if not len(ref_values) else 'current'} data"
    tested, figures = (_numeric if kind == "numeric" else _categorical)(ref_values, cur_values)
    test = stattests.default_for(kind)
    statistic, p = test.run(*tested, engine)
    distance = stattests.effect_for(kind)
    effect = {"effect": distance.run(*tested, engine).statistic, "effect_test": distance.label} if distance else {}
    return FeatureDrift(
        name=name,
        kind=kind,
        test=test.label,
        statistic=statistic,
        p_value=p,
        drifted=False,  # set once all features are tested
        n_reference=len(ref_values),
        n_current=len(cur_values),
        **figures,
        **effect,
    )


def matters(feature: FeatureDrift, threshold: float, effect_threshold: float) -> bool:
    """Drifted: significant after the correction, and large (no effect measured: the p-value alone)."""
    return feature.p_value < threshold and (not feature.effect_test or feature.effect > effect_threshold)


def corrected_threshold(p_values: np.ndarray, alpha: float, correction: str) -> float:
    """The per-feature p-value below which a feature has drifted."""
    n = len(p_values)
    if correction == "bonferroni":
        return alpha / n
    # Benjamini-Hochberg, as alibi-detect's fdr(): the largest rank k with p_(k) < alpha * k / n
    # sets the bar; with none, the lowest step alpha / n still separates (nothing passes it).
    steps = alpha * np.arange(1, n + 1) / n
    below = np.flatnonzero(np.sort(p_values) < steps)
    return float(steps[below.max()]) if below.size else alpha / n


def _finite(column: pa.ChunkedArray) -> np.ndarray:
    # NaN, infinities and non-numbers are counted in the data-quality section; the test takes the finite values.
    values = pc.drop_null(as_numbers(column)).to_numpy()
    finite = np.isfinite(values)
    return values if finite.all() else values[finite]


def _strings(column: pa.ChunkedArray) -> pa.Array:
    values = pc.drop_null(column)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    return pa.concat_arrays(values.cast(pa.string()).chunks) if values.num_chunks else pa.array([], pa.string())


def _numeric(ref: np.ndarray, cur: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]]:
    """What the test takes (the values), and the figures the report shows."""
    return (ref, cur), {
        "reference": {"mean": float(np.mean(ref)), "std": float(np.std(ref))},
        "current": {"mean": float(np.mean(cur)), "std": float(np.std(cur))},
        "histogram": _numeric_histogram(ref, cur),
    }


def _categorical(ref: pa.Array, cur: pa.Array) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]]:
    """What the test takes (the count of each category per side), and the figures the report shows."""
    # One dictionary for both sides, so a category new in `current` gets its own code.
    encoded = pa.concat_arrays([ref, cur]).dictionary_encode()
    categories = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    codes = encoded.indices.to_numpy()
    ref_counts = np.bincount(codes[: len(ref)], minlength=len(categories))
    cur_counts = np.bincount(codes[len(ref) :], minlength=len(categories))
    new = np.flatnonzero(ref_counts == 0)
    new = new[np.argsort(-cur_counts[new], kind="stable")]
    return (ref_counts, cur_counts), {
        "reference": _shares(categories, ref_counts, order=ref_counts + cur_counts),
        "current": _shares(categories, cur_counts, order=ref_counts + cur_counts),
        "histogram": _categorical_histogram(categories, ref_counts, cur_counts),
        "unseen": [str(c) for c in categories[new[:MAX_UNSEEN_LISTED]]],
        "n_unseen": len(new),
    }


def _numeric_histogram(ref: np.ndarray, cur: np.ndarray) -> Histogram:
    # Tails beyond the 0.5 / 99.5 percentiles fall into the end bins, so one outlier does
    # not squash the whole chart into a single bar. The percentiles only place the bins:
    # an evenly strided subsample of each side (at most HISTOGRAM_SAMPLE values) gives them
    # at a fraction of the cost of the whole columns; the counts use every value.
    sample = np.concatenate([ref[:: max(len(ref) // HISTOGRAM_SAMPLE, 1)], cur[:: max(len(cur) // HISTOGRAM_SAMPLE, 1)]])
    lo, hi = (float(q) for q in np.quantile(sample, [0.005, 0.995]))
    if lo == hi:
        lo, hi = float(min(ref.min(), cur.min())), float(max(ref.max(), cur.max()))
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, N_BINS + 1)
    labels = [f"{a:.4g} – {b:.4g}" for a, b in zip(edges[:-1], edges[1:])]
    return Histogram(labels, _bin_counts(ref, lo, hi).tolist(), _bin_counts(cur, lo, hi).tolist(), edges.tolist())


def _bin_counts(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Counts in N_BINS equal bins over [lo, hi], values outside counted in the end bins."""
    index = (values - lo) * (N_BINS / (hi - lo))
    np.clip(index, 0, N_BINS - 1, out=index)
    return np.bincount(index.astype(np.intp), minlength=N_BINS)


def _categorical_histogram(categories: np.ndarray, ref_counts: np.ndarray, cur_counts: np.ndarray) -> Histogram:
    order = np.argsort(-(ref_counts + cur_counts), kind="stable")
    shown, rest = order[:MAX_CATEGORIES_SHOWN], order[MAX_CATEGORIES_SHOWN:]
    labels = [str(c) for c in categories[shown]]
    ref, cur = ref_counts[shown].tolist(), cur_counts[shown].tolist()
    if rest.size:
        labels.append(f"({rest.size} others)")
        ref.append(int(ref_counts[rest].sum()))
        cur.append(int(cur_counts[rest].sum()))
    return Histogram(labels, [int(v) for v in ref], [int(v) for v in cur])


def _shares(categories: np.ndarray, counts: np.ndarray, order: np.ndarray) -> dict[str, float]:
    total = counts.sum() or 1
    top = np.argsort(-order, kind="stable")[:MAX_CATEGORIES_SHOWN]
    return {str(categories[i]): float(counts[i] / total) for i in top}

