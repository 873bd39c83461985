"""The one place the model server reaches inside KServe (`serving.server.rest_server_with`):
these fail loudly when a KServe release moves what it relies on. Fast: no TensorFlow, no server
(tests/test_serving.py binds a real one on 127.0.0.1)."""

from __future__ import annotations

import inspect
from importlib import metadata

import kserve.model_server as kserve_model_server

from feedback_loop.serving import server


def test_kserve_is_the_release_the_seam_was_checked_on() -> None:
    assert metadata.version("kserve") == server.KSERVE_CHECKED, (
        "re-read ModelServer.start in kserve/model_server.py and RESTServer.create_application, "
        "check rest_server_with still binds the host and extends the app last, then bump KSERVE_CHECKED"
    )


def test_model_server_start_builds_the_rest_server_named_in_its_module() -> None:
    from kserve.protocol.rest.server import RESTServer

    assert "RESTServer" in kserve_model_server.ModelServer.start.__code__.co_names, "start() no longer builds RESTServer itself"
    assert kserve_model_server.RESTServer is RESTServer
    assert RESTServer("kserve.model_server:app", None, None, 0).config.host == "0.0.0.0", "KServe may take a host now: use it"


def test_create_application_adds_the_exception_handlers_last() -> None:
    """Ours replace KServe's only because `extend` runs after KServe registers its own."""
    from kserve.protocol.rest.server import RESTServer

    source = inspect.getsource(RESTServer.create_application)
    calls = [source.index(call) for call in ("_add_middlewares(app)", "_register_endpoints(app)", "_add_exception_handlers(app)")]
    assert calls == sorted(calls)


def test_rest_server_with_binds_the_host_and_extends_for_the_call_only() -> None:
    kserve_rest_server = kserve_model_server.RESTServer
    extended = []

    class App:
        def add_exception_handler(self, *args: object) -> None:
            pass

    with server.rest_server_with("127.0.0.1", extended.append):
        rest = kserve_model_server.RESTServer("kserve.model_server:app", None, None, 8123)
    assert isinstance(rest, kserve_rest_server) and (rest.config.host, rest.config.port) == ("127.0.0.1", 8123)
    app = App()
    rest._add_exception_handlers(app)
    assert extended == [app]
    assert kserve_model_server.RESTServer is kserve_rest_server
