"""A small Kubeflow Pipelines API server on 127.0.0.1 for tests: the v2beta1 endpoints that
`kfp.Client` calls to submit runs, upload pipeline versions and manage recurring runs.

State lives in memory. Like the real server it keeps recurring runs of the same name side
by side (nothing stops a second one: that is the caller's job), validates run parameters
against the pipeline spec's inputs, and records every request so a test can assert what
the client sent (e.g. the bearer token). Use as a context manager.
"""

from __future__ import annotations

import email
import itertools
import json
import re
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

PREFIX = "/apis/v2beta1"


class KfpApiServer:
    """The in-memory KFP API; `url` is its base address once started."""

    def __init__(self, multi_user: bool = False) -> None:
        self.multi_user = multi_user
        self.experiments: dict[str, dict[str, Any]] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.recurring_runs: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> KfpApiServer:
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- helpers for tests ----------------------------------------------------------

    def set_run_state(self, run_id: str, state: str) -> None:
        self.runs[run_id]["state"] = state

    def start_scheduled_run(self, recurring_run_id: str, state: str = "RUNNING") -> str:
        """What the scheduler does on a cron tick: a run of the recurring run's pipeline version."""
        recurring = self.recurring_runs[recurring_run_id]
        run = self._new_run({
            "display_name": f"{recurring['display_name']}-tick",
            "experiment_id": recurring["experiment_id"],
            "pipeline_version_reference": recurring["pipeline_version_reference"],
            "runtime_config": recurring.get("runtime_config", {}),
        })
        run.update(state=state, recurring_run_id=recurring_run_id)
        return run["run_id"]

    # --- endpoints --------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        with self._lock:
            self.requests.append((method, path, headers))
            route = path.removeprefix(PREFIX)
            for pattern, verb, action in self._routes():
                match = re.fullmatch(pattern, route)
                if match and verb == method:
                    return action(query, body, headers, *match.groups())
            return 404, {"message": f"no route {method} {path}"}

    def _routes(self) -> list[tuple[str, str, Any]]:
        # List responses name their field as the proto does: `recurringRuns` is camelCase there.
        return [
            (r"/healthz", "GET", lambda *a: (200, {"multi_user": self.multi_user})),
            (r"/experiments", "GET", lambda q, *a: self._list(self.experiments, q, "experiments")),
            (r"/experiments", "POST", self._create_experiment),
            (r"/experiments/([^/:]+)", "GET", lambda q, b, h, i: self._get(self.experiments, i)),
            (r"/pipelines", "GET", lambda q, *a: self._list(self.pipelines, q, "pipelines")),
            (r"/pipelines/upload", "POST", self._upload_pipeline),
            (r"/pipelines/upload_version", "POST", self._upload_version),
            (r"/pipelines/([^/]+)", "GET", lambda q, b, h, i: self._get(self.pipelines, i)),
            (r"/pipelines/([^/]+)/versions", "GET", self._list_versions),
            (r"/pipelines/([^/]+)/versions/([^/]+)", "GET", lambda q, b, h, p, v: self._get(self.versions, v)),
            (r"/recurringruns", "GET", lambda q, *a: self._list(self.recurring_runs, q, "recurringRuns")),
            (r"/recurringruns", "POST", self._create_recurring_run),
            (r"/recurringruns/([^/:]+)", "GET", lambda q, b, h, i: self._get(self.recurring_runs, i)),
            (r"/recurringruns/([^/:]+)", "DELETE", self._delete_recurring_run),
            (r"/recurringruns/([^/:]+):(enable|disable)", "POST", self._set_mode),
            (r"/runs", "GET", lambda q, *a: self._list(self.runs, q, "runs")),
            (r"/runs", "POST", lambda q, b, *a: self._create_run(json.loads(b))),
            (r"/runs/([^/:]+)", "GET", lambda q, b, h, i: self._get(self.runs, i)),
        ]

    def _id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    @staticmethod
    def _now() -> str:
        return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")

    def _get(self, table: dict[str, dict[str, Any]], key: str) -> tuple[int, Any]:
        return (200, table[key]) if key in table else (404, {"message": f"{key} not found"})

    def _list(self, table: dict[str, dict[str, Any]], query: dict[str, str], field: str, rows: list | None = None) -> tuple[int, Any]:
        rows = list(table.values()) if rows is None else rows
        if "experiment_id" in query:
            rows = [r for r in rows if r.get("experiment_id") == query["experiment_id"]]
        if query.get("namespace"):
            rows = [r for r in rows if r.get("namespace", query["namespace"]) == query["namespace"]]
        for predicate in json.loads(query["filter"])["predicates"] if query.get("filter") else []:
            if predicate["operation"] not in ("EQUALS", 1):  # proto JSON: the enum's name or number
                return 400, {"message": f"filter operation {predicate['operation']} not supported here"}
            wanted = predicate.get("stringValue", predicate.get("string_value"))
            rows = [r for r in rows if str(r.get(predicate["key"])) == wanted]
        sort = query.get("sort_by", "")
        rows.sort(key=lambda r: (r.get("created_at", ""), r.get("_seq", 0)), reverse=sort.endswith(" desc"))
        size = int(query.get("page_size") or 100)
        return 200, {field: rows[:size], "total_size": len(rows)}

    def _create_experiment(self, query: dict[str, str], body: bytes, *_: Any) -> tuple[int, Any]:
        data = json.loads(body)
        experiment = {**data, "experiment_id": self._id("exp"), "created_at": self._now(), "storage_state": "AVAILABLE"}
        self.experiments[experiment["experiment_id"]] = experiment
        return 200, experiment

    def _upload_pipeline(self, query: dict[str, str], body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        spec = _uploaded_spec(body, headers)
        name = query.get("name") or spec["pipelineInfo"]["name"]
        if any(p["display_name"] == name for p in self.pipelines.values()):
            return 409, {"message": f"pipeline {name} already exists"}
        pipeline = {"pipeline_id": self._id("pipeline"), "display_name": name, "name": name,
                    "description": query.get("description", ""), "created_at": self._now()}
        if query.get("namespace"):
            pipeline["namespace"] = query["namespace"]
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        self._add_version(pipeline["pipeline_id"], name, spec)  # the server makes a first version of the same name
        return 200, pipeline

    def _upload_version(self, query: dict[str, str], body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        pipeline_id, name = query.get("pipelineid", ""), query.get("name", "")
        if pipeline_id not in self.pipelines:
            return 404, {"message": f"pipeline {pipeline_id} not found"}
        if any(v["pipeline_id"] == pipeline_id and v["display_name"] == name for v in self.versions.values()):
            return 409, {"message": f"version {name} already exists"}
        return 200, self._add_version(pipeline_id, name, _uploaded_spec(body, headers))

    def _add_version(self, pipeline_id: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": self._id("version"), "display_name": name,
                   "name": name, "created_at": self._now(), "pipeline_spec": spec, "_seq": next(self._ids)}
        self.versions[version["pipeline_version_id"]] = version
        return version

    def _list_versions(self, query: dict[str, str], body: bytes, headers: dict[str, str], pipeline_id: str) -> tuple[int, Any]:
        rows = [v for v in self.versions.values() if v["pipeline_id"] == pipeline_id]
        return self._list({}, query, "pipeline_versions", rows)

    def _spec_of(self, data: dict[str, Any]) -> dict[str, Any] | None:
        if data.get("pipeline_spec"):
            return data["pipeline_spec"].get("pipeline_spec", data["pipeline_spec"])
        reference = data.get("pipeline_version_reference") or {}
        version = self.versions.get(reference.get("pipeline_version_id", ""))
        return version["pipeline_spec"] if version else None

    def _check(self, data: dict[str, Any]) -> str | None:
        spec = self._spec_of(data)
        if spec is None:
            return "a pipeline_spec or an existing pipeline_version_reference is required"
        if data.get("experiment_id") not in self.experiments:
            return f"experiment {data.get('experiment_id')} not found"
        inputs = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
        unknown = set((data.get("runtime_config") or {}).get("parameters") or {}) - set(inputs)
        return f"unknown pipeline parameters: {sorted(unknown)}" if unknown else None

    def _create_recurring_run(self, query: dict[str, str], body: bytes, *_: Any) -> tuple[int, Any]:
        data = json.loads(body)
        problem = self._check(data)
        if problem:
            return 400, {"message": problem}
        recurring = {**data, "recurring_run_id": self._id("recurring"), "created_at": self._now(), "status": "ENABLED",
                     "max_concurrency": str(data.get("max_concurrency", "1")), "_seq": next(self._ids)}
        self.recurring_runs[recurring["recurring_run_id"]] = recurring
        return 200, recurring

    def _delete_recurring_run(self, query: dict[str, str], body: bytes, headers: dict[str, str], key: str) -> tuple[int, Any]:
        if key not in self.recurring_runs:
            return 404, {"message": f"{key} not found"}
        del self.recurring_runs[key]
        for run in self.runs.values():  # as Kubernetes garbage collection does with the Workflows it owns
            if run.get("recurring_run_id") == key and run["state"] in ("PENDING", "RUNNING"):
                run["state"] = "FAILED"
        return 200, {}

    def _set_mode(self, query: dict[str, str], body: bytes, headers: dict[str, str], key: str, verb: str) -> tuple[int, Any]:
        if key not in self.recurring_runs:
            return 404, {"message": f"{key} not found"}
        self.recurring_runs[key]["mode"] = "ENABLE" if verb == "enable" else "DISABLE"
        return 200, {}

    def _create_run(self, data: dict[str, Any]) -> tuple[int, Any]:
        problem = self._check(data)
        if problem:
            return 400, {"message": problem}
        return 200, self._new_run(data)

    def _new_run(self, data: dict[str, Any]) -> dict[str, Any]:
        run = {**data, "run_id": self._id("run"), "created_at": self._now(), "state": "PENDING",
               "storage_state": "AVAILABLE", "_seq": next(self._ids)}
        self.runs[run["run_id"]] = run
        return run


def _uploaded_spec(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """The pipeline spec of a multipart `uploadfile` (the compiled YAML's first document)."""
    message = email.message_from_bytes(f"Content-Type: {headers.get('content-type', '')}\r\n\r\n".encode() + body)
    for part in message.walk():
        if part.get_param("name", header="content-disposition") == "uploadfile":
            return next(yaml.safe_load_all(part.get_payload(decode=True)))
    raise ValueError("no uploadfile in the request")


class _Handler(BaseHTTPRequestHandler):
    api: KfpApiServer

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            status, payload = self.api.handle(self.command, parts.path, query, body, headers)
        except (ValueError, KeyError) as err:
            status, payload = 400, {"message": f"bad request: {err}"}
        data = json.dumps(_public(payload)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, *args: Any) -> None:  # quiet in test output
        pass


def _public(payload: Any) -> Any:
    # Internal bookkeeping keys (a sequence number for stable sorting) never leave the server.
    if isinstance(payload, dict):
        return {k: _public(v) for k, v in payload.items() if not k.startswith("_")}
    if isinstance(payload, list):
        return [_public(v) for v in payload]
    return payload
