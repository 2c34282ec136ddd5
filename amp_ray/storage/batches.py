"""Fixed batches over a stored dataset, for the model stages whose output depends on which rows
share a batch: sampling is seeded per batch, and padding follows the batch's longest row.

The rows a stage processes are put in item_id order and cut into batches of `batch_size` rows;
each batch is one Ray Data block, read by a light task from the rows' places in the Parquet
files (the driver holds ids and places, never the rows). Pools that take whole blocks as batches
(`runtime.map_with_actor_pool(..., whole_blocks=True)`) then see the same batches on every run,
whatever the pool sizes or the order blocks finish in. A resumed run skips the batches the
journal has; its remaining batches are the same ones an unbroken run has."""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Collection
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from amp_ray.storage.dataset import Dataset

PLACES = pa.schema([("file", pa.int32()), ("row", pa.int64())])


def batch_places(
    dataset: Dataset,
    batch_size: int,
    columns: tuple[str, ...] = (),
    select: Callable[[pa.Table], pa.Array] | None = None,
    done: Collection[str] = frozenset(),
) -> list[pa.Table]:
    """Each batch as a PLACES table (file index, row in that file), in item_id order. `select`
    picks rows from a table of item_id and `columns`; a batch whose items are all `done` is left
    out (journaled batches are whole, so a resumed run keeps the others as they were)."""
    places: list[tuple[str, int, int]] = []
    for file, path in enumerate(dataset.file_paths()):
        table = pq.read_table(path, columns=["item_id", *columns], filesystem=dataset.location.fs)
        keep = select(table).to_pylist() if select else [True] * table.num_rows
        ids = table.column("item_id").to_pylist()
        chosen = enumerate(zip(ids, keep, strict=True))
        places += [(item, file, row) for row, (item, k) in chosen if k]
    places.sort()
    batches = []
    for start in range(0, len(places), batch_size):
        batch = [place for place in places[start : start + batch_size] if place[0] not in done]
        if batch:
            files, rows = [p[1] for p in batch], [p[2] for p in batch]
            batches.append(pa.table({"file": files, "row": rows}, schema=PLACES))
    return batches


def read_places(places: pa.Table, paths: list[str], fs: Any) -> pa.Table:
    """The rows at `places`, in that order, reading only the row groups that hold them."""
    order = list(
        zip(places.column("file").to_pylist(), places.column("row").to_pylist(), strict=True)
    )
    wanted: dict[int, set[int]] = {}
    for file, row in order:
        wanted.setdefault(file, set()).add(row)
    found: dict[tuple[int, int], pa.Table] = {}
    for file, rows in wanted.items():
        with fs.open(paths[file], "rb") as handle:
            parquet = pq.ParquetFile(handle)
            starts = [0]
            for group in range(parquet.metadata.num_row_groups):
                starts.append(starts[-1] + parquet.metadata.row_group(group).num_rows)
            by_group: dict[int, list[int]] = {}
            for row in rows:
                by_group.setdefault(bisect.bisect_right(starts, row) - 1, []).append(row)
            for group, in_group in by_group.items():
                table = parquet.read_row_group(group)
                for row in in_group:
                    found[(file, row)] = table.slice(row - starts[group], 1)
    return pa.concat_tables([found[place] for place in order])


def where_in(column: str, values: Collection[str]) -> Callable[[pa.Table], pa.Array]:
    """A `select`: the rows whose `column` is one of `values`."""

    def select(table: pa.Table) -> pa.Array:
        return pc.is_in(table.column(column), value_set=pa.array(sorted(values)))

    return select


def fixed_batches(
    dataset: Dataset,
    batch_size: int,
    columns: tuple[str, ...] = (),
    select: Callable[[pa.Table], pa.Array] | None = None,
    done: Collection[str] = frozenset(),
) -> Any:
    """The selected rows of `dataset` as a Ray dataset of one block per fixed batch."""
    import ray.data

    from amp_ray.runtime import LIGHT_TASK_CPUS

    batches = batch_places(dataset, batch_size, columns, select, done)
    if not batches:
        return ray.data.from_blocks([dataset.manifest.arrow_schema.empty_table()])
    read = functools.partial(read_places, paths=dataset.file_paths(), fs=dataset.location.fs)
    # batch_size=None: each block (one batch of places) is read into one block of rows
    return ray.data.from_blocks(batches).map_batches(
        read, batch_size=None, batch_format="pyarrow", num_cpus=LIGHT_TASK_CPUS
    )
