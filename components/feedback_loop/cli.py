"""`feedback-loop`: compile the pipeline, run the loop locally, inspect what it decided.

Settings come from defaults < --config JSON < RETRAIN_* environment < flags. Errors a user
can act on print as one line and exit with status 2; nothing else prints a traceback
unless --log-level DEBUG.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from feedback_loop import logs, storage
from feedback_loop.deploy.targets import TARGETS
from feedback_loop.errors import FeedbackLoopError
from feedback_loop.pipelines.parameters import pipeline_arguments  # noqa: F401 (public here too, as before)
from feedback_loop.settings import Settings, load

log = logging.getLogger("feedback_loop")


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FeedbackLoopError as err:
            click.echo(f"error: {err}", err=True)
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                raise
            sys.exit(2)
        except Exception as err:
            # A database driver's error anywhere below: its one-line class (the DSN withheld).
            if not type(err).__module__.startswith(("psycopg2", "adbc_driver")):
                raise
            from feedback_loop.feedback import store

            click.echo(f"error: {store.classify(err, '')}", err=True)
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                raise
            sys.exit(2)


@click.group(cls=_Group)
@click.option("--config", type=click.Path(dir_okay=False), help="JSON file of settings (under env and flags).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False), default=None)
@click.version_option(package_name="feedback-loop")
@click.pass_context
def main(ctx: click.Context, config: str | None, log_level: str | None) -> None:
    """Keep a production model healthy: drift, feedback, retrain, evaluate, canary."""
    ctx.obj = {"config": config, "log_level": log_level}


def _settings(ctx: click.Context, **flags: Any) -> Settings:
    settings = load(ctx.obj["config"], log_level=ctx.obj["log_level"], **flags)
    logs.setup(settings.log_level)
    return settings


def _dsn(settings: Settings) -> str | None:
    return settings.database_url.get_secret_value() if settings.database_url else None


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[Any]:
    """A connection to the feedback database (DATABASE_URL), closed on the way out."""
    from feedback_loop.feedback import store

    dsn = _dsn(settings)
    conn = store.connect(dsn)
    try:
        with store.classified(dsn or ""):
            yield conn
    finally:
        conn.close()


@main.command()
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Where to write the YAML.")
@click.option("--registry", default=None, help="Container registry of the component images (default ghcr.io/feedback-loop).")
@click.option(
    "--accelerator-type",
    default="nvidia.com/gpu",
    show_default=True,
    help="Kubernetes resource of the training task's accelerator, e.g. amd.com/gpu.",
)
@click.option("--accelerator-count", type=click.IntRange(0), default=1, show_default=True, help="Accelerators for the training task (0: none).")
def compile(  # noqa: A001 (the command's name)
    output: Path | None, registry: str | None, accelerator_type: str = "nvidia.com/gpu", accelerator_count: int = 1
) -> None:
    """Compile the retraining pipeline to YAML (deterministic: same code, same bytes)."""
    from kfp import compiler

    from feedback_loop import local
    from feedback_loop.images import DEFAULT_REGISTRY
    from feedback_loop.pipelines.retraining_pipeline import build_pipeline

    output = output or local.PIPELINE_YAML
    with tempfile.TemporaryDirectory() as scratch:
        staged = Path(scratch) / output.name
        compiler.Compiler().compile(build_pipeline(accelerator_type, accelerator_count), str(staged))
        if registry:
            staged.write_text(staged.read_text().replace(f"{DEFAULT_REGISTRY}/", f"{registry.rstrip('/')}/"))
        shutil.move(staged, output)
    click.echo(f"wrote {output}")


@main.command()
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def history(ctx: click.Context, limit: int, as_json: bool) -> None:
    """The last retrain decisions (from the retrain_runs table; needs DATABASE_URL)."""
    from feedback_loop.feedback import store

    settings = _settings(ctx)
    with _database(settings) as conn:
        rows = store.history(conn, settings.model_name, limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo(f"no decision recorded yet for {settings.model_name}")
        return
    click.echo(f"{'started (UTC)':<17}  {'decision':<10}  {'feedback':>8}  {'negative':>8}  {'drift':<5}  {'run':<40}  reasons")
    for row in rows:
        stats = row["stats"] or {}
        click.echo(
            f"{row['started_at'].astimezone(timezone.utc):%Y-%m-%d %H:%M}  {'retrain' if row['retrain'] else 'no retrain':<10}  "
            f"{stats.get('feedback_count', ''):>8}  {stats.get('negative_count', ''):>8}  {'yes' if stats.get('is_drift') else 'no':<5}  "
            f"{(row['run_name'] or '-')[:40]:<40}  {'; '.join(row['reasons'])}"
        )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@click.option("--force", is_flag=True, default=None, help="Decide as a forced run would.")
@click.pass_context
def check(ctx: click.Context, as_json: bool, force: bool | None) -> None:
    """Compute the retrain decision now, without training (exit 0 whichever it is; needs DATABASE_URL)."""
    import os

    from feedback_loop.decide import check as checking
    from feedback_loop.feedback.pseudonyms import HMAC_KEY_ENV

    settings = _settings(ctx, force=force)
    result = checking.check(settings, _dsn(settings), hmac_key=os.environ.get(HMAC_KEY_ENV) or None)
    click.echo(json.dumps(result, indent=2, default=str) if as_json else checking.render(result))


@main.command()
@click.option("--retention-days", type=click.IntRange(min=1), default=None, help="Keep this many days (setting retention_days, default 180).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.pass_context
def purge(ctx: click.Context, retention_days: int | None, dry_run: bool) -> None:
    """Delete predictions and feedback older than the retention period (needs DATABASE_URL)."""
    from feedback_loop.feedback import store

    settings = _settings(ctx, retention_days=retention_days)
    with _database(settings) as conn:
        counts = store.purge(conn, settings.retention_days, dry_run=dry_run, inputs_uri=settings.inputs_uri)
    verb = "would delete" if dry_run else "deleted"
    inputs = f", {counts['inputs']} raw inputs under {settings.inputs_uri}" if "inputs" in counts else ""
    click.echo(f"{verb} {counts['predictions']} predictions and {counts['feedback']} feedback rows{inputs} older than {settings.retention_days} days")


@main.command("render-isvc")
@click.option("--name", required=True, help="InferenceService name.")
@click.option("--storage-uri", required=True, help="Where the SavedModel lies (gs://..., s3://..., pvc://...).")
@click.option("--namespace", default="default", show_default=True)
@click.option("--canary", type=click.IntRange(0, 100), default=None, help="canaryTrafficPercent for the new revision.")
@click.option("--service-account", default="", help="ServiceAccount with read access to the storage.")
def render_isvc(name: str, storage_uri: str, namespace: str, canary: int | None, service_account: str) -> None:
    """Print the KServe InferenceService the loop would apply, as YAML."""
    import yaml

    from feedback_loop.deploy.isvc import inference_service

    manifest = inference_service(name, namespace, storage_uri, canary_percent=canary, service_account=service_account)
    click.echo(yaml.safe_dump(manifest, sort_keys=False), nl=False)


def _kfp_options(command: Any) -> Any:
    """--host/--namespace/--token (else KFP_HOST, KFP_NAMESPACE, KFP_TOKEN), the package and experiment."""
    from feedback_loop.operate import kfp_api

    for option in reversed([
        click.option("--host", default=None, help="KFP API address (env KFP_HOST)."),
        click.option("--namespace", "kfp_namespace", default=None, help="Kubeflow profile namespace (env KFP_NAMESPACE)."),
        click.option("--token", default=None, help="Bearer token (env KFP_TOKEN; prefer the env: flags show in `ps`)."),
        click.option("--package", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Compiled pipeline YAML (default: the packaged one)."),
        click.option("--experiment", default=kfp_api.DEFAULT_EXPERIMENT, show_default=True),
        click.option("--run-service-account", default="", help="ServiceAccount the run's pods use (e.g. feedback-loop)."),
    ]):
        command = option(command)
    return command


@main.command()
@_kfp_options
@click.option("--run-name", default=None, help="Name of the run in the UI.")
@click.option("--force", is_flag=True, default=None, help="Retrain whatever the signals say.")
@click.option("--dry-run", is_flag=True, default=None, help="Train and evaluate, but neither publish nor deploy.")
@click.pass_context
def submit(ctx: click.Context, host, kfp_namespace, token, package, experiment, run_service_account, run_name,  # noqa: ANN001
           force=None, dry_run=None) -> None:  # noqa: ANN001
    """Start one run of the pipeline on Kubeflow (settings become its parameters)."""
    from feedback_loop import local
    from feedback_loop.operate import kfp_api

    arguments = kfp_api.check_cluster_arguments(pipeline_arguments(_settings(ctx, force=force, dry_run=dry_run)))
    connection = kfp_api.Connection.from_env(host, kfp_namespace, token)
    run_id, name = kfp_api.submit(connection, package or local.PIPELINE_YAML, arguments, experiment=experiment,
                                  run_name=run_name, service_account=run_service_account)
    click.echo(f"started run {name} ({run_id}) in experiment {experiment}")


@main.command()
@_kfp_options
@click.option("--name", "schedule_name", default="feedback-loop-daily", show_default=True, help="The recurring run's name (its identity).")
@click.option("--cron", default="0 0 3 * * *", show_default=True, help="Six fields, seconds first.")
@click.option("--enable/--disable", "enabled", default=None, help="Start or pause the recurring run (default: keep; new ones start enabled).")
@click.option("--replace-running", is_flag=True, help="Replace the recurring run even if one of its runs is in flight (it is killed).")
@click.pass_context
def schedule(ctx: click.Context, host, kfp_namespace, token, package, experiment, run_service_account,  # noqa: ANN001
             schedule_name, cron, enabled, replace_running) -> None:
    """Create or update the recurring run by name: newest pipeline version, one run at a time, no catch-up."""
    from feedback_loop import local
    from feedback_loop.operate import kfp_api
    from feedback_loop.pipelines.retraining_pipeline import PIPELINE_NAME

    arguments = kfp_api.check_cluster_arguments(pipeline_arguments(_settings(ctx)))
    connection = kfp_api.Connection.from_env(host, kfp_namespace, token)
    result = kfp_api.schedule(
        connection, package or local.PIPELINE_YAML, arguments, pipeline_name=PIPELINE_NAME, name=schedule_name,
        cron=cron, experiment=experiment, enabled=enabled, service_account=run_service_account, replace_running=replace_running,
    )
    state = "enabled" if result.enabled else "disabled"
    click.echo(f"recurring run {schedule_name} {result.action} ({result.recurring_run_id}): {result.version_name} on {cron!r}, {state}")


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", default=None, help="Model name on the endpoints (default: the model_name setting).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 inside a pod).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--max-body-bytes", default=4 << 20, show_default=True, type=click.IntRange(1024), help="Larger request bodies get 413.")
@click.option("--max-rows", default=1024, show_default=True, type=click.IntRange(1), help="More rows per request get 413.")
@click.option("--capture/--no-capture", default=True, show_default=True, help="Write each prediction to the feedback store (needs DATABASE_URL).")
@click.option("--capture-queue-rows", default=10_000, show_default=True, type=click.IntRange(1), help="Rows waiting for the database, at most; more are dropped and counted.")
@click.option("--capture-rows-in", type=click.Choice(["server", "helper"]), default="helper", show_default=True,
              help="Where prediction rows are built: the server's process or a helper process.")
@click.pass_context
def serve(ctx: click.Context, model_dir: Path, name: str | None, host: str, port: int, max_body_bytes: int, max_rows: int,
          capture: bool, capture_queue_rows: int, capture_rows_in: str) -> None:
    """Serve a published version (v1 and v2 REST, /v1/feedback, /metrics) with KServe's ModelServer; one without its _COMPLETE marker is refused."""
    import os

    from feedback_loop.feedback.pseudonyms import HMAC_KEY_ENV
    from feedback_loop.serving.capture import CaptureConfig
    from feedback_loop.serving.model import require_complete
    from feedback_loop.serving.server import serve as run_server

    settings = _settings(ctx)
    require_complete(model_dir)
    run_server(
        model_dir, name or settings.model_name, host, port, settings.log_level,
        capture=CaptureConfig(dsn=_dsn(settings) if capture else None, queue_rows=capture_queue_rows,
                              build_process=capture_rows_in == "helper"),
        max_body_bytes=max_body_bytes, max_rows=max_rows, hmac_key=os.environ.get(HMAC_KEY_ENV) or None,
    )


