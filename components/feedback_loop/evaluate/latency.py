"""The latency gate's measurement: both models timed interleaved, in one process, round by round.

Timing one model after the other compares two moments of a shared machine, not two models:
a fine-tuned copy of the very same architecture once measured 1.86x slower. Here every
round times both models back to back, in alternating order, so whatever else the machine
does at that moment weighs on both; the per-round ratios are paired, and their median
ignores the rounds a burst of other work hit only one side. Warm-up rounds (tracing,
allocation, caches) are timed by nobody.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from feedback_loop.train.core import LoadedModel
from feedback_loop.train.families import call_inputs

WARMUP_ROUNDS = 5


@dataclass(frozen=True)
class LatencyComparison:
    """Candidate vs production single-request latency, from paired rounds."""

    candidate_ms: float  # median over rounds of the mean time of one request
    production_ms: float
    ratio: float  # median of the per-round candidate / production ratios
    ratio_low: float  # distribution-free confidence interval of that median
    ratio_high: float
    difference_ms: float  # median of the per-round candidate - production differences
    rounds: int
    calls_per_round: int
    confidence: float

    def as_metrics(self) -> dict[str, float]:
        return {
            "candidate_ms": self.candidate_ms,
            "production_ms": self.production_ms,
            "ratio": self.ratio,
            "ratio_ci_low": self.ratio_low,
            "ratio_ci_high": self.ratio_high,
            "difference_ms": self.difference_ms,
            "rounds": float(self.rounds),
        }


def compare_latency(
    candidate: Callable[[], Any],
    production: Callable[[], Any],
    rounds: int = 100,
    calls_per_round: int = 5,
    confidence: float = 0.95,
    warmup_rounds: int = WARMUP_ROUNDS,
) -> LatencyComparison:
    """Times `candidate()` and `production()` over `rounds` interleaved rounds (warm-up excluded)."""
    if rounds < 1 or calls_per_round < 1:
        raise ValueError("latency needs at least one round of one call")
    pair = (candidate, production)
    per_call = np.zeros((rounds, 2))
    for index in range(-warmup_rounds, rounds):
        # Alternate who goes first: a model timed right after the other may inherit its warm caches.
        order = (0, 1) if index % 2 == 0 else (1, 0)
        for side in order:
            call = pair[side]
            start = time.perf_counter()
            for _ in range(calls_per_round):
                call()
            elapsed = (time.perf_counter() - start) * 1000 / calls_per_round
            if index >= 0:
                per_call[index, side] = elapsed
    # A timer never reads 0 for a real call; the floor keeps a ratio defined anyway.
    per_call = np.maximum(per_call, 1e-6)
    ratios = per_call[:, 0] / per_call[:, 1]
    low, high = median_interval(ratios, confidence)
    return LatencyComparison(
        candidate_ms=float(np.median(per_call[:, 0])),
        production_ms=float(np.median(per_call[:, 1])),
        ratio=float(np.median(ratios)),
        ratio_low=low,
        ratio_high=high,
        difference_ms=float(np.median(per_call[:, 0] - per_call[:, 1])),
        rounds=rounds,
        calls_per_round=calls_per_round,
        confidence=confidence,
    )


def median_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Order-statistic confidence interval of the median (no assumption on the distribution)."""
    ordered = np.sort(np.asarray(values, np.float64))
    n = len(ordered)
    half_width = NormalDist().inv_cdf(0.5 + confidence / 2) * math.sqrt(n) / 2
    # 1-based ranks j = floor(n/2 - h) and k = ceil(1 + n/2 + h), as 0-based indices.
    low = max(0, math.floor(n / 2 - half_width) - 1)
    high = min(n - 1, math.ceil(1 + n / 2 + half_width) - 1)
    return float(ordered[low]), float(ordered[high])


def model_call(model: LoadedModel, row: pd.DataFrame) -> Callable[[], Any]:
    """One single-request call of `model` on `row`, as a traced graph like TF Serving runs it."""
    inputs = tf.nest.map_structure(tf.constant, call_inputs(model.family_impl.inputs(row, model.spec)))
    keras_model = model.keras_model
    # Traced: eager Python overhead is not the model's cost.
    traced = tf.function(lambda x: keras_model(x, training=False))
    return lambda: np.asarray(traced(inputs))


def compare_models(
    candidate: LoadedModel, production: LoadedModel, row: pd.DataFrame, rounds: int, confidence: float
) -> LatencyComparison:
    return compare_latency(model_call(candidate, row), model_call(production, row), rounds, confidence=confidence)
