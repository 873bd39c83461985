"""gcp-storage-emulator on 127.0.0.1 for the real google-cloud-storage client, with GCS's
object-generation preconditions on uploads, which the emulator does not implement.

GCS answers 412 Precondition Failed to an upload whose `ifGenerationMatch` is not the
object's live generation (0: the object must not exist). The emulator serves one request
at a time, so checking the precondition in its upload handlers is atomic, as on GCS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from serving_helpers import free_port

BUCKET = "models"


def _with_preconditions(upload: Any) -> Any:
    def checked(request: Any, response: Any, storage: Any) -> Any:
        expected = (request.query.get("ifGenerationMatch") or [None])[0]
        if expected is not None:
            name = (request.query.get("name") or [None])[0] or (request.data.get("meta") or {}).get("name")
            try:
                live = str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
            except Exception:  # NotFound: no live generation
                live = "0"
            if live != str(expected):
                response.status = HTTPStatus.PRECONDITION_FAILED
                message = f"At least one of the pre-conditions you specified did not hold (generation {live}, not {expected})"
                response.json({"error": {"code": 412, "message": message, "errors": [{"reason": "conditionNotMet", "message": message}]}})
                return None
        return upload(request, response, storage)

    return checked


@contextlib.contextmanager
def emulator(monkeypatch: Any) -> Iterator[str]:
    """Starts the emulator with bucket BUCKET; yields STORAGE_EMULATOR_HOST (also set in the environment)."""
    import pytest

    server_module = pytest.importorskip("gcp_storage_emulator.server", reason="needs gcp-storage-emulator")
    from gcp_storage_emulator.handlers import objects

    from feedback_loop import storage

    for name in ("_media_upload", "_multipart_upload"):
        monkeypatch.setattr(objects, name, _with_preconditions(getattr(objects, name)))
    port = free_port()
    server = server_module.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    host = f"http://127.0.0.1:{port}"  # the scheme is required
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
    storage._gcs_client.cache_clear()
    try:
        yield host
    finally:
        storage._gcs_client.cache_clear()
        server.stop()
