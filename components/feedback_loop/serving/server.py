"""Starts KServe's `ModelServer` with one `SavedModelPredictor`, on a host of our choosing.

KServe's REST server always binds 0.0.0.0; `serve` sets the host on its uvicorn config
before it starts, so tests and laptops can keep the port on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

DEFAULT_HOST = "0.0.0.0"  # what a pod needs; pass 127.0.0.1 on a shared machine
DEFAULT_PORT = 8080


def serve(model_dir: Path | str, name: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, workers_log_level: str = "INFO") -> None:
    """Loads the version at `model_dir` and serves it until SIGTERM/SIGINT (v1 and v2 REST, /metrics)."""
    import kserve
    from kserve.logging import trace_logger
    from kserve.protocol.rest.server import RESTServer

    from feedback_loop.serving.model import SavedModelPredictor

    predictor = SavedModelPredictor(name, model_dir)
    predictor.load()

    verbose = workers_log_level.upper() == "DEBUG"
    server = kserve.ModelServer(http_port=port, enable_grpc=False, enable_latency_logging=verbose)
    server._register_and_check_atleast_one_model_is_ready([predictor])
    rest = RESTServer(
        "kserve.model_server:app", server.dataplane, server.model_repository_extension, port,
        event_loop=server.event_loop, timeout_keep_alive=server.timeout_keep_alive, grace_period=5,
    )
    rest.config.host = host
    server._rest_server = rest
    server.servers.append(rest.start())
    if not verbose:
        # One log line per request costs more than the prediction of a small model.
        for name_ in ("uvicorn.access", trace_logger.name):
            logging.getLogger(name_).setLevel(logging.WARNING)
    server.setup_event_loop()
    server.register_signal_handler()
    asyncio.run(server._serve())
