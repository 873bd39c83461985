"""Submit one run, and create or update the recurring run by name, through `kfp.Client`.

KFP's v2beta1 API has no "update recurring run" endpoint (kubeflow/pipelines#3789), and
deleting a recurring run garbage-collects the runs it started that are still in flight
(kubeflow/pipelines#7421). So `schedule`:

1. uploads the compiled pipeline as a version named after its content hash (the same
   file twice is one version: nothing to re-point);
2. finds the recurring run of that name in the experiment; when it already runs that
   version with the same cron, parameters and options, only its enabled/disabled mode
   is set;
3. otherwise replaces it (delete, then create: never two of the same name), but only
   when none of its runs is pending or running, unless told to replace it anyway.

The pipeline itself is never deleted: its versions are the history of what ran.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedback_loop import __version__
from feedback_loop.errors import FeedbackLoopError

log = logging.getLogger(__name__)

IN_FLIGHT = frozenset({"PENDING", "RUNNING", "CANCELING", "PAUSED"})
DEFAULT_EXPERIMENT = "feedback-loop"
DEFAULT_SCHEDULE = "feedback-loop-daily"
DEFAULT_CRON = "0 0 3 * * *"  # KFP crons have six fields: seconds first


class KfpApiError(FeedbackLoopError):
    """The Kubeflow Pipelines API refused a call or could not be reached."""


class ScheduleBusy(FeedbackLoopError):
    """The recurring run has a run in flight that replacing it would kill."""


@dataclass(frozen=True)
class Connection:
    """Where the KFP API is. The token is a secret: never logged, never in an error."""

    host: str
    namespace: str | None = None
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, host: str | None = None, namespace: str | None = None, token: str | None = None) -> Connection:
        """Flags first, then KFP_HOST, KFP_NAMESPACE and KFP_TOKEN."""
        host = host or os.environ.get("KFP_HOST")
        if not host:
            raise KfpApiError("no KFP API host: pass --host or set KFP_HOST (e.g. https://kubeflow.example.com/pipeline)")
        return cls(host.rstrip("/"), namespace or os.environ.get("KFP_NAMESPACE") or None, token or os.environ.get("KFP_TOKEN") or None)


@dataclass(frozen=True)
class ScheduleResult:
    """What `schedule` did.

    Attributes:
        recurring_run_id: The recurring run's id after the call.
        pipeline_id: The pipeline the versions belong to.
        version_id: The pipeline version the recurring run starts.
        version_name: Its name (`<pipeline>-<package version>-<content hash>`).
        action: "created", "replaced", or "unchanged".
        enabled: Whether the recurring run starts runs.
    """

    recurring_run_id: str
    pipeline_id: str
    version_id: str
    version_name: str
    action: str
    enabled: bool


def client(connection: Connection) -> Any:
    """A `kfp.Client` for `connection` (it asks /healthz only when no namespace is given)."""
    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
        with _api_errors(connection, "connect"):
            return kfp.Client(host=connection.host, namespace=connection.namespace or "kubeflow", existing_token=connection.token)


@contextmanager
def _api_errors(connection: Connection, doing: str) -> Iterator[None]:
    """Turns the generated client's exceptions into one line without the token."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except kfp_server_api.ApiException as err:
        detail = _message(err.body) or err.reason or ""
        hint = " (check KFP_TOKEN and the namespace's permissions)" if err.status in (401, 403) else ""
        raise KfpApiError(f"KFP API at {connection.host} refused to {doing}: HTTP {err.status} {detail}{hint}".rstrip()) from None
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise KfpApiError(f"KFP API at {connection.host} unreachable ({type(err).__name__}) while trying to {doing}: check KFP_HOST") from None


def _message(body: Any) -> str:
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return str(body or "")[:200]
    return str(data.get("message") or data.get("error") or "")[:200] if isinstance(data, dict) else ""


def _equals(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "stringValue": value}]})


def version_name(pipeline_name: str, package: Path) -> str:
    """`<pipeline>-<package version>-<12 hex of the file's sha256>`: the same file, the same name."""
    digest = hashlib.sha256(Path(package).read_bytes()).hexdigest()[:12]
    return f"{pipeline_name}-{__version__}-{digest}"


def experiment_id(kfp_client: Any, connection: Connection, name: str) -> str:
    with _api_errors(connection, f"find or create experiment {name}"):
        return kfp_client.create_experiment(name=name, namespace=connection.namespace).experiment_id