@main.command()
@click.option("--reason", default="operator kill switch", show_default=True, help="Recorded with the roll-back.")
@click.option("--target", "deploy_target", type=click.Choice(list(TARGETS)), default=None, help="Default: the deploy_target setting.")
@click.option("--to", "to_version", default=None, help="Put this earlier, complete version back at 100 % (undoes a promotion).")
@click.pass_context
def rollback(ctx: click.Context, reason: str, deploy_target: str | None, to_version: str | None) -> None:
    """Roll the canary in progress back now (the stable version serves 100 % again), or with --to, go back to a version."""
    from feedback_loop.deploy import core
    from feedback_loop.deploy.record import record_deployments
    from feedback_loop.deploy.targets import make_target

    settings = _settings(ctx, deploy_target=deploy_target)
    target = make_target(settings.deploy_target, settings.model_store_uri, settings.model_name, settings.namespace)
    now = datetime.now(timezone.utc)
    if to_version is None:
        state, transition = core.abort_rollout(target, now, reason)
        transitions = [transition]
    else:
        state, transitions = core.restore_version(target, settings.model_store_uri, settings.model_name, to_version, now, reason)
    record_deployments(_dsn(settings), settings.model_name, transitions, state)
    for transition in transitions:
        click.echo(f"{settings.model_name} on {target}: {transition.action}: {transition.reason}")


