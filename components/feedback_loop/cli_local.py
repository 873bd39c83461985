"""`feedback-loop demo | run | adopt`: the loop on this machine, and bringing your own model.

Thin wrappers: `demo.scenarios` seeds a scenario, `adopt` builds a version from a model
trained elsewhere, `deploy.adopt` makes it production, `local` runs the compiled pipeline.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from feedback_loop import storage
from feedback_loop.deploy.targets import TARGETS
from feedback_loop.errors import FeedbackLoopError
from feedback_loop.settings import Settings

_WORKDIR = click.option(
    "--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("local_outputs"), show_default=True,
    help="Where runs, logs, last-run.json (and the embedded PostgreSQL) are kept.",
)
_PACKAGE = click.option(
    "--package", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
    help="Compiled pipeline YAML (default: the packaged one, as `feedback-loop compile` writes it).",
)
_VERBOSE = click.option("--verbose", is_flag=True, help="Print kfp.local's full output (each task's inputs and outputs) instead of one line per task.")
_CONTAINERS = click.option(
    "--containers", is_flag=True,
    help="Run each task in the image its YAML names (kfp.local.DockerRunner on Docker or Podman; ./build.sh images first).",
)


def run_locally(
    settings: Settings, workdir: Path, dsn: str, verbose: bool, containers: bool = False, package: Path | None = None
) -> dict[str, Any]:
    """Runs the compiled pipeline with kfp.local against `dsn`; prints and writes the summary."""
    from feedback_loop import local
    from feedback_loop.pipelines.parameters import pipeline_arguments

    hmac_key = os.environ.get("FEEDBACK_HMAC_KEY") or _local_hmac_key(workdir / "hmac-key")
    started = datetime.now(timezone.utc)
    log_path = None if verbose else workdir / "logs" / f"run-{started:%Y%m%d-%H%M%S}.log"
    if log_path:
        click.echo(f"running the pipeline with kfp.local{' in containers' if containers else ''} (task logs: {log_path})")
    if containers:
        from feedback_loop import containers as images

        # Mounted at their own paths: a file:// model store, and the demo's inputs the rows' input_uri name.
        shared = [storage.local_path(settings.model_store_uri)] if settings.model_store_uri.startswith("file://") else []
        shared += [workdir / "inputs"] if (workdir / "inputs").is_dir() else []
        with images.reachable_dsn(dsn) as container_dsn:
            secrets = {"feedback-loop-db": {"database-url": container_dsn, "hmac-key": hmac_key}}  # as the manifests' Secrets hold them
            if os.environ.get("NOTIFY_WEBHOOK_URL"):
                secrets["feedback-loop-notify"] = {"webhook-url": os.environ["NOTIFY_WEBHOOK_URL"]}
            run_dir = images.run_pipeline(
                workdir / "runs", pipeline_arguments(settings), secrets, shared, package or local.PIPELINE_YAML,
                log_path=log_path, echo=click.echo,
            )
    else:
        os.environ["DATABASE_URL"] = dsn  # what the Secret does on a cluster
        os.environ["FEEDBACK_HMAC_KEY"] = hmac_key
        run_dir = local.run_pipeline(
            workdir / "runs", pipeline_arguments(settings), package or local.PIPELINE_YAML, log_path=log_path, echo=click.echo
        )
    summary = local.finish(workdir, run_dir, (datetime.now(timezone.utc) - started).total_seconds())
    click.echo(local.render(summary))
    if summary["drift"].get("report_html"):
        click.echo(f"  drift      {summary['drift']['report_html']} (open in a browser)")
    click.echo(f"  summary    {workdir / 'last-run.json'}")
    if summary["status"] != "succeeded":
        raise FeedbackLoopError(f"the run did not finish: {', '.join(summary['failed_tasks'])} did not run; see {log_path or 'the log above'}")
    return summary


def _local_hmac_key(path: Path) -> str:
    """A key for local runs, made once and kept beside the local database (mode 600)."""
    import secrets

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()


@click.command()
@_WORKDIR
@click.option("--scenario", type=click.Choice(["cats-vs-dogs", "regression"]), default="cats-vs-dogs", show_default=True,
              help="cats-vs-dogs (images, a new camera) or regression (a drifting tabular stream, adopted first).")
@click.option("--fresh", is_flag=True, help="Forget earlier demo runs: new database, model store and traffic.")
@click.option("--force", is_flag=True, default=None, help="Retrain whatever the signals say.")
@click.option("--dry-run", is_flag=True, default=None, help="Train and evaluate, but neither publish nor deploy.")
@_PACKAGE
@_VERBOSE
@_CONTAINERS
@click.pass_context
def demo(
    ctx: click.Context, workdir: Path, scenario: str, fresh: bool, force: bool | None, dry_run: bool | None, package: Path | None,
    verbose: bool, containers: bool,
) -> None:
    """Run a seeded scenario of the loop on this machine (embedded PostgreSQL, kfp.local)."""
    from feedback_loop import local
    from feedback_loop.cli import _settings
    from feedback_loop.demo import scenarios
    from feedback_loop.feedback import store

    workdir = workdir.resolve()
    if fresh:
        for part in ("postgres", "model-store", "inputs", "runs", "logs"):
            shutil.rmtree(workdir / part, ignore_errors=True)
    chosen = scenarios.SCENARIOS[scenario]
    settings = _settings(
        ctx, deploy_target="local", model_store_uri=storage.normalize(str(workdir / "model-store")), force=force, dry_run=dry_run,
        **{k: v for k, v in chosen.settings.items() if not os.environ.get(f"RETRAIN_{k.upper()}")},  # the environment wins
    )
    with local.database(workdir / "postgres") as dsn:
        conn = store.connect(dsn)
        try:
            store.migrate(conn)
            click.echo(chosen.seed(conn, settings, workdir / "inputs"))
        finally:
            conn.close()
        run_locally(settings, workdir, dsn, verbose, containers, package)


@click.command()
@_WORKDIR
@click.option("--force", is_flag=True, default=None, help="Retrain whatever the signals say.")
@click.option("--dry-run", is_flag=True, default=None, help="Train and evaluate, but neither publish nor deploy.")
@_PACKAGE
@_VERBOSE
@click.pass_context
def run(ctx: click.Context, workdir: Path, force: bool | None, dry_run: bool | None, package: Path | None, verbose: bool) -> None:
    """Run the loop once on this machine with kfp.local: your DATABASE_URL (else an embedded PostgreSQL) and model store."""
    from feedback_loop import local
    from feedback_loop.cli import _settings
    from feedback_loop.feedback import store

    settings = _settings(ctx, force=force, dry_run=dry_run)
    workdir = workdir.resolve()
    with local.database(workdir / "postgres") as dsn:  # DATABASE_URL when set
        conn = store.connect(dsn)
        try:
            store.migrate(conn)  # idempotent: the loop's tables beside yours
        finally:
            conn.close()
        run_locally(settings, workdir, dsn, verbose, package=package)


@click.command()
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="The Keras model that serves today (.keras).")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path), help="The rows it was trained on (.parquet or .csv).")
@click.option("--label", "label_column", required=True, help="The label column of --data (and --test).")
@click.option("--test", "test_path", type=click.Path(path_type=Path), default=None, help="Its test set, same columns; kept as the guard set.")
@click.option("--metric", default=None, help="Its validated metric, e.g. accuracy=0.91 or mse=2.3 (default: measured on --test, else on --data).")
@click.option("--family", default=None, help="Model family (default: the family setting; auto infers it from the data and the model).")
@click.option("--classes", default=None, help="Class labels in the model's output order, comma-separated (default: integer labels are indices, else sorted).")
@click.option("--version", "version", default=None, help="Version name in the model store (default: v<UTC time>).")
@click.option("--target", "deploy_target", type=click.Choice(list(TARGETS)), default=None, help="Default: the deploy_target setting.")
@click.option("--repoint", is_flag=True, help="KServe: point the InferenceService's storageUri at the adopted copy (default: leave what serves).")
@click.pass_context
def adopt(ctx: click.Context, model_path: Path, data_path: Path, label_column: str, test_path: Path | None, metric: str | None,
          family: str | None, classes: str | None, version: str | None, deploy_target: str | None, repoint: bool) -> None:
    """Register the model in production as the loop's stable version, without retraining."""
    from feedback_loop import adopt as adopting
    from feedback_loop.cli import _dsn, _settings
    from feedback_loop.deploy import adopt as deployment
    from feedback_loop.deploy.record import record_deployments
    from feedback_loop.deploy.targets import make_target

    settings = _settings(ctx, deploy_target=deploy_target, family=family)
    target = make_target(settings.deploy_target, settings.model_store_uri, settings.model_name, settings.namespace)
    deployment.check(target, settings.model_name)  # before the (slower) build
    request = adopting.Request(
        model_path, data_path, label_column, settings.model_name, test_path, adopting.parse_metric(metric), settings.family,
        [c.strip() for c in classes.split(",") if c.strip()] if classes else [], version,
    )
    now = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="adopt-") as scratch:
        built = adopting.build(request, Path(scratch) / "version", now)
        state, transition = deployment.adopt(
            built.model_dir, settings.model_store_uri, settings.model_name, built.version, target, now, repoint=repoint
        )
    record_deployments(_dsn(settings), settings.model_name, [transition], state)
    v = built.lineage["validation"]
    left_out = ", ".join(f"{n} {reason}" for reason, n in built.excluded.items())
    click.echo(
        f"adopted {settings.model_name} {built.version} ({built.lineage['family']}, {built.rows} rows"
        + (f"; left out {left_out}" if left_out else "") + f"; validated {v['metric']} {v['value']:.4g}"
        + f"{'' if v.get('held_out') else ' on its training rows'}) as production on {target}: {transition.reason}"
    )
