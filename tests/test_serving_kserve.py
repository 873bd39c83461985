"""The one place the model server reaches inside KServe (`serving.server.rest_server_on`):
these fail loudly when a KServe release moves what it relies on. Fast: no TensorFlow, no server
(tests/test_serving.py binds a real one on 127.0.0.1)."""

from __future__ import annotations

from importlib import metadata

import kserve.model_server as kserve_model_server

from feedback_loop.serving import server


def test_kserve_is_the_release_the_seam_was_checked_on() -> None:
    assert metadata.version("kserve") == server.KSERVE_CHECKED, (
        "re-read ModelServer.start in kserve/model_server.py, check rest_server_on still binds the host, then bump KSERVE_CHECKED"
    )


def test_model_server_start_builds_the_rest_server_named_in_its_module() -> None:
    from kserve.protocol.rest.server import RESTServer

    assert "RESTServer" in kserve_model_server.ModelServer.start.__code__.co_names, "start() no longer builds RESTServer itself"
    assert kserve_model_server.RESTServer is RESTServer
    assert RESTServer("kserve.model_server:app", None, None, 0).config.host == "0.0.0.0", "KServe may take a host now: use it"


def test_rest_server_on_binds_the_host_for_the_call_only() -> None:
    kserve_rest_server = kserve_model_server.RESTServer
    with server.rest_server_on("127.0.0.1"):
        rest = kserve_model_server.RESTServer("kserve.model_server:app", None, None, 8123)
    assert isinstance(rest, kserve_rest_server) and (rest.config.host, rest.config.port) == ("127.0.0.1", 8123)
    assert kserve_model_server.RESTServer is kserve_rest_server
