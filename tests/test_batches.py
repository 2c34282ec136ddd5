"""Fixed batches over a stored dataset (storage/batches.py): the same batches in item order
whatever the files' layout, whole batches skipped once done, and through an actor pool that
takes whole blocks, the same rows together in every call."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from amp_ray.spec.blocks import ActorPoolSpec
from amp_ray.storage import Dataset, DatasetWriter, open_location
from amp_ray.storage.batches import (
    PLACES,
    RowReader,
    batch_places,
    fixed_batches,
    read_places,
    where_in,
)
from amp_ray.storage.dataset import FileEntry

SCHEMA = pa.schema([("item_id", pa.string()), ("split", pa.string()), ("value", pa.int64())])


def stored(path: Path, ids: list[str], files: int, row_group: int) -> Dataset:
    """`ids` written in the given order over `files` files with row groups of `row_group`."""
    writer = DatasetWriter(open_location(str(path)), SCHEMA, "items")
    per_file = -(-len(ids) // files)
    for start in range(0, len(ids), per_file):
        part = ids[start : start + per_file]
        table = pa.table(
            {
                "item_id": part,
                "split": ["a" if int(i[1:]) % 3 else "b" for i in part],
                "value": [int(i[1:]) for i in part],
            },
            schema=SCHEMA,
        )
        # a part file of several row groups, as write_part writes it but with `row_group` rows each
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, row_group_size=row_group)
        data = buffer.getvalue().to_pybytes()
        name = f"{writer.attempt_dir}/part-{start:05d}.parquet"
        target = writer.location.join(name)
        target.fs.pipe_file(target.path, data)
        writer.add_files([FileEntry(name, table.num_rows, len(data))])
    writer.commit()
    return Dataset(open_location(str(path)))


def batches_of(dataset: Dataset, **kwargs) -> list[list[int]]:
    paths, fs = dataset.file_paths(), dataset.location.fs
    return [
        read_places(places, paths, fs).column("value").to_pylist()
        for places in batch_places(dataset, **kwargs)
    ]


def test_the_batches_are_in_item_order_whatever_the_files(tmp_path: Path) -> None:
    ids = [f"i{n:03d}" for n in range(50)]
    shuffled = random.Random(0).sample(ids, len(ids))
    one = stored(tmp_path / "one", ids, files=1, row_group=50)
    many = stored(tmp_path / "many", shuffled, files=4, row_group=3)
    select = where_in("split", ["a"])
    expected = [n for n in range(50) if n % 3]
    for dataset in (one, many):
        batches = batches_of(dataset, batch_size=8, columns=("split",), select=select)
        assert [len(b) for b in batches] == [8, 8, 8, 8, 1]
        assert [v for b in batches for v in b] == expected


def test_a_kept_reader_parses_each_footer_once_and_reads_any_rows_in_the_asked_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RowReader keeps each file's footer between reads, as the training pipeline's actor keeps
    it for the run, and closes every file it opens; rows may sit anywhere in row groups of any
    size."""
    import amp_ray.storage.batches as batches

    ids = [f"i{n:03d}" for n in range(40)]
    dataset = stored(tmp_path / "d", ids, files=2, row_group=3)  # 20 rows a file
    paths, fs = dataset.file_paths(), dataset.location.fs
    handles: list = []
    parsed: list = []
    parquet_file = batches.pq.ParquetFile

    def counting_parquet_file(handle, metadata=None, **kwargs):
        if metadata is None:
            parsed.append(handle)
        return parquet_file(handle, metadata=metadata, **kwargs)

    monkeypatch.setattr(batches.pq, "ParquetFile", counting_parquet_file)

    def open_file(file: int):
        handles.append(fs.open(paths[file], "rb"))
        return handles[-1]

    reader = RowReader(open_file)
    first = [(1, 19), (0, 4), (0, 3), (1, 0), (0, 4)]
    second = [(0, 0), (1, 5), (0, 19)]
    for places in (first, second):
        table = pa.table(
            {"file": [f for f, _ in places], "row": [r for _, r in places]}, schema=PLACES
        )
        rows, sizes = reader.read(table)
        assert rows.column("value").to_pylist() == [20 * f + r for f, r in places]
        assert all(size > 0 for size in sizes)
    assert len(parsed) == 2  # one footer a file over both reads
    assert len(handles) == 4 and all(handle.closed for handle in handles)


def test_a_batch_whose_items_are_all_done_is_left_out(tmp_path: Path) -> None:
    dataset = stored(tmp_path / "d", [f"i{n:03d}" for n in range(20)], files=2, row_group=4)
    done = {f"i{n:03d}" for n in range(8)}  # the first batch, as the journal records it
    assert batches_of(dataset, batch_size=8, done=done) == [
        list(range(8, 16)),
        list(range(16, 20)),
    ]


def test_a_pool_of_whole_blocks_sees_the_fixed_batches(ray_session, tmp_path: Path) -> None:
    from amp_ray.runtime import map_with_actor_pool

    class BatchMembers:  # defined here: Ray pickles it by value (tests/ is no package)
        """Records, for each call, which values came together."""

        def __call__(self, batch: pa.Table) -> pa.Table:
            return pa.table({"members": [batch.column("value").to_pylist()]})

    ids = random.Random(1).sample([f"i{n:03d}" for n in range(45)], 45)
    dataset = stored(tmp_path / "d", ids, files=3, row_group=5)
    rows = fixed_batches(dataset, 10)
    pool = ActorPoolSpec(num_actors=2, num_cpus=0.25, batch_size=4)  # its size is not used
    seen = map_with_actor_pool(rows, BatchMembers, pool, {}, whole_blocks=True)
    batches = sorted(tuple(row["members"]) for row in seen.take_all())
    assert batches == [tuple(range(s, min(s + 10, 45))) for s in range(0, 45, 10)]
