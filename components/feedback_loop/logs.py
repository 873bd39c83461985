"""Logging set up once, honouring RETRAIN_LOG_LEVEL in every process (CLI and component)."""

from __future__ import annotations

import logging
import os


def setup(level: str | None = None) -> None:
    level = (level or os.environ.get("RETRAIN_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("urllib3", "google", "absl", "h5py", "matplotlib", "numba"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