def upload_version(kfp_client: Any, connection: Connection, package: Path, pipeline_name: str) -> tuple[str, str, str]:
    """Uploads `package` as a version of `pipeline_name` unless that very file already is one.

    Returns:
        The pipeline id, the version id and the version name.
    """
    package = Path(package)
    if not package.is_file():
        raise KfpApiError(f"{package} not found: run `feedback-loop compile` first")
    name = version_name(pipeline_name, package)
    with _api_errors(connection, f"upload {package.name}"):
        pipeline_id = kfp_client.get_pipeline_id(pipeline_name)
        if pipeline_id is None:
            created = kfp_client.upload_pipeline(str(package), pipeline_name=pipeline_name, namespace=connection.namespace)
            pipeline_id = created.pipeline_id
        existing = kfp_client.list_pipeline_versions(pipeline_id, page_size=1, filter=_equals("display_name", name))
        if existing.pipeline_versions:
            version = existing.pipeline_versions[0]
            log.info("pipeline %s already has version %s", pipeline_name, name)
        else:
            version = kfp_client.upload_pipeline_version(str(package), name, pipeline_id=pipeline_id)
            log.info("uploaded %s as version %s of pipeline %s", package.name, name, pipeline_name)
    return pipeline_id, version.pipeline_version_id, name


def submit(
    connection: Connection,
    package: Path,
    arguments: dict[str, Any],
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    service_account: str = "",
) -> tuple[str, str]:
    """Starts one run of the compiled pipeline.

    Returns:
        The run id and its name.
    """
    package = Path(package)
    if not package.is_file():
        raise KfpApiError(f"{package} not found: run `feedback-loop compile` first")
    kfp_client = client(connection)
    with _api_errors(connection, "create a run"):
        result = kfp_client.create_run_from_pipeline_package(
            str(package), arguments=arguments, run_name=run_name, experiment_name=experiment,
            namespace=connection.namespace, service_account=service_account or None,
        )
        run = kfp_client.get_run(result.run_id)
    return result.run_id, run.display_name or run_name or ""


def schedule(
    connection: Connection,
    package: Path,
    arguments: dict[str, Any],
    *,
    pipeline_name: str,
    name: str = DEFAULT_SCHEDULE,
    cron: str = DEFAULT_CRON,
    experiment: str = DEFAULT_EXPERIMENT,
    enabled: bool | None = None,
    service_account: str = "",
    replace_running: bool = False,
) -> ScheduleResult:
    """Creates the recurring run `name`, or re-points it at the newest pipeline version.

    Runs start on `cron` (six fields, seconds first), one at a time (max_concurrency 1),
    and a schedule paused and enabled again does not replay the runs it missed (no
    catch-up). `enabled` None keeps the current mode (a new one is enabled).
    """
    if len(cron.split()) not in (6, 7):
        raise KfpApiError(f"cron {cron!r} needs six fields, seconds first (e.g. {DEFAULT_CRON!r} runs daily at 03:00)")
    kfp_client = client(connection)
    exp_id = experiment_id(kfp_client, connection, experiment)
    pipeline_id, version_id, vname = upload_version(kfp_client, connection, package, pipeline_name)
    with _api_errors(connection, f"list recurring runs named {name}"):
        found = kfp_client.list_recurring_runs(experiment_id=exp_id, page_size=100, filter=_equals("display_name", name))
    existing = [r for r in (found.recurring_runs or []) if r.display_name == name]
    current_mode = existing[0].mode == "ENABLE" if existing else True
    wanted = current_mode if enabled is None else enabled

    if len(existing) == 1 and _same(existing[0], version_id, cron, arguments, service_account):
        recurring = existing[0]
        if (recurring.mode == "ENABLE") != wanted:
            with _api_errors(connection, f"{'enable' if wanted else 'disable'} recurring run {name}"):
                (kfp_client.enable_recurring_run if wanted else kfp_client.disable_recurring_run)(recurring.recurring_run_id)
        log.info("recurring run %s already starts %s on %r", name, vname, cron)
        return ScheduleResult(recurring.recurring_run_id, pipeline_id, version_id, vname, "unchanged", wanted)

    for old in existing:
        busy = in_flight(kfp_client, connection, exp_id, old.recurring_run_id)
        if busy and not replace_running:
            raise ScheduleBusy(
                f"recurring run {name} has {len(busy)} run(s) in flight ({', '.join(busy)}); replacing it now would "
                "kill them: retry when they finish, or pass --replace-running"
            )
    with _api_errors(connection, f"replace recurring run {name}"):
        for old in existing:  # delete first: never two recurring runs of the same name
            kfp_client.delete_recurring_run(old.recurring_run_id)
        created = kfp_client.create_recurring_run(
            experiment_id=exp_id, job_name=name, description=f"{pipeline_name} on {cron!r}",
            cron_expression=cron, max_concurrency=1, no_catchup=True, params=arguments,
            pipeline_id=pipeline_id, version_id=version_id, enabled=wanted, service_account=service_account or None,
        )
    action = "replaced" if existing else "created"
    log.info("recurring run %s %s: %s on %r (%s)", name, action, vname, cron, "enabled" if wanted else "disabled")
    return ScheduleResult(created.recurring_run_id, pipeline_id, version_id, vname, action, wanted)


