"""The model store's gs:// path with the real google-cloud-storage client against
gcp-storage-emulator on 127.0.0.1, and its file:// twin."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gcs_emulator

from feedback_loop import storage
from feedback_loop.deploy.publish import publish, read_lineage
from feedback_loop.layout import COMPLETE_MARKER

BUCKET = gcs_emulator.BUCKET


@pytest.fixture
def gcs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with gcs_emulator.emulator(monkeypatch):
        yield storage._gcs_client()


def version_dir(root: Path, version: str) -> Path:
    model_dir = root / version
    (model_dir / "saved_model" / "1" / "variables").mkdir(parents=True)
    (model_dir / "saved_model" / "1" / "saved_model.pb").write_bytes(b"graph")
    (model_dir / "saved_model" / "1" / "variables" / "variables.index").write_bytes(b"index")
    (model_dir / "lineage.json").write_text(json.dumps({"version": version}))
    return model_dir


def test_objects_round_trip(gcs: Any) -> None:
    uri = f"gs://{BUCKET}/m/rollout.json"
    assert not storage.exists(uri)
    storage.write_bytes(uri, b'{"a": 1}')
    assert storage.exists(uri) and storage.read_bytes(uri) == b'{"a": 1}'
    assert gcs.bucket(BUCKET).blob("m/rollout.json").download_as_bytes() == b'{"a": 1}'  # what another client sees


def test_publish_to_gcs_writes_the_marker_last(gcs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud.storage import Blob

    version_uri = f"gs://{BUCKET}/store/cats-vs-dogs/v1"
    uploaded: list[str] = []
    seen_complete: list[bool] = []
    upload_from_filename, upload_from_string = Blob.upload_from_filename, Blob.upload_from_string

    def watch(original: Any) -> Any:
        def upload(self: Blob, *args: Any, **kwargs: Any) -> Any:
            seen_complete.append(storage.is_complete(version_uri))  # what a reader sees before each object lands
            result = original(self, *args, **kwargs)
            uploaded.append(self.name)
            return result
        return upload

    monkeypatch.setattr(Blob, "upload_from_filename", watch(upload_from_filename))
    monkeypatch.setattr(Blob, "upload_from_string", watch(upload_from_string))
    release = publish(version_dir(tmp_path, "v1"), f"gs://{BUCKET}/store", "cats-vs-dogs", "v1", {"drift.md": "# drift"})

    assert release.uri == version_uri and release.storage_uri == f"{version_uri}/saved_model"
    assert uploaded[-1] == "store/cats-vs-dogs/v1/_COMPLETE" and len(uploaded) >= 5
    assert seen_complete and not any(seen_complete)  # no reader saw a complete version before the marker
    assert storage.is_complete(version_uri)
    names = {b.name for b in gcs.list_blobs(BUCKET, prefix="store/cats-vs-dogs/v1/")}
    assert {"store/cats-vs-dogs/v1/saved_model/1/saved_model.pb", "store/cats-vs-dogs/v1/saved_model/1/assets.extra/lineage.json",
            "store/cats-vs-dogs/v1/evidence/drift.md", "store/cats-vs-dogs/v1/lineage.json"} <= names
    assert storage.list_dirs(f"gs://{BUCKET}/store/cats-vs-dogs") == ["v1"]

    copied = storage.download_dir(f"{version_uri}/saved_model", tmp_path / "download")
    assert (copied / "1" / "variables" / "variables.index").read_bytes() == b"index"
    assert read_lineage(version_uri)["version"] == "v1"

    uploaded.clear()
    publish(version_dir(tmp_path / "again", "v1"), f"gs://{BUCKET}/store", "cats-vs-dogs", "v1")
    assert uploaded == []  # a complete version is left alone


def test_an_interrupted_gcs_upload_is_not_a_version(gcs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud.storage import Blob

    calls = {"n": 0}
    original = Blob.upload_from_filename

    def flaky(self: Blob, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("network gone")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_filename", flaky)
    with pytest.raises(ConnectionError):
        publish(version_dir(tmp_path, "v2"), f"gs://{BUCKET}/store", "m", "v2")
    uri = f"gs://{BUCKET}/store/m/v2"
    assert len(list(gcs.list_blobs(BUCKET, prefix="store/m/v2/"))) == 1  # one object landed before the failure
    assert not storage.is_complete(uri)
    monkeypatch.setattr(Blob, "upload_from_filename", original)
    publish(version_dir(tmp_path / "retry", "v2"), f"gs://{BUCKET}/store", "m", "v2")  # the retry completes it
    assert storage.is_complete(uri)


def test_file_store_is_complete_or_absent(tmp_path: Path) -> None:
    release = publish(version_dir(tmp_path, "v1"), str(tmp_path / "store"), "m", "v1")
    path = storage.local_path(release.uri)
    assert (path / COMPLETE_MARKER).exists()
    assert (path / "saved_model" / "1" / "assets.extra" / "lineage.json").exists()
    assert [p.name for p in path.parent.iterdir()] == ["v1"]  # no staging directory left


@pytest.fixture(params=["file", "gs"])
def state_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "gs":
        request.getfixturevalue("gcs")
        return f"gs://{BUCKET}/m/rollout.json"
    return f"file://{tmp_path / 'm' / 'rollout.json'}"


def test_write_if_unchanged_is_a_compare_and_swap(state_uri: str) -> None:
    data, absent = storage.read_versioned(state_uri)
    assert data is None
    first = storage.write_if_unchanged(state_uri, b"one", absent)
    assert first is not None and storage.read_versioned(state_uri) == (b"one", first)
    assert storage.write_if_unchanged(state_uri, b"two", absent) is None  # created meanwhile: refused
    second = storage.write_if_unchanged(state_uri, b"two", first)
    assert second is not None and second != first
    assert storage.write_if_unchanged(state_uri, b"stale", first) is None  # written meanwhile: refused
    assert storage.read_bytes(state_uri) == b"two"


def test_the_saved_model_carries_its_own_marker_before_the_version_does(gcs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud.storage import Blob

    uploaded: list[str] = []
    original = Blob.upload_from_filename

    def watch(self: Blob, *args: Any, **kwargs: Any) -> Any:
        uploaded.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_filename", watch)
    publish(version_dir(tmp_path, "v1"), f"gs://{BUCKET}/store", "m", "v1")
    inner = uploaded.index(f"store/m/v1/saved_model/{COMPLETE_MARKER}")
    assert all(not name.startswith("store/m/v1/saved_model/") for name in uploaded[inner + 1 :])  # after its files
    local = publish(version_dir(tmp_path / "local", "v1"), str(tmp_path / "store"), "m", "v1")
    assert (storage.local_path(local.uri) / "saved_model" / COMPLETE_MARKER).is_file()