@main.command()
@click.option("--keep-versions", type=int, default=None, help="How many of the newest versions stay (setting keep_versions).")
@click.option("--deploy-target", type=click.Choice(list(TARGETS)), default=None, help="Where the rollout state is read.")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@click.pass_context
def cleanup(ctx: click.Context, keep_versions: int | None, deploy_target: str | None, dry_run: bool) -> None:
    """Delete old model versions; never one that serves, is the rollback target or the previous production."""
    from feedback_loop.deploy.targets import make_target
    from feedback_loop.operate import cleanup as tidy

    settings = _settings(ctx, keep_versions=keep_versions, deploy_target=deploy_target)
    target = make_target(settings.deploy_target, settings.model_store_uri, settings.model_name, settings.namespace)
    result = tidy.cleanup(settings.model_store_uri, settings.model_name, target, settings.keep_versions, dry_run=dry_run)
    click.echo(json.dumps(tidy.summary(result, dry_run), indent=2))


@main.command("compile-components")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Default: components/yaml/ of this checkout.")
@click.option("--registry", default=None, help="Container registry of the component images (default ghcr.io/feedback-loop).")
def compile_components(output_dir: Path | None, registry: str | None) -> None:
    """Compile each component to its own YAML (for other pipelines) and refresh the README's component table."""
    from feedback_loop.operate import catalog

    written = catalog.compile_all(output_dir or catalog.YAML_DIR, registry)
    click.echo(f"wrote {len(written)} component files to {output_dir or catalog.YAML_DIR}")
    if output_dir is None and not registry and catalog.README.exists() and catalog.TABLE_START in catalog.README.read_text():
        catalog.README.write_text(catalog.readme_with_table(catalog.README.read_text()))
        click.echo(f"refreshed the component table in {catalog.README}")


@main.command()
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("local_outputs/report.html"), show_default=True)
@click.option("--days", type=click.IntRange(1, 3650), default=90, show_default=True, help="How far back.")
@click.pass_context
def report(ctx: click.Context, output: Path, days: int) -> None:
    """Write the loop at a glance as one HTML page (from retrain_runs and deployments; needs DATABASE_URL)."""
    from feedback_loop.operate import report as page

    settings = _settings(ctx)
    with _database(settings) as conn:
        history = page.load(conn, settings.model_name, days)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(page.render(history))
    except OSError as err:
        raise FeedbackLoopError(f"cannot write {output} ({err.strerror or type(err).__name__}): pass a writable path to --output") from None
    click.echo(f"wrote {output} ({len(history.runs)} runs, {len(history.deployments)} deployment steps)")


# The loop on this machine and bringing your own model: demo, run, adopt.
from feedback_loop.cli_local import adopt, demo, run  # noqa: E402 (registered on the group built above)

for _command in (demo, run, adopt):
    main.add_command(_command)

if __name__ == "__main__":
    main()
