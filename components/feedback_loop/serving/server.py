"""Starts KServe's `ModelServer` with one `SavedModelPredictor`, on a host of our choosing.

KServe's public `ModelServer.start(models)` registers the model, serves v1/v2 REST and
/metrics, and stops on SIGTERM; but its REST server always binds 0.0.0.0. `rest_server_on`
is the one place that reaches inside KServe to bind another host, so tests and laptops can
keep the port on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

DEFAULT_HOST = "0.0.0.0"  # what a pod needs; pass 127.0.0.1 on a shared machine
DEFAULT_PORT = 8080
# The KServe release `rest_server_on` was checked against (kserve/model_server.py, ModelServer.start).
KSERVE_CHECKED = "0.20.0"


def serve(model_dir: Path | str, name: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, workers_log_level: str = "INFO") -> None:
    """Loads the version at `model_dir` and serves it until SIGTERM/SIGINT (v1 and v2 REST, /metrics)."""
    import kserve
    from kserve.logging import trace_logger

    from feedback_loop.serving.model import SavedModelPredictor

    predictor = SavedModelPredictor(name, model_dir)
    predictor.load()

    verbose = workers_log_level.upper() == "DEBUG"
    # One process, REST only, uvicorn's own access log: whatever KServe flags the container gets.
    server = kserve.ModelServer(
        http_port=port, enable_grpc=False, enable_latency_logging=verbose, workers=1, access_log_format=None, grace_period=5
    )
    if not verbose:
        # One log line per request costs more than the prediction of a small model.
        for name_ in ("uvicorn.access", trace_logger.name):
            logging.getLogger(name_).setLevel(logging.WARNING)
    with rest_server_on(host):
        server.start([predictor])


@contextlib.contextmanager
def rest_server_on(host: str) -> Iterator[None]:
    """While open, the REST server `ModelServer.start` builds binds `host`.

    Why reach inside KServe: in kserve 0.20.0 `ModelServer.start` takes no host and builds
    `kserve.protocol.rest.server.RESTServer`, whose uvicorn config says host="0.0.0.0". It looks
    the class up in `kserve.model_server`'s namespace when it runs, so a subclass put there for
    the call sets the host, and the rest of the start stays KServe's. Checked on KSERVE_CHECKED;
    tests/test_serving_kserve.py fails if a release changes any of this.
    """
    import kserve.model_server as model_server

    kserve_rest_server = model_server.RESTServer

    class RESTServerOnHost(kserve_rest_server):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.config.host = host

    model_server.RESTServer = RESTServerOnHost
    try:
        yield
    finally:
        model_server.RESTServer = kserve_rest_server
