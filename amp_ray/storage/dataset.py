"""Parquet datasets that appear all at once.

A dataset is a folder with one `_manifest.json` and Parquet files under `_attempt-<id>/` folders.
A writer puts its files under a fresh attempt folder, then commits by writing the manifest, which
lists exactly the files of that attempt. Readers read only what the manifest lists, so a writer
that dies at any point leaves the previous version intact and its own partial files invisible;
the next commit removes such orphans. One object PUT (S3) or one rename (local disk) is the whole
commit, which is why the same code is safe on both.

    writer = DatasetWriter(location, schema=ITEMS)
    writer.write_table(table)        # as often as needed; or writer.write_ray(ray_dataset)
    writer.commit()                  # now, and only now, Dataset(location) sees the rows
"""

from __future__ import annotations

import base64
import json
import posixpath
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from amp_ray.errors import DataError
from amp_ray.storage.location import Location, guard

if TYPE_CHECKING:
    import ray.data

MANIFEST = "_manifest.json"
ATTEMPT_PREFIX = "_attempt-"
FORMAT = "amp-ray-dataset/1"


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the dataset folder
    num_rows: int
    size_bytes: int


@dataclass(frozen=True)
class Manifest:
    schema_name: str
    num_rows: int
    files: list[FileEntry]
    arrow_schema_b64: str
    attempt: str
    created_at: float
    metadata: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        try:
            raw = json.loads(data)
            raw["files"] = [FileEntry(**entry) for entry in raw["files"]]
            manifest = cls(**raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise DataError(f"{where} is not an amp-ray dataset manifest: {exc}") from None
        if manifest.format != FORMAT:
            raise DataError(f"{where}: unsupported dataset format {manifest.format!r}")
        return manifest

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(self.arrow_schema_b64)))


class Dataset:
    """A committed dataset: exactly the Parquet files its manifest lists."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self._manifest: Manifest | None = None

    @property
    def exists(self) -> bool:
        return self.location.join(MANIFEST).exists()

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            where = self.location.join(MANIFEST)
            if not where.exists():
                raise DataError(f"no committed dataset at {self.location.uri}")
            self._manifest = Manifest.from_json(where.read_bytes(), where.uri)
        return self._manifest

    @property
    def num_rows(self) -> int:
        return self.manifest.num_rows

    def file_paths(self) -> list[str]:
        return [self.location.join(entry.path).path for entry in self.manifest.files]

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        """All rows in one Arrow table (for small datasets and tests; Ray Data for the rest)."""
        schema = self.manifest.arrow_schema
        paths = self.file_paths()
        if not paths:
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        tables = [
            guard(
                self.location,
                "read",
                pq.read_table,
                path,
                columns=columns,
                filesystem=self.location.fs,
            )
            for path in paths
        ]
        return pa.concat_tables(tables)

    def read_ray(self, **read_args: Any) -> ray.data.Dataset:
        """The dataset as a Ray Data dataset, read by the cluster's workers."""
        import ray.data

        paths = self.file_paths()
        if not paths:
            return ray.data.from_blocks([self.manifest.arrow_schema.empty_table()])
        from amp_ray.runtime import LIGHT_TASK_CPUS

        read_args.setdefault("ray_remote_args", {"num_cpus": LIGHT_TASK_CPUS})
        return ray.data.read_parquet(paths, filesystem=self.location.arrow_fs, **read_args)


class DatasetWriter:
    """Writes a new version of a dataset under a fresh attempt folder; `commit` publishes it.

    Only parts registered with the writer are committed: a part written by a task that failed
    (and was retried) is never listed, so a retry cannot duplicate rows.
    """

    def __init__(
        self, location: Location, schema: pa.Schema, schema_name: str, attempt: str | None = None
    ) -> None:
        self.location = location
        self.schema = schema
        self.schema_name = schema_name
        self.attempt = attempt or new_attempt_id()  # a journal resumes an earlier attempt
        self.attempt_dir = f"{ATTEMPT_PREFIX}{self.attempt}"
        self._files: list[FileEntry] = []
        self.committed: Manifest | None = None

    def write_table(self, table: pa.Table) -> None:
        """Write one part file. Columns are checked against (and cast to) the dataset's schema."""
        table = conform(table, self.schema, self.schema_name)
        name = f"{self.attempt_dir}/part-{len(self._files):05d}-{uuid.uuid4().hex[:8]}.parquet"
        self.add_files([write_part(self.location, name, table, self.schema_name)])

    def write_ray(self, dataset: ray.data.Dataset) -> None:
        """Write a Ray Data dataset from the workers, straight into this attempt's folder."""
        from amp_ray.storage.raysink import write_ray

        write_ray(dataset, {self.schema_name: self})

    def add_files(self, entries: list[FileEntry]) -> None:
        """Register parts written (by workers) under `attempt_dir` for the next commit."""
        self._files.extend(entries)

    def commit(self, metadata: dict[str, Any] | None = None) -> Manifest:
        """Publish every registered part as the dataset's new version, then drop older files."""
        manifest = Manifest(
            schema_name=self.schema_name,
            num_rows=sum(entry.num_rows for entry in self._files),
            files=sorted(self._files, key=lambda entry: entry.path),
            arrow_schema_b64=base64.b64encode(self.schema.serialize().to_pybytes()).decode(),
            attempt=self.attempt,
            created_at=time.time(),
            metadata=metadata or {},
        )
        self.location.join(MANIFEST).write_bytes_atomic(manifest.to_json())
        self.committed = manifest
        self._remove_other_attempts()
        return manifest

    def abort(self) -> None:
        """Remove this attempt's files (after a crash, the next commit drops the orphans)."""
        if self.committed is None:
            self.location.join(self.attempt_dir).remove()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.abort()

    def _remove_other_attempts(self) -> None:
        if not self.location.exists():
            return
        for entry in guard(
            self.location, "list", self.location.fs.ls, self.location.path, detail=False
        ):
            name = posixpath.basename(entry.rstrip("/"))
            if name.startswith(ATTEMPT_PREFIX) and name != self.attempt_dir:
                Location(self.location.fs, entry).remove()


def new_attempt_id() -> str:
    """A fresh attempt id: sortable by time, unique across processes."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def write_part(
    dataset: Location, relative_path: str, table: pa.Table, schema_name: str = ""
) -> FileEntry:
    """Write `table` as one Parquet file in a single PUT (whole or absent, on S3 as on disk);
    the schemas read a row at a time get one row per row group."""
    from amp_ray.storage.schemas import ONE_ROW_GROUPS

    buffer = pa.BufferOutputStream()
    row_group_size = 1 if schema_name in ONE_ROW_GROUPS else None
    pq.write_table(table, buffer, row_group_size=row_group_size)
    data = buffer.getvalue().to_pybytes()
    target = dataset.join(relative_path)
    guard(target, "write", target.fs.pipe_file, target.path, data)
    return FileEntry(relative_path, table.num_rows, len(data))


def conform(table: pa.Table, schema: pa.Schema, schema_name: str) -> pa.Table:
    """Select and order the schema's columns and cast to its types; a missing column is an error."""
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise DataError(
            f"rows for {schema_name!r} lack the column(s) {missing} "
            f"(the schema has: {', '.join(schema.names)})"
        )
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"rows for {schema_name!r} do not fit its schema: {exc}") from None
