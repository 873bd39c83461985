"""Training windows: which history a new model learns from, and how much each row counts.

    expanding   all history (the default)
    sliding     only the last `window_days` days before the newest row
    weighted    all history, each row weighted by 0.5 ** (age / half_life_days): a row one
                half-life older than the newest counts half as much (weights average 1)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from feedback_loop.dataset import CREATED_AT
from feedback_loop.errors import SettingsError

EXPANDING, SLIDING, WEIGHTED = "expanding", "sliding", "weighted"
WINDOWS = (EXPANDING, SLIDING, WEIGHTED)


def check(window: str, window_days: float, half_life_days: float) -> None:
    if window not in WINDOWS:
        raise SettingsError(f"unknown window {window!r}: choose {', '.join(WINDOWS)}")
    if window == SLIDING and window_days <= 0:
        raise SettingsError(f"a sliding window needs window_days > 0, not {window_days:g}")
    if window == WEIGHTED and half_life_days <= 0:
        raise SettingsError(f"a weighted window needs half_life_days > 0, not {half_life_days:g}")


def select(frame: pd.DataFrame, window: str, window_days: float, end: pd.Timestamp | None = None) -> pd.DataFrame:
    """The rows a window keeps; `end` (default: the newest row) is where a sliding window ends."""
    check(window, window_days, 1.0)
    if window != SLIDING or frame.empty:
        return frame
    times = pd.to_datetime(frame[CREATED_AT], utc=True)
    end = times.max() if end is None else end
    return frame[times > end - pd.Timedelta(days=window_days)]


def decay_weights(times: pd.Series, half_life_days: float, end: pd.Timestamp | None = None) -> np.ndarray:
    """Exponential-decay sample weights by age, normalised to mean 1 (float32)."""
    check(WEIGHTED, 1.0, half_life_days)
    stamps = pd.to_datetime(times, utc=True)
    end = stamps.max() if end is None else end
    age_days = ((end - stamps).dt.total_seconds() / 86_400).clip(lower=0).to_numpy(np.float64)
    weights = 0.5 ** (age_days / half_life_days)
    return (weights / weights.mean()).astype(np.float32) if len(weights) else weights.astype(np.float32)
