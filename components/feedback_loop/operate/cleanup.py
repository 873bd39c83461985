"""Keep the model store tidy: the newest N versions stay, and so does every version the
rollout needs, however old.

Protected, whatever `keep_versions` says:

- the stable version (it serves; during a canary it is also the rollback target);
- the canary (it serves its share of traffic);
- the previous production version (the one a promotion or a first deployment replaced
  last), so an operator can go back one step after a promotion.

The rollout state is read from the serving target (`rollout.json` locally, the
InferenceService annotation on KServe) right before each deletion, so a rollout started
meanwhile is honoured. Versions without their completion marker (an upload in progress
or interrupted) are left alone. Purging old feedback is `feedback-loop purge`'s job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from feedback_loop import storage
from feedback_loop.deploy.publish import SCRATCH_PREFIX, version_dir_uri
from feedback_loop.deploy.rollout import DEPLOYED, PROMOTED, RolloutState, traffic
from feedback_loop.deploy.targets import Target
from feedback_loop.errors import FeedbackLoopError
from feedback_loop.layout import COMPLETE_MARKER, LINEAGE_FILE

log = logging.getLogger(__name__)

PRODUCTION_ACTIONS = (DEPLOYED, PROMOTED)
# A publish's staging untouched this long is taken as abandoned (a live one writes every few seconds).
STALE_AFTER_S = 3600


class ProtectedVersion(FeedbackLoopError):
    """A version the rollout needs was asked to be deleted."""


@dataclass(frozen=True)
class CleanupPlan:
    """Which versions stay and which go.

    Attributes:
        keep: Versions kept because they are among the newest `keep_versions`.
        protected: Versions kept because the rollout needs them, with why.
        delete: Versions to delete (or deleted), oldest first.
        incomplete: Directories without a completion marker, left alone.
    """

    keep: list[str] = field(default_factory=list)
    protected: dict[str, str] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # half-done publishes' staging and scratch, removed

    def to_markdown(self, model_name: str, done: bool) -> str:
        rows = [
            *(f"| `{v}` | protected: {why} |" for v, why in self.protected.items()),
            *(f"| `{v}` | kept: among the newest |" for v in self.keep),
            *(f"| `{v}` | {'deleted' if done else 'to delete'} |" for v in self.delete),
            *(f"| `{v}` | left alone: incomplete upload |" for v in self.incomplete),
            *(f"| `{v}` | {'removed' if done else 'to remove'}: left by a publish that never finished |" for v in self.stale),
        ]
        return "\n".join([f"# Model store clean-up of `{model_name}`", "", "| version | outcome |", "|---|---|", *rows, ""])


def protected_versions(state: RolloutState | None) -> dict[str, str]:
    """The versions the rollout needs, with the reason for each."""
    if state is None:
        return {}
    found: dict[str, str] = {}
    if state.stable is not None:
        found[state.stable.version] = "serves (stable)" + (", the rollback target of the canary" if state.canary else "")
    if state.canary is not None:
        found[state.canary.version] = f"serves (canary at {traffic(state)} %)"
    current = state.stable.version if state.stable else None
    earlier = [h["version"] for h in state.history if h.get("action") in PRODUCTION_ACTIONS and h.get("version") != current]
    if earlier and earlier[-1] not in found:
        found[earlier[-1]] = "previous production version (to go back one step)"
    return found


def plan(versions: list[str], created: dict[str, str], state: RolloutState | None, keep_versions: int,
         incomplete: list[str] | None = None) -> CleanupPlan:
    """Splits complete `versions` into kept, protected and deleted; pure.

    `created` maps a version to its creation time (ISO 8601); a version without one sorts
    by its name, which is its UTC training time (vYYYYMMDD-HHMMSS).
    """
    if keep_versions < 1:
        raise FeedbackLoopError(f"keep_versions={keep_versions}: at least 1 version must stay")
    protected = {v: why for v, why in protected_versions(state).items() if v in versions}
    newest_first = sorted(versions, key=lambda v: (created.get(v, ""), v), reverse=True)
    newest = [v for v in newest_first[:keep_versions] if v not in protected]
    delete = [v for v in reversed(newest_first[keep_versions:]) if v not in protected]
    return CleanupPlan(keep=newest, protected=protected, delete=delete, incomplete=sorted(incomplete or []))


def survey(store_uri: str, model_name: str) -> tuple[list[str], dict[str, str], list[str]]:
    """The model's complete versions, their creation times (from lineage.json), the incomplete ones."""
    model_uri = storage.join(storage.normalize(store_uri), model_name)
    complete, created, incomplete = [], {}, []
    for version in storage.list_dirs(model_uri):
        uri = storage.join(model_uri, version)
        if not storage.is_complete(uri):
            incomplete.append(version)
            continue
        complete.append(version)
        lineage = storage.join(uri, LINEAGE_FILE)
        if storage.exists(lineage):
            created[version] = str(json.loads(storage.read_bytes(lineage)).get("created_at") or "")
    return complete, created, incomplete


