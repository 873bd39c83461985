"""Where a model came from: which rows, which code, which revision, which image and libraries.

`data_hash` identifies a dataset by its content, not by its file: the same rows written
twice (another file, another row group layout, another row order, another column order)
hash the same; any changed value hashes differently.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from feedback_loop import __version__
from feedback_loop.dataset import CREATED_AT, ID
from feedback_loop.errors import ModelNotFound

GIT_SHA_ENV = "FEEDBACK_LOOP_GIT_SHA"
IMAGE_ENV = "FEEDBACK_LOOP_IMAGE"  # set on the task by the pipeline (the registry rewrite reaches it)
# The distributions whose versions change what a trained model computes or how it is read.
DEPENDENCIES = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "pandas", "pyarrow", "scikit-learn", "kfp")
_BATCH_ROWS = 65_536
SCHEMA_FILE = Path(__file__).resolve().parent / "lineage.schema.json"  # the documented contract of lineage.json


class _HashSink:
    """A write-only file object that feeds a sha256 instead of storing bytes."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.closed = False

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def canonical_table(table: pa.Table) -> pa.Table:
    """Columns sorted by name, rows sorted by id (then created_at), no schema metadata.

    Parquet files written by pandas carry index metadata and arbitrary row groups; neither
    belongs to the data, so both are dropped before hashing.
    """
    table = table.select(sorted(table.column_names))
    keys = [(name, "ascending") for name in (ID, CREATED_AT) if name in table.column_names]
    if keys:
        table = table.sort_by(keys)
    schema = pa.schema([pa.field(f.name, f.type, nullable=True) for f in table.schema])
    return pa.Table.from_arrays(table.columns, schema=schema).combine_chunks()


def table_hash(table: pa.Table) -> str:
    """sha256 (hex) of the table's canonical Arrow IPC stream."""
    table = canonical_table(table)
    sink = _HashSink()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), table.schema) as writer:
        for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
            writer.write_batch(batch)
    return sink.digest.hexdigest()


def data_hash(path: Path | str) -> str:
    """sha256 (hex) of the rows of a Parquet file, independent of how it was written."""
    return table_hash(pq.read_table(path))


def package_version() -> str:
    return __version__


def git_sha() -> str | None:
    """The source revision: FEEDBACK_LOOP_GIT_SHA (the images' build argument), else the commit
    of the git checkout the package runs from (a local run); None otherwise, when the package
    version (`package_version`) is the revision recorded."""
    return os.environ.get(GIT_SHA_ENV) or _checkout_sha()


@cache
def _checkout_sha() -> str | None:
    source = Path(__file__).resolve().parent
    if not any((parent / ".git").exists() for parent in source.parents):
        return None  # an installed wheel: no checkout to ask
    try:
        answer = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = answer.stdout.strip()
    return sha if answer.returncode == 0 and len(sha) == 40 else None


def image() -> str | None:
    """The container image the code ran in, when the pipeline named it (FEEDBACK_LOOP_IMAGE)."""
    return os.environ.get(IMAGE_ENV) or None


def dependency_versions(names: tuple[str, ...] = DEPENDENCIES) -> dict[str, str]:
    """Installed versions of `names`; a distribution that is not installed is left out."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def code_lineage() -> dict[str, Any]:
    return {
        "package_version": package_version(),
        "git_sha": git_sha(),
        "image": image(),
        "dependencies": dependency_versions(),
    }


@cache
def _validator() -> Any:
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    return jsonschema.Draft202012Validator(schema)


def validate(lineage: Any, where: str) -> dict[str, Any]:
    """`lineage` when it meets lineage.schema.json; else ModelNotFound naming the first field at fault."""
    errors = sorted(_validator().iter_errors(lineage), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return lineage
    error = errors[0]
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = next(f for f in error.validator_value if f not in error.instance)
        field = f"{path}.{missing}" if path else missing
        problem = f"missing field '{field}'"
    else:
        problem = f"field '{path or '(top)'}': {error.message}"
    raise ModelNotFound(f"{where} is not a valid lineage record ({problem}); see {SCHEMA_FILE.name} for the fields a version needs")
