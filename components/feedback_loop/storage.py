"""The model store: `file://` locally, `gs://` on a cluster, one small API for both.

Writes never leave half an object behind: a file goes to a temporary name and is
renamed; a directory is uploaded under a temporary prefix (`file://`) or completed with
a marker object written last (`gs://`), and readers only trust a version whose marker
exists. A small object that several processes update (the local rollout state) has a
compare-and-swap: `read_versioned` then `write_if_unchanged`, under an exclusive lock file
(`file://`) or an object-generation precondition (`gs://`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import uuid
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from feedback_loop.layout import COMPLETE_MARKER


def normalize(uri: str, base: Path | None = None) -> str:
    """Turns a bare or relative path into an absolute `file://` URI; leaves `gs://` alone."""
    if uri.startswith("gs://"):
        return uri.rstrip("/")
    raw = uri.removeprefix("file://")
    path = Path(raw) if Path(raw).is_absolute() else (base or Path.cwd()) / raw
    return "file://" + str(path.resolve())


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def local_path(uri: str) -> Path:
    """The filesystem path of a `file://` URI (or a bare path)."""
    if uri.startswith("gs://"):
        raise ValueError(f"{uri} is not a local path")
    return Path(uri.removeprefix("file://"))


def _bucket_and_key(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


@lru_cache(maxsize=1)
def _gcs_client():
    # Imported lazily: only images that talk to GCS carry the client.
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="local", credentials=AnonymousCredentials())
    return storage.Client()


def _retry():
    """The client's retry with backoff (429, 5xx, connection errors), also for uploads: reads
    retry by default, uploads only with a precondition; every upload here is idempotent."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY  # 1 s doubling to 60 s, for at most 120 s


def exists(uri: str) -> bool:
    if uri.startswith("gs://"):
        bucket, key = _bucket_and_key(uri)
        return _gcs_client().bucket(bucket).blob(key).exists()
    return local_path(uri).exists()


def read_bytes(uri: str) -> bytes:
    if uri.startswith("gs://"):
        bucket, key = _bucket_and_key(uri)
        return _gcs_client().bucket(bucket).blob(key).download_as_bytes()
    return local_path(uri).read_bytes()


def write_bytes(uri: str, data: bytes) -> None:
    """Writes an object whole or not at all."""
    if uri.startswith("gs://"):
        bucket, key = _bucket_and_key(uri)
        # GCS writes are atomic; the same bytes written again are the same object, so a 503 is retried.
        _gcs_client().bucket(bucket).blob(key).upload_from_string(data, retry=_retry())
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_versioned(uri: str) -> tuple[bytes | None, str]:
    """An object's bytes (None when absent) and a token that changes with every write of it."""
    if uri.startswith("gs://"):
        from google.api_core.exceptions import PreconditionFailed

        bucket, key = _bucket_and_key(uri)
        for _ in range(5):
            blob = _gcs_client().bucket(bucket).get_blob(key)
            if blob is None:
                return None, "0"  # generation 0: "does not exist" in a precondition
            generation = blob.generation  # read first: a download resets it from its response headers
            try:  # pinned to that generation: GCS answers 412 if a write slipped in between
                return blob.download_as_bytes(if_generation_match=generation), str(generation)
            except PreconditionFailed:
                continue
        raise ConnectionError(f"{uri} changed on every read; try again")
    path = local_path(uri)
    data = path.read_bytes() if path.exists() else None
    return data, _digest(data)


def write_if_unchanged(uri: str, data: bytes, token: str) -> str | None:
    """Writes `data` only if the object is still the one `read_versioned` returned with `token`.

    Returns:
        The new token, or None (nothing written) when another writer changed the object since.
    """
    if uri.startswith("gs://"):
        from google.api_core.exceptions import PreconditionFailed

        bucket, key = _bucket_and_key(uri)
        blob = _gcs_client().bucket(bucket).blob(key)
        try:
            blob.upload_from_string(data, if_generation_match=int(token))
        except PreconditionFailed:
            return None
        return str(blob.generation)
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The lock covers compare and replace; readers need none, since the replace is atomic.
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _digest(path.read_bytes() if path.exists() else None) != token:
                return None
            write_bytes(uri, data)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return _digest(data)


def _digest(data: bytes | None) -> str:
    return "" if data is None else hashlib.sha256(data).hexdigest()


def upload_dir(source: Path, uri: str) -> str:
    """Copies a local directory to `uri` and marks it complete; returns `uri`."""
    if uri.startswith("gs://"):
        bucket_name, prefix = _bucket_and_key(uri)
        bucket = _gcs_client().bucket(bucket_name)
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER)
        inner_markers = sorted(p for p in source.rglob(COMPLETE_MARKER) if p.parent != source)
        for file in [*files, *inner_markers]:  # a marker inside vouches for its directory: after its files
            bucket.blob(f"{prefix}/{file.relative_to(source).as_posix()}").upload_from_filename(str(file), retry=_retry())
        bucket.blob(f"{prefix}/{COMPLETE_MARKER}").upload_from_string(b"", retry=_retry())  # last: readers wait for it
        return uri
    target = local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        shutil.copytree(source, staging)
        (staging / COMPLETE_MARKER).write_bytes(b"")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return uri


def delete(uri: str) -> bool:
    """Deletes one object; False when it was not there."""
    if uri.startswith("gs://"):
        from google.api_core.exceptions import NotFound

        bucket, key = _bucket_and_key(uri)
        try:
            _gcs_client().bucket(bucket).blob(key).delete(retry=_retry())
        except NotFound:
            return False
        return True
    path = local_path(uri)
    if not path.is_file():
        return False
    path.unlink(missing_ok=True)
    return True


def is_complete(uri: str) -> bool:
    return exists(join(uri, COMPLETE_MARKER))


def download_dir(uri: str, target: Path) -> Path:
    """Makes the directory at `uri` available locally; `file://` is used in place."""
    if not uri.startswith("gs://"):
        return local_path(uri)
    bucket_name, prefix = _bucket_and_key(uri)
    for blob in _gcs_client().list_blobs(bucket_name, prefix=prefix.rstrip("/") + "/"):
        dest = target / blob.name[len(prefix) :].lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(dest))
    return target


def list_dirs(uri: str) -> list[str]:
    """Names of the immediate sub-directories of `uri` (model versions under a model)."""
    if uri.startswith("gs://"):
        bucket_name, prefix = _bucket_and_key(uri)
        prefix = prefix.rstrip("/") + "/"
        blobs = _gcs_client().list_blobs(bucket_name, prefix=prefix, delimiter="/")
        list(blobs)  # the prefixes fill in once the pages are read
        return sorted(p[len(prefix) :].strip("/") for p in blobs.prefixes)
    path = local_path(uri)
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")) if path.exists() else []