def _same(recurring: Any, version_id: str, cron: str, arguments: dict[str, Any], service_account: str) -> bool:
    reference = recurring.pipeline_version_reference
    trigger = recurring.trigger.cron_schedule if recurring.trigger else None
    parameters = (recurring.runtime_config.parameters if recurring.runtime_config else None) or {}
    return (
        reference is not None
        and reference.pipeline_version_id == version_id
        and trigger is not None
        and trigger.cron == cron
        and str(recurring.max_concurrency) == "1"
        and bool(recurring.no_catchup)
        and _numbers_as_floats(parameters) == _numbers_as_floats(arguments)
        and (recurring.service_account or "") == (service_account or "")
    )


def _numbers_as_floats(value: Any) -> Any:
    # Parameters travel as protobuf Values: 24.0 may come back as 24, 30 as 30.0.
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {k: _numbers_as_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_numbers_as_floats(v) for v in value]
    return value


def in_flight(kfp_client: Any, connection: Connection, exp_id: str, recurring_run_id: str) -> list[str]:
    """Ids of the recurring run's runs that are pending or running (newest 100 runs looked at)."""
    with _api_errors(connection, "list runs"):
        runs = kfp_client.list_runs(experiment_id=exp_id, page_size=100, sort_by="created_at desc").runs or []
    return [r.run_id for r in runs if r.recurring_run_id == recurring_run_id and str(r.state) in IN_FLIGHT]


def recent_runs(connection: Connection, experiment: str = DEFAULT_EXPERIMENT, limit: int = 10) -> list[dict[str, Any]]:
    """The newest runs of the experiment, newest first: id, name, state, created_at, recurring_run_id."""
    kfp_client = client(connection)
    exp_id = experiment_id(kfp_client, connection, experiment)
    with _api_errors(connection, "list runs"):
        runs = kfp_client.list_runs(experiment_id=exp_id, page_size=limit, sort_by="created_at desc").runs or []
    return [
        {
            "run_id": r.run_id,
            "name": r.display_name,
            "state": str(r.state) if r.state else "",
            "created_at": r.created_at,
            "recurring_run_id": r.recurring_run_id or "",
        }
        for r in runs
    ]


def recurring_runs(connection: Connection, experiment: str = DEFAULT_EXPERIMENT) -> list[dict[str, Any]]:
    """The experiment's recurring runs: id, name, mode, cron, pipeline version id."""
    kfp_client = client(connection)
    exp_id = experiment_id(kfp_client, connection, experiment)
    with _api_errors(connection, "list recurring runs"):
        found = kfp_client.list_recurring_runs(experiment_id=exp_id, page_size=100).recurring_runs or []
    return [
        {
            "recurring_run_id": r.recurring_run_id,
            "name": r.display_name,
            "mode": str(r.mode),
            "cron": r.trigger.cron_schedule.cron if r.trigger and r.trigger.cron_schedule else "",
            "version_id": r.pipeline_version_reference.pipeline_version_id if r.pipeline_version_reference else "",
        }
        for r in found
    ]


def check_cluster_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """Refuses arguments that cannot work on a cluster (a model store on this machine's disk)."""
    store = str(arguments.get("model_store_uri", ""))
    if store.startswith("file://") or "://" not in store:
        from feedback_loop.errors import SettingsError

        raise SettingsError(
            f"model_store_uri {store} is a folder on this machine: a cluster needs a bucket; "
            "set RETRAIN_MODEL_STORE_URI (e.g. gs://acme-models) or pass it in --config"
        )
    return arguments
