"""Model directories in the run directory, committed atomically like datasets.

A model is uploaded under `<location>/_attempt-<id>/` and becomes visible when `_model.json`,
naming that attempt, is written (one PUT or rename). `local_model_path` turns any model reference
(a hub id, a local directory, an s3:// URI, a committed run model) into something
`from_pretrained` can open, downloading remote directories into a local cache once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from amp_ray.errors import StorageError
from amp_ray.storage.dataset import ATTEMPT_PREFIX, new_attempt_id
from amp_ray.storage.location import Location, guard, open_location

MARKER = "_model.json"
COMPLETE = ".complete"
CACHE = Path(os.environ.get("AMP_RAY_CACHE", Path.home() / ".cache" / "amp-ray")) / "models"


def new_model_attempt() -> str:
    return f"{ATTEMPT_PREFIX}{new_attempt_id()}"


def upload_model_dir(local_dir: str | Path, location: Location, attempt: str) -> None:
    """Copy a saved model directory into `location/attempt` (not visible until committed)."""
    target = location.join(attempt)
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            relative = path.relative_to(local_dir).as_posix()
            destination = target.join(relative)
            guard(destination, "write", destination.fs.put_file, str(path), destination.path)


def commit_model(location: Location, attempt: str, metadata: dict[str, Any] | None = None) -> None:
    """Make `attempt` the model at `location`, then remove other attempts."""
    record = {"attempt": attempt, "committed_at": time.time(), "metadata": metadata or {}}
    location.join(MARKER).write_bytes_atomic(json.dumps(record, indent=1).encode())
    for entry in guard(location, "list", location.fs.ls, location.path, detail=False):
        name = posixpath.basename(entry.rstrip("/"))
        if name.startswith(ATTEMPT_PREFIX) and name != attempt:
            Location(location.fs, entry).remove()


def committed_model(location: Location) -> Location | None:
    """The committed attempt folder of a run model, or None if `location` holds none."""
    marker = location.join(MARKER)
    if not marker.exists():
        return None
    return location.join(json.loads(marker.read_bytes())["attempt"])


def model_metadata(location: Location) -> dict[str, Any]:
    """The metadata the committed model at `location` was committed with ({} if none)."""
    marker = location.join(MARKER)
    if not marker.exists():
        return {}
    return json.loads(marker.read_bytes())["metadata"]


def local_model_path(reference: str, storage: Any = None) -> str:
    """A path or hub id that `from_pretrained` can open for `reference`."""
    looks_remote = "://" in reference and not reference.startswith("file://")
    looks_local = reference.startswith(("/", ".", "~", "file://")) or os.path.isdir(reference)
    if not (looks_remote or looks_local):
        return reference  # a hub id: transformers resolves (and caches) it
    location = open_location(reference, storage)
    if not location.exists():
        raise StorageError(f"model {reference} does not exist")
    source = committed_model(location) or location
    if source.is_local:
        return source.path
    return str(download_once(source, CACHE / hashlib.sha256(source.uri.encode()).hexdigest()[:24]))


def download_once(source: Location, cached: Path) -> Path:
    """`source` copied to `cached` once per node: the first actor downloads under a file lock
    while the others on the node wait for it, the copy is checked file by file against the
    source's sizes before it is marked complete, and partial folders that a killed download
    left behind are removed by the next one."""
    if (cached / COMPLETE).exists():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with open(cached.with_name(cached.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also on a crash
        if (cached / COMPLETE).exists():  # another actor finished it while this one waited
            return cached
        for stale in cached.parent.glob(f"{cached.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        partial = cached.with_name(f"{cached.name}.partial-{uuid.uuid4().hex[:6]}")
        sizes = guard(source, "list", source.fs.find, source.path, detail=True)
        for remote, info in sorted(sizes.items()):
            destination = partial / posixpath.relpath(remote, source.path)
            destination.parent.mkdir(parents=True, exist_ok=True)
            guard(source, "read", source.fs.get_file, remote, str(destination))
            if destination.stat().st_size != info["size"]:
                raise StorageError(
                    f"downloading {remote}: got {destination.stat().st_size} bytes of "
                    f"{info['size']}",
                    hint="the model changed while it was read, or the disk is full",
                )
        (partial / COMPLETE).touch()
        shutil.rmtree(cached, ignore_errors=True)  # an incomplete folder from an older version
        partial.rename(cached)
    return cached
