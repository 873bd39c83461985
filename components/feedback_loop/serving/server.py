"""Starts KServe's `ModelServer` with one `SavedModelPredictor`, on a host of our choosing,
with our limits, error answers, feedback endpoint and prediction capture.

KServe's public `ModelServer.start(models)` registers the model, serves v1/v2 REST and
/metrics, and stops on SIGTERM; but its REST server always binds 0.0.0.0 and its app takes
no additions from outside. `rest_server_with` is the one place that reaches inside KServe:
to bind another host (tests and laptops keep the port on 127.0.0.1) and to extend the app
(serving.http) after KServe has added its own routes and error handlers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from feedback_loop.serving.capture import CaptureConfig

DEFAULT_HOST = "0.0.0.0"  # what a pod needs; pass 127.0.0.1 on a shared machine
DEFAULT_PORT = 8080
MAX_BODY_BYTES = 4 << 20  # a batch of 1024 tabular rows or ~200 images as JSON fits
# The KServe release `rest_server_with` was checked against (kserve/model_server.py, ModelServer.start;
# kserve/protocol/rest/server.py, RESTServer.create_application).
KSERVE_CHECKED = "0.20.0"

log = logging.getLogger(__name__)


def serve(
    model_dir: Path | str,
    name: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workers_log_level: str = "INFO",
    *,
    capture: CaptureConfig = CaptureConfig(),
    max_body_bytes: int = MAX_BODY_BYTES,
    max_rows: int | None = None,
    hmac_key: str | None = None,
) -> None:
    """Loads the version at `model_dir` and serves it until SIGTERM/SIGINT (v1 and v2 REST, /metrics, /v1/feedback)."""
    import kserve
    from kserve.logging import trace_logger
    from kserve.protocol.rest.v1_endpoints import V1Endpoints
    from kserve.protocol.rest.v2_endpoints import V2Endpoints
    from prometheus_client import REGISTRY

    from feedback_loop.serving import http
    from feedback_loop.serving.capture import Capture, CaptureCollector
    from feedback_loop.serving.model import MAX_ROWS, SavedModelPredictor

    capturing = Capture(capture)
    predictor = SavedModelPredictor(name, model_dir, capture=capturing, max_rows=max_rows or MAX_ROWS, hmac_key=hmac_key)
    predictor.load()
    REGISTRY.register(CaptureCollector(capturing, name))
    capturing.start()
    log.info("prediction capture %s", "on" if capturing.enabled else "off (no DATABASE_URL)")

    verbose = workers_log_level.upper() == "DEBUG"
    # One process, REST only, uvicorn's own access log: whatever KServe flags the container gets.
    server = kserve.ModelServer(
        http_port=port, enable_grpc=False, enable_latency_logging=verbose, workers=1, access_log_format=None, grace_period=5
    )
    if not verbose:
        # One log line per request costs more than the prediction of a small model.
        for name_ in ("uvicorn.access", trace_logger.name):
            logging.getLogger(name_).setLevel(logging.WARNING)
    try:
        # KServe's own endpoints answer what the direct routes leave to them (CloudEvents, ...).
        endpoints = (V1Endpoints(server.dataplane, server.model_repository_extension).predict,
                     V2Endpoints(server.dataplane, server.model_repository_extension).infer)
        extend = lambda app: http.install(app, capturing, max_body_bytes, (predictor, *endpoints), timings=verbose)  # noqa: E731
        with rest_server_with(host, extend):
            server.start([predictor])
    finally:
        capturing.stop()  # what is queued is written if the database allows, within a few seconds


@contextlib.contextmanager
def rest_server_with(host: str, extend: Callable[[Any], None] = lambda app: None) -> Iterator[None]:
    """While open, the REST server `ModelServer.start` builds binds `host`, and `extend(app)`
    runs once KServe has added its middlewares, routes and exception handlers.

    Why reach inside KServe: in kserve 0.20.0 `ModelServer.start` takes no host and builds
    `kserve.protocol.rest.server.RESTServer`, whose uvicorn config says host="0.0.0.0", and whose
    `create_application` adds its exception handlers last (`_add_exception_handlers`). It looks
    the class up in `kserve.model_server`'s namespace when it runs, so a subclass put there for
    the call sets the host and extends the app after KServe's own handlers (ours then replace
    them); the rest of the start stays KServe's. Checked on KSERVE_CHECKED;
    tests/test_serving_kserve.py fails if a release changes any of this.
    """
    import kserve.model_server as model_server

    kserve_rest_server = model_server.RESTServer

    class RESTServerExtended(kserve_rest_server):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.config.host = host

        def _add_exception_handlers(self, app: Any) -> None:
            super()._add_exception_handlers(app)
            extend(app)

    model_server.RESTServer = RESTServerExtended
    try:
        yield
    finally:
        model_server.RESTServer = kserve_rest_server
