"""The training input plan: one order of global batches whatever the worker layout or the way the
encoded files were written, each worker's share read row by row from storage."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from amp_ray.errors import SpecError
from amp_ray.storage import open_location
from amp_ray.storage.dataset import Dataset, DatasetWriter
from amp_ray.storage.schemas import ENCODED_ITEMS
from amp_ray.training.inputs import (
    Indexed,
    encoded_index,
    encoded_reader,
    make_plan,
    rows_of_rank,
    stored_rows,
)


def indexed(count: int, per_file: int) -> list[Indexed]:
    return [Indexed(f"item-{n:03d}", 10 + n % 7, n // per_file, n % per_file) for n in range(count)]


def batches(plan: pa.Table) -> list[list[str]]:
    steps: dict[int, list[str]] = {}
    for row in plan.to_pylist():
        steps.setdefault(row["step"], []).append(row["item_id"])
    return [steps[step] for step in sorted(steps)]


def test_the_plan_does_not_depend_on_how_the_files_were_written() -> None:
    one_file = make_plan(indexed(50, 50), seed=3, global_batch=8, steps=20)
    many_files = make_plan(indexed(50, 7)[::-1], seed=3, global_batch=8, steps=20)
    assert batches(one_file) == batches(many_files)
    assert len(batches(one_file)) == 20 and all(len(b) == 8 for b in batches(one_file))
    # every item once per epoch: the first 48 items planned are 48 different ones
    first = [item for batch in batches(one_file) for item in batch][:48]
    assert len(set(first)) == 48
    other_seed = make_plan(indexed(50, 50), seed=4, global_batch=8, steps=20)
    assert batches(other_seed) != batches(one_file)


def test_each_worker_takes_a_disjoint_contiguous_share_of_every_global_batch() -> None:
    plan = make_plan(indexed(40, 40), seed=0, global_batch=8, steps=10)
    shares = [rows_of_rank(plan, rank, share=4) for rank in range(2)]
    for rank, share in enumerate(shares):
        assert share.num_rows == 40
        assert set(share.column("slot").to_pylist()) == set(range(4 * rank, 4 * rank + 4))
    both = pa.concat_tables(shares).sort_by([("step", "ascending"), ("slot", "ascending")])
    assert both.to_pylist() == plan.to_pylist()


def test_length_buckets_batch_the_long_items_apart() -> None:
    rows = [Indexed(f"i{n:03d}", 100 if n % 10 == 0 else 10, 0, n) for n in range(320)]
    length = {row.item_id: row.length for row in rows}

    def mixed(mode: str) -> int:
        plan = make_plan(rows, seed=1, global_batch=8, steps=30, mode=mode)
        ids = plan.column("item_id").to_pylist()
        micro = [ids[i : i + 4] for i in range(0, len(ids), 4)]
        return sum(len({length[i] for i in batch}) > 1 for batch in micro)

    assert mixed("buckets") < mixed("shuffle") / 2


def test_by_length_pads_least_and_an_epoch_still_sees_every_item_once() -> None:
    rows = [Indexed(f"i{n:03d}", 10 + (n * 37) % 90, 0, n) for n in range(256)]
    length = {row.item_id: row.length for row in rows}

    def padded_share(mode: str) -> float:
        plan = make_plan(rows, seed=2, global_batch=8, steps=32, mode=mode)
        ids = plan.column("item_id").to_pylist()
        if mode != "buckets":  # (buckets leave out the rest of each bucket's last batch)
            assert sorted(ids) == sorted(length)  # 32 steps of 8: one epoch, no item twice
        micro = [[length[i] for i in ids[k : k + 8]] for k in range(0, len(ids), 8)]
        return sum(max(batch) * len(batch) - sum(batch) for batch in micro) / len(ids)

    assert padded_share("by_length") < padded_share("buckets") / 3
    assert padded_share("buckets") < padded_share("shuffle")
    again = make_plan(rows, seed=2, global_batch=8, steps=32, mode="by_length")
    other = make_plan(rows, seed=3, global_batch=8, steps=32, mode="by_length")
    first = make_plan(rows, seed=2, global_batch=8, steps=32, mode="by_length")
    assert again.equals(first) and not other.equals(first)


def test_fewer_items_than_one_global_batch_is_an_error_before_any_worker_starts() -> None:
    with pytest.raises(
        SpecError, match="5 usable training items, fewer than one global batch of 8"
    ):
        make_plan(indexed(5, 5), seed=0, global_batch=8, steps=1)


def test_a_worker_reads_only_the_rows_its_plan_names(tmp_path: Path) -> None:
    location = open_location(str(tmp_path / "encoded"))
    writer = DatasetWriter(location, ENCODED_ITEMS, "encoded_items")
    for start in (0, 30):
        writer.write_table(
            pa.Table.from_pylist(
                [
                    {
                        "item_id": f"item-{n:03d}",
                        "input_ids": list(range(n + 1)),
                        "response_weights": [1.0] * (n + 1),
                        "image": bytes(1000),
                        "image_uri": None,
                        "length": n + 1,
                    }
                    for n in range(start, start + 30)
                ],
                schema=ENCODED_ITEMS,
            )
        )
    writer.commit()
    dataset = Dataset(location)
    for path in dataset.file_paths():
        assert pq.ParquetFile(path).metadata.num_row_groups == 30  # a row a row group
    index = encoded_index(dataset)
    assert [row.item_id for row in index] == [f"item-{n:03d}" for n in range(60)]
    plan = make_plan(index, seed=0, global_batch=6, steps=2)
    files = [location.join(entry.path).uri for entry in dataset.manifest.files]
    read = stored_rows(plan, encoded_reader(files))
    assert read.column("item_id").to_pylist() == plan.column("item_id").to_pylist()
    for row in read.to_pylist():
        assert row["length"] == int(row["item_id"][-3:]) + 1 == len(row["input_ids"])
    total = sum(entry.size_bytes for entry in dataset.manifest.files)
    assert 12 * 1000 < sum(read.column("stored_bytes").to_pylist()) < total / 3


@pytest.mark.timeout(120)  # the old way never returned
@pytest.mark.usefixtures("ray_session")
def test_the_plan_becomes_a_dataset_while_workers_hold_all_but_a_fraction_of_a_cpu() -> None:
    """Two 0.75-CPU training runs leave 0.5 of the 2 CPUs: the plan's dataset must not wait on
    a 1-CPU task (ray.data.from_arrow ran one per block, and the demo's SFT hung there)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from amp_ray.training.inputs import plan_dataset

    held = placement_group([{"CPU": 0.75}, {"CPU": 0.75}])
    ray.get(held.ready(), timeout=60)
    try:
        plan = make_plan(indexed(24, 10), seed=0, global_batch=8, steps=3)
        dataset = plan_dataset(plan, 8)
        assert dataset.num_blocks() == 3  # one global batch a block
        blocks = [ray.get(ref, timeout=60) for ref in dataset.get_internal_block_refs()]
        assert [block.num_rows for block in blocks] == [8, 8, 8]
    finally:
        remove_placement_group(held)
