"""Logging set up once, honouring RETRAIN_LOG_LEVEL in every process (CLI and component)."""

from __future__ import annotations

import logging
import os
import sys


def setup(level: str | None = None, export: bool = False) -> None:
    """`level` (a component's log_level parameter, a CLI flag), else RETRAIN_LOG_LEVEL, else INFO;
    with `export`, processes this one starts (training workers) inherit it."""
    level = (level or os.environ.get("RETRAIN_LOG_LEVEL") or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        level = "INFO"  # a pipeline parameter is a free string: an unknown level must not fail a task
    if export:
        os.environ["RETRAIN_LOG_LEVEL"] = level
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("urllib3", "google", "absl", "h5py", "matplotlib", "numba"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    sys.excepthook = _one_line_errors


def _one_line_errors(kind, value, traceback) -> None:  # noqa: ANN001 (sys.excepthook's signature)
    from feedback_loop.errors import FeedbackLoopError

    if isinstance(value, FeedbackLoopError) and not logging.getLogger().isEnabledFor(logging.DEBUG):
        # A component's user error reads as one line in the task log, not a traceback.
        print(f"error: {value}", file=sys.stderr, flush=True)
        return
    sys.__excepthook__(kind, value, traceback)
