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


class RowReader:
    """Rows of a list of Parquet files by (file index, row in that file), reading only the row
    groups that hold them. Each file's footer is parsed once, on first use, and kept; the file
    itself is opened for each read and closed after it (an open S3 file keeps a read-ahead
    buffer of up to its block size). A reader that lives in an actor (the training pipeline's)
    thus does not parse a footer again at every batch: the training pipeline's files hold a row
    per row group, so their footers are large (bench/bench_training_reads.py: 64 rows of the
    demo's SFT files, 20 files of ~500 row groups, 81-85 ms with a parse per read, 14-15 ms with
    the footers kept)."""

    def __init__(self, open_file: Callable[[int], Any]) -> None:
        self.open_file = open_file  # file index -> a binary file object
        self._footers: dict[int, tuple[pq.FileMetaData, list[int]]] = {}

    def _footer(self, file: int, handle: Any) -> tuple[pq.FileMetaData, list[int]]:
        """The file's metadata and the first row of each row group (and its row count)."""
        if file not in self._footers:
            metadata = pq.ParquetFile(handle).metadata
            starts = [0]
            for group in range(metadata.num_row_groups):
                starts.append(starts[-1] + metadata.row_group(group).num_rows)
            self._footers[file] = (metadata, starts)
        return self._footers[file]

    def read(self, places: pa.Table) -> tuple[pa.Table, list[int]]:
        """The rows at `places` (PLACES columns), in that order, and the compressed bytes read
        for each (its row group's, shared among the group's rows read)."""
        order = list(
            zip(places.column("file").to_pylist(), places.column("row").to_pylist(), strict=True)
        )
        wanted: dict[int, set[int]] = {}
        for file, row in order:
            wanted.setdefault(file, set()).add(row)
        found: dict[tuple[int, int], tuple[pa.Table, int]] = {}
        for file, rows in wanted.items():
            with self.open_file(file) as handle:
                metadata, starts = self._footer(file, handle)
                by_group: dict[int, list[int]] = {}
                for row in sorted(rows):
                    by_group.setdefault(bisect.bisect_right(starts, row) - 1, []).append(row)
                groups = sorted(by_group)
                table = pq.ParquetFile(handle, metadata=metadata).read_row_groups(groups)
            offset = 0
            for group in groups:
                meta = metadata.row_group(group)
                size = sum(meta.column(c).total_compressed_size for c in range(meta.num_columns))
                share = size // len(by_group[group])
                for row in by_group[group]:
                    found[(file, row)] = (table.slice(offset + row - starts[group], 1), share)
                offset += meta.num_rows
        rows_read = pa.concat_tables([found[place][0] for place in order])
        return rows_read, [found[place][1] for place in order]


def read_places(places: pa.Table, paths: list[str], fs: Any) -> pa.Table:
    """The rows at `places`, in that order, reading only the row groups that hold them."""
    return RowReader(lambda file: fs.open(paths[file], "rb")).read(places)[0]


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