def delete_version(store_uri: str, model_name: str, version: str, target: Target) -> None:
    """Deletes one version directory, after checking the live rollout state does not need it."""
    needed = protected_versions(target.read())
    if version in needed:
        raise ProtectedVersion(f"{model_name} {version} is not deleted: it {needed[version]}; roll out another version first")
    uri = version_dir_uri(store_uri, model_name, version)
    _delete_dir(uri)
    log.info("deleted %s %s (%s)", model_name, version, uri)


def _delete_dir(uri: str) -> None:
    if uri.startswith("gs://"):
        from urllib.parse import urlparse

        parsed = urlparse(uri)
        bucket = storage._gcs_client().bucket(parsed.netloc)  # noqa: SLF001 (the store's one client, emulator-aware)
        prefix = parsed.path.strip("/") + "/"
        # The marker first: from then on no reader trusts the half-deleted version.
        marker = bucket.blob(prefix + COMPLETE_MARKER)
        if marker.exists():
            marker.delete()
        for blob in bucket.list_blobs(prefix=prefix):
            blob.delete()
        return
    path = storage.local_path(uri)
    (path / COMPLETE_MARKER).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=False)


def cleanup(store_uri: str, model_name: str, target: Target, keep_versions: int, dry_run: bool = False) -> CleanupPlan:
    """Deletes the versions beyond the newest `keep_versions` that the rollout does not need,
    and what publishes killed midway left behind (see `stale_leftovers`)."""
    versions, created, incomplete = survey(store_uri, model_name)
    result = plan(versions, created, target.read(), keep_versions, incomplete)
    for version in result.delete if not dry_run else []:
        delete_version(store_uri, model_name, version, target)
    if incomplete:
        log.info("left alone (no completion marker): %s", ", ".join(incomplete))
    stale = stale_leftovers(store_uri, model_name)
    for path in stale if not dry_run else []:
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s, left by a publish that never finished", path)
    return replace(result, stale=[str(p) for p in stale])


def stale_leftovers(store_uri: str, model_name: str, now: float | None = None) -> list[Path]:
    """Staging directories in a local store (`.<version>.<id>.tmp`) and publish scratch in the
    temporary directory untouched for STALE_AFTER_S: a publish killed outright runs no clean-up
    of its own. (A GCS upload stages nothing: its versions wait for their marker.)"""
    cutoff = (time.time() if now is None else now) - STALE_AFTER_S
    found: list[Path] = []
    candidates: list[Path] = list(Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"))
    model_uri = storage.join(storage.normalize(store_uri), model_name)
    if not model_uri.startswith("gs://") and storage.local_path(model_uri).is_dir():
        candidates += storage.local_path(model_uri).glob(".*.tmp")
    for path in candidates:
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to read
            if path.is_dir() and not path.is_symlink() and _newest_change(path) < cutoff:
                found.append(path)
    return sorted(found)


def _newest_change(path: Path) -> float:
    """The latest modification time in the tree: a publish still copying keeps touching it."""
    return max([path.stat().st_mtime, *(p.stat().st_mtime for p in path.rglob("*"))])


def summary(result: CleanupPlan, dry_run: bool) -> dict[str, Any]:
    return {"dry_run": dry_run, "deleted" if not dry_run else "would_delete": result.delete, "kept": result.keep,
            "protected": result.protected, "incomplete": result.incomplete,
            "stale_removed" if not dry_run else "stale_to_remove": result.stale}

