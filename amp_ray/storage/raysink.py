"""Writing Ray Data datasets into amp-ray datasets, from the workers, in one pass.

`write_ray(dataset, writers, route)` runs one Ray Data write: each write task splits its rows with
`route` (say, good rows and quarantined rows), writes one Parquet part per target dataset, and
reports the parts back; the driver registers them with the writers, whose `commit` publishes them.
One execution, one progress bar, and retried tasks never leave duplicate rows (only the parts
of successful tasks are registered). With a `Journal` (storage/journal.py) each task also records
its parts as it finishes, so a killed stage can resume and still write every key exactly once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from ray.data import Datasink
from ray.data.block import BlockAccessor

from amp_ray.storage.dataset import DatasetWriter, FileEntry, conform, write_part
from amp_ray.storage.journal import Journal, write_entry
from amp_ray.storage.location import Location

Route = Callable[[pa.Table], dict[str, pa.Table]]


@dataclass(frozen=True)
class _Target:
    location: Location
    schema: pa.Schema
    schema_name: str
    attempt_dir: str


class _PartsDatasink(Datasink[dict[str, list[FileEntry]]]):
    def __init__(
        self,
        targets: dict[str, _Target],
        route: Route | None,
        journal_dir: Location | None = None,
        key_column: str = "item_id",
    ) -> None:
        self.targets = targets
        self.route = route
        self.journal_dir = journal_dir
        self.key_column = key_column
        self.files: dict[str, list[FileEntry]] = {name: [] for name in targets}

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, list[FileEntry]]:
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        tables = [table for table in tables if table.num_rows]
        if not tables:
            return {}
        table = pa.concat_tables(tables, promote_options="default")
        routed = self.route(table) if self.route else {next(iter(self.targets)): table}
        written: dict[str, list[FileEntry]] = {}
        for name, part in routed.items():
            if part.num_rows == 0:
                continue
            target = self.targets[name]
            part = conform(part, target.schema, target.schema_name)
            path = f"{target.attempt_dir}/part-{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}.parquet"
            written[name] = [write_part(target.location, path, part, target.schema_name)]
        if self.journal_dir is not None:
            write_entry(self.journal_dir, written, table.column(self.key_column).to_pylist())
        return written

    def on_write_complete(self, write_result: Any) -> None:
        for returned in write_result.write_returns:
            for name, entries in (returned or {}).items():
                self.files[name].extend(entries)


def write_ray(
    dataset: Any,
    writers: dict[str, DatasetWriter],
    route: Route | None = None,
    journal: Journal | None = None,
) -> dict[str, int]:
    """Write `dataset` into `writers` (routed by `route`); return rows written per writer.

    With a journal, the parts of this run and of earlier journaled runs are all registered.
    """
    targets = {
        name: _Target(w.location, w.schema, w.schema_name, w.attempt_dir)
        for name, w in writers.items()
    }
    from amp_ray.runtime import LIGHT_TASK_CPUS

    sink = _PartsDatasink(targets, route, journal.entries_dir if journal else None)
    dataset.write_datasink(sink, ray_remote_args={"num_cpus": LIGHT_TASK_CPUS})
    if journal is not None:
        journal.collect(writers)
    else:
        for name, entries in sink.files.items():
            writers[name].add_files(entries)
    return {name: sum(entry.num_rows for entry in entries) for name, entries in sink.files.items()}
