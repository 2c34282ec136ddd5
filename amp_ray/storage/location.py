"""Paths on local disk or object storage, behind one fsspec filesystem.

A `Location` is a filesystem plus a path in it. Local paths and `s3://` URIs (through s3fs) are
first-class; any other fsspec protocol whose package is installed (gs://, abfs://) works as well.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from amp_ray.errors import StorageError

if TYPE_CHECKING:
    import pyarrow.fs

    from amp_ray.spec.blocks import StorageSpec


@dataclass(frozen=True)
class Location:
    """A path in a filesystem. `uri` is what users see in messages; `path` is what fsspec takes."""

    fs: fsspec.AbstractFileSystem
    path: str

    @property
    def protocol(self) -> str:
        protocol = self.fs.protocol
        return protocol if isinstance(protocol, str) else protocol[0]

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def uri(self) -> str:
        return self.path if self.is_local else f"{self.protocol}://{self.path}"

    def join(self, *parts: str) -> Location:
        return Location(self.fs, posixpath.join(self.path, *parts))

    @cached_property
    def arrow_fs(self) -> pyarrow.fs.FileSystem:
        """The same filesystem as pyarrow sees it (for Ray Data readers and writers)."""
        import pyarrow.fs

        if self.is_local:
            return pyarrow.fs.LocalFileSystem()
        return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(self.fs))

    def exists(self) -> bool:
        return bool(guard(self, "check", self.fs.exists, self.path))

    def read_bytes(self) -> bytes:
        return guard(self, "read", self.fs.cat_file, self.path)

    def write_bytes_atomic(self, data: bytes) -> None:
        """Make `data` visible at this path all at once: readers see the old file or the new one.

        An object store PUT is already atomic; on a local disk we write beside and rename.
        """
        if not self.is_local:
            guard(self, "write", self.fs.pipe_file, self.path, data)
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        temp = f"{self.path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        finally:
            if os.path.exists(temp):
                os.remove(temp)

    def list_files(self) -> list[str]:
        """Every file below this path (paths as fsspec gives them), or [] when it does not exist."""
        if not self.exists():
            return []
        return sorted(guard(self, "list", self.fs.find, self.path))

    def remove(self) -> None:
        if self.exists():
            guard(self, "remove", self.fs.rm, self.path, recursive=True)


@dataclass(frozen=True)
class LinkedLocation(Location):
    """A run directory whose first-level folders named in `links` live elsewhere: a sweep trial
    reads the stages it shares with its run from the run's own folders, without copying them.
    Only paths joined from this root are redirected; everything else is this location's."""

    links: tuple[tuple[str, Location], ...] = ()

    def join(self, *parts: str) -> Location:
        relative = posixpath.join(*parts) if parts else ""
        head = relative.split("/", 1)[0]
        for name, target in self.links:
            if head == name:
                return target.join(relative)
        return Location(self.fs, posixpath.join(self.path, relative))


def open_location(uri: str, storage: StorageSpec | None = None) -> Location:
    """Resolve a local path or a URI; S3 options (endpoint, region, profile) come from `storage`."""
    if "://" not in uri or uri.startswith("file://"):
        local = uri.removeprefix("file://")
        return Location(
            LocalFileSystem(auto_mkdir=True), os.path.abspath(os.path.expanduser(local))
        )
    protocol = uri.split("://", 1)[0]
    # A fresh filesystem each time: fsspec's instance cache would keep the credentials and
    # endpoint of an earlier open in this process even after the environment changed.
    options: dict[str, Any] = {"skip_instance_cache": True}
    if protocol in ("s3", "s3a") and storage is not None:
        options.update(_s3_options(storage))
    try:
        fs, path = fsspec.core.url_to_fs(uri, **options)
    except (ImportError, ValueError) as exc:
        raise StorageError(
            f"cannot open {uri}: {exc}",
            hint="s3:// and local paths are supported out of the box; other protocols need "
            "their fsspec package (gcsfs for gs://, adlfs for abfs://)",
        ) from None
    return Location(fs, path.rstrip("/"))


def _s3_options(storage: StorageSpec) -> dict[str, Any]:
    options: dict[str, Any] = {"anon": storage.anonymous}
    if storage.endpoint_url:
        options["endpoint_url"] = storage.endpoint_url
    if storage.profile:
        options["profile"] = storage.profile
    if storage.region:
        options["client_kwargs"] = {"region_name": storage.region}
    return options


def guard(location: Location, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a filesystem operation; turn the errors a user can fix into one clear StorageError."""
    try:
        return fn(*args, **kwargs)
    except StorageError:
        raise
    except Exception as exc:
        explained = explain_storage_error(exc, location, action)
        if explained is None:
            raise
        raise explained from exc


def explain_storage_error(exc: Exception, location: Location, action: str) -> StorageError | None:
    name = type(exc).__name__
    text = str(exc)
    where = location.uri
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return StorageError(
            f"no credentials to {action} {where}",
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or storage.profile, "
            "or storage.anonymous: true for a public bucket",
        )
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"):
        return StorageError(
            f"cannot reach the object store to {action} {where}: {text}",
            hint="check storage.endpoint_url (or AWS_ENDPOINT_URL) and the network",
        )
    if isinstance(exc, FileNotFoundError) and not location.is_local and "bucket" in text.lower():
        bucket = location.path.split("/", 1)[0]
        return StorageError(
            f"bucket {bucket!r} does not exist (needed to {action} {where})",
            hint="create it first, or fix the bucket name in the path",
        )
    if isinstance(exc, PermissionError):
        return StorageError(f"permission denied to {action} {where}: {text}")
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return StorageError(f"cannot {action} {where}: {text or name}")
    return None


def check_writable(location: Location) -> None:
    """Prove before any work starts that `location` can be written, so that nothing fails late."""
    probe = location.join(f".amp-ray-write-check-{uuid.uuid4().hex}")
    try:
        probe.fs.pipe_file(probe.path, b"ok")
    except Exception as exc:
        explained = explain_storage_error(exc, location, "write under")
        raise (explained or StorageError(f"cannot write under {location.uri}: {exc}")) from None
    guard(probe, "clean up", probe.fs.rm, probe.path)
