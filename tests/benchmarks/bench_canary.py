"""Canaries of known quality, rolled out as the pipeline does: how often is each promoted or rolled back?

Seeded traffic through the local target (a `file://` model store in a temporary folder)
and the real analysis: each simulated day, the predictions split between stable and the
canary by the step's share; 80 % of them are answered, positively with the version's
satisfaction; then a daily run calls `deploy.core.advance_rollout` with the judge of
`deploy.core.make_judge` (the same `analysis.analyse` and `evidence` the pipeline runs).

For speed, the analysis reads the per-version counts and prediction summaries through its
source interface (`make_judge(feedback=..., predictions=...)`) instead of PostgreSQL: the
same `VersionFeedback` / `VersionPredictions` that `feedback.by_version` returns. The
confidence quantiles come from at most 3,000 sampled confidences per version and day.

Cases: stable's satisfaction is 85 %; canaries equal, 1, 3 and 10 points worse, 3 points
better, and a constant predictor (one label for every answer; satisfaction 50 %, the share
of that label). Stable answers "cat" 50 %, "dog" 35 %, "bird" 15 %, confidences Beta(8, 2).
Volumes: ~500 and ~50,000 predictions a day. Settings: the defaults of settings.py.

    ./build.sh bench canary [--seeds 200] [--workers 2]

The last line is one JSON object: per case and volume, the shares rolled back at the first
step, promoted, and still waiting at the maximum wait (rolled back for want of a verdict),
the mean days to a decision, and `goals_met`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from feedback_loop.deploy import core
from feedback_loop.deploy.analysis import AnalysisConfig
from feedback_loop.deploy.rollout import PROMOTED, ROLLED_BACK
from feedback_loop.deploy.targets.local import LocalTarget
from feedback_loop.feedback.by_version import QUANTILE_GRID, VersionFeedback, VersionPredictions
from feedback_loop.layout import ROLLOUT_FILE
from feedback_loop.settings import Settings

NAME = "bench-canary"
T0 = datetime(2026, 1, 5, tzinfo=timezone.utc)
DAY = timedelta(days=1)
STABLE_SATISFACTION = 0.85
ANSWERED = 0.8
MIX = {"cat": 0.50, "dog": 0.35, "bird": 0.15}
CASES = {"equal": 0.0, "1_worse": -0.01, "3_worse": -0.03, "10_worse": -0.10, "constant": None, "3_better": 0.03}
VOLUMES = {"small": 500, "large": 50_000}
MAX_DAYS = 30
SAMPLE_CAP = 3_000


def config_from(settings: Settings) -> AnalysisConfig:
    """The analysis advance_rollout builds from the same settings."""
    return AnalysisConfig.of({**settings.model_dump(), "model_name": NAME})


class Traffic:
    """The simulated predictions table and feedback, one entry per version and day."""

    def __init__(self, rng: np.random.Generator, canary_delta: float | None) -> None:
        self.rng = rng
        self.constant = canary_delta is None
        self.satisfaction = {"v1": STABLE_SATISFACTION, "v2": MIX["cat"] if self.constant else STABLE_SATISFACTION + canary_delta}
        self.days: dict[tuple[str, int], dict[str, Any]] = {}

    def serve(self, day: int, volume: int, canary_percent: int) -> None:
        total = int(self.rng.poisson(volume))
        to_canary = int(self.rng.binomial(total, canary_percent / 100))
        for version, n in (("v2", to_canary), ("v1", total - to_canary)):
            answered = int(self.rng.binomial(n, ANSWERED))
            positive = int(self.rng.binomial(answered, self.satisfaction[version]))
            if version == "v2" and self.constant:
                labels = {"cat": n}
            else:
                labels = dict(zip(MIX, (int(c) for c in self.rng.multinomial(n, list(MIX.values())))))
            confidences = self.rng.beta(8, 2, size=min(n, SAMPLE_CAP))
            self.days[(version, day)] = {"n": n, "answered": answered, "positive": positive, "labels": labels, "conf": confidences}

    def _window(self, version: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
        first, last = (start - T0) // DAY, (end - T0) // DAY  # days [first, last)
        return [self.days[(version, d)] for d in range(max(first, 0), last) if (version, d) in self.days]

    def feedback(self, versions: Sequence[str], start: datetime, end: datetime) -> dict[str, VersionFeedback]:
        answer = {}
        for v in versions:
            rows = self._window(v, start, end)
            answer[v] = VersionFeedback(v, sum(r["answered"] for r in rows), sum(r["positive"] for r in rows))
        return answer

    def predictions(self, versions: Sequence[str], start: datetime, end: datetime) -> dict[str, VersionPredictions]:
        answer = {}
        for v in versions:
            rows = self._window(v, start, end)
            labels: dict[str, int] = {}
            for r in rows:
                for label, k in r["labels"].items():
                    labels[label] = labels.get(label, 0) + k
            labels = {k: c for k, c in labels.items() if c}
            conf = np.concatenate([r["conf"] for r in rows]) if rows else np.array([])
            quantiles = tuple(float(q) for q in np.quantile(conf, QUANTILE_GRID)) if conf.size else ()
            answer[v] = VersionPredictions(v, sum(r["n"] for r in rows), labels, len(labels), False, quantiles, ())
        return answer


def make_version(root: Path, version: str) -> Path:
    folder = root / "candidates" / version
    (folder / "saved_model" / "1").mkdir(parents=True, exist_ok=True)
    (folder / "lineage.json").write_text(json.dumps({"version": version}))
    return folder


def one_rollout(store: str, root: Path, seed: int, delta: float | None, volume: int, settings: Settings) -> dict[str, Any]:
    """One canary from start to decision; what happened and on which day."""
    rng = np.random.default_rng(seed)
    traffic = Traffic(rng, delta)
    config = config_from(settings)
    target = LocalTarget(store, NAME)
    core.deploy(make_version(root, "v1"), store, NAME, target, T0 - 30 * DAY,
                steps=settings.rollout_steps, bake_hours=settings.bake_hours)
    state, _ = core.deploy(make_version(root, "v2"), store, NAME, LocalTarget(store, NAME), T0,
                           steps=settings.rollout_steps, bake_hours=settings.bake_hours)
    for day in range(MAX_DAYS):
        percent = state.steps[state.step_index] if state.canary is not None else 0
        traffic.serve(day, volume, percent)
        now = T0 + (day + 1) * DAY
        step = state.step_index
        judge = core.make_judge(config, now, feedback=traffic.feedback, predictions=traffic.predictions)
        state, moved = core.advance_rollout(LocalTarget(store, NAME), now, judge=judge, max_wait_hours=settings.max_wait_hours)
        last = next((t for t in reversed(moved) if t.changed), moved[-1])
        if last.action in (PROMOTED, ROLLED_BACK):
            return {"outcome": last.action, "day": day + 1, "step": step, "timed_out": "no verdict" in last.reason}
    return {"outcome": "in_progress", "day": MAX_DAYS, "step": state.step_index, "timed_out": False}


def run_case(args: tuple[str, str, int, dict[str, Any]]) -> tuple[str, str, dict[str, Any]]:
    case, volume_name, seeds, overrides = args
    settings = Settings(**overrides)
    root = Path(tempfile.mkdtemp(prefix=f"bench-canary-{case}-{volume_name}-"))
    store = (root / "store").as_uri()
    results = []
    try:
        for seed in range(seeds):
            (root / "store" / NAME / ROLLOUT_FILE).unlink(missing_ok=True)  # a fresh rollout, same published versions
            results.append(one_rollout(store, root, 1000 * seed + 7, CASES[case], VOLUMES[volume_name], settings))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    share = lambda pick: round(sum(map(pick, results)) / len(results), 4)  # noqa: E731
    decided = [r["day"] for r in results if r["outcome"] != "in_progress"]
    return case, volume_name, {
        "rolled_back_first_step": share(lambda r: r["outcome"] == ROLLED_BACK and r["step"] == 0),
        "rolled_back_first_look": share(lambda r: r["outcome"] == ROLLED_BACK and r["day"] == 1),
        "promoted": share(lambda r: r["outcome"] == PROMOTED),
        "waiting_at_max_wait": share(lambda r: r["timed_out"]),
        "mean_days_to_decision": round(float(np.mean(decided)), 2) if decided else None,
        "seeds": len(results),
    }


def goals(report: dict[str, dict[str, dict[str, Any]]]) -> dict[str, bool]:
    have = lambda case, volume: report.get(case, {}).get(volume)  # noqa: E731
    checks: dict[str, bool] = {}
    for volume in VOLUMES:
        if have("constant", volume):
            checks[f"constant_rolled_back_first_look_{volume}"] = have("constant", volume)["rolled_back_first_look"] >= 0.99
        if have("3_worse", volume):
            checks[f"3_worse_never_promoted_{volume}"] = 1 - have("3_worse", volume)["promoted"] >= 0.95
        if have("10_worse", volume):
            checks[f"10_worse_rolled_back_first_step_{volume}"] = have("10_worse", volume)["rolled_back_first_step"] >= 0.99
    for case in ("equal", "3_better"):
        if have(case, "large"):
            checks[f"{case}_promoted_large"] = have(case, "large")["promoted"] >= 0.90
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--volumes", default=",".join(VOLUMES))
    parser.add_argument("--set", action="append", default=[], metavar="NAME=JSON", help="a setting other than its default")
    args = parser.parse_args(argv)
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    jobs = [(c, v, args.seeds, overrides) for v in args.volumes.split(",") for c in args.cases.split(",")]
    began = time.monotonic()
    report: dict[str, dict[str, dict[str, Any]]] = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for case, volume, result in pool.map(run_case, jobs):
            report.setdefault(case, {})[volume] = result
            print(f"{case:>9} {volume:>5}: {result}", file=sys.stderr, flush=True)
    checks = goals(report)
    settings = Settings(**overrides)
    print(json.dumps({
        "cases": report,
        "settings": {k: getattr(settings, k) for k in ("canary_margin", "feedback_alpha", "min_feedback_samples",
                                                       "max_wait_hours", "rollout_steps", "bake_hours")},
        "goals": checks,
        "goals_met": bool(checks) and all(checks.values()),
        "seconds": round(time.monotonic() - began, 1),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
