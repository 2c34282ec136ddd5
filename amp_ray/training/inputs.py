"""The training input pipeline: a plan of global batches computed once, and each Ray Train worker
streaming only the rows of its own micro-batches.

The driver reads two light columns of the encoded dataset (item_id, length) and derives the
whole run's order from them alone (`make_plan`): per epoch a seeded permutation of the item ids,
cut into global batches of G = micro_batch_size x accumulation x workers items. The plan names,
for each (step, slot), the item and where its row is stored (file, row); it does not depend on
the worker layout, so 1 worker x 2 accumulation steps and 2 workers x 1 train on the same items
per optimizer step.

Each worker's Ray Data pipeline (`RankShards`, a Ray Train DataConfig) keeps the plan rows of its
slots, reads exactly those rows from storage (the encoded files are written one row per Parquet
row group, so a row is one ranged read), and turns each stored image into the model's pixel
inputs in Ray Data tasks on their own CPUs, ahead of the step that needs them. Pixel tensors
exist only for the batches in flight, and packed in the actor's cache of recent items (bounded in
bytes); the driver never holds the dataset.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cachetools import LRUCache
from ray.train import DataConfig

from amp_ray.errors import DataError, SpecError
from amp_ray.models.processors import stored_processor
from amp_ray.models.registry import ActorModel
from amp_ray.storage.batches import RowReader
from amp_ray.storage.quarantine import QUARANTINE_REASON

T = TypeVar("T")
PLAN = pa.schema(
    [
        ("step", pa.int64()),  # the optimizer step, from 0
        ("slot", pa.int32()),  # the item's place in the global batch, 0 .. G-1
        ("item_id", pa.string()),
        ("file", pa.int32()),  # index into the encoded dataset's file list
        ("row", pa.int32()),  # row (= row group) within that file
    ]
)
BUCKET_GROUP = 16  # global batches whose items are grouped by length together
GROUPING = {"buckets": "buckets", "by_length": "sorted"}  # plan mode -> make_batches mode


@dataclass(frozen=True)
class Indexed:
    """An encoded row as the plan sees it."""

    item_id: str
    length: int
    file: int
    row: int

    def __len__(self) -> int:
        return self.length


def encoded_index(dataset: Any, keep: Any = None) -> list[Indexed]:
    """Every row of the encoded `dataset` (a storage Dataset): id, length and place, read from
    the light columns only; `keep(item_id)` filters (an SFT run's data fraction)."""
    rows = []
    for file, path in enumerate(dataset.file_paths()):
        table = pq.read_table(path, columns=["item_id", "length"], filesystem=dataset.location.fs)
        for row, (item_id, length) in enumerate(
            zip(
                table.column("item_id").to_pylist(), table.column("length").to_pylist(), strict=True
            )
        ):
            if keep is None or keep(item_id):
                rows.append(Indexed(item_id, length, file, row))
    return rows


def make_plan(
    rows: list[Indexed],
    seed: int,
    global_batch: int,
    steps: int,
    mode: str = "shuffle",
) -> pa.Table:
    """The rows of every global batch of the run, in order (see the module docstring). `mode`
    (spec.blocks.Batching): "shuffle" keeps each epoch's permutation; "buckets" and "by_length"
    form global batches within windows of BUCKET_GROUP global batches of it, "buckets" batching
    the longest 15% apart, "by_length" batching items of similar length together (a global
    batch's slots in length order, so that its micro-batches are too), and shuffle the window's
    batches (training/worker.make_batches). Grouped by global batch, not micro-batch: any layout
    of the same global batch (workers x accumulation x micro-batch) trains on the same items."""
    from amp_ray.training.worker import make_batches

    if len(rows) < global_batch:
        raise SpecError(
            f"{len(rows)} usable training items, fewer than one global batch of {global_batch} "
            "(micro_batch_size x gradient_accumulation_steps x scaling.num_workers)",
            hint="lower micro_batch_size, gradient_accumulation_steps or scaling.num_workers, or "
            "give more data",
        )
    ordered = sorted(rows, key=lambda r: r.item_id)  # independent of how the files were written
    needed, columns = steps * global_batch, {name: [] for name in PLAN.names}
    epoch = 0
    while len(columns["step"]) < needed:
        rng = random.Random(f"{seed}-plan-{epoch}")
        epoch_rows = rng.sample(ordered, len(ordered))
        if mode != "shuffle":
            window, grouping = global_batch * BUCKET_GROUP, GROUPING[mode]
            epoch_rows = [
                row
                for start in range(0, len(epoch_rows), window)
                for batch in make_batches(
                    epoch_rows[start : start + window], global_batch, rng, grouping
                )
                for row in batch
            ]
        for row in epoch_rows[: needed - len(columns["step"])]:
            position = len(columns["step"])
            columns["step"].append(position // global_batch)
            columns["slot"].append(position % global_batch)
            columns["item_id"].append(row.item_id)
            columns["file"].append(row.file)
            columns["row"].append(row.row)
        epoch += 1
    return pa.Table.from_pydict(columns, schema=PLAN)


def rows_of_rank(plan: pa.Table, rank: int, share: int) -> pa.Table:
    """The plan rows whose slots fall in worker `rank`'s share of each global batch."""
    first = rank * share
    slots = plan.column("slot")
    keep = pc.and_(pc.greater_equal(slots, first), pc.less(slots, first + share))
    return plan.filter(keep)


def stored_rows(plan: pa.Table, reader: RowReader) -> pa.Table:
    """The stored rows the plan rows name, in plan order, with step, slot and the bytes read;
    `reader` reads the encoded files (`encoded_reader`)."""
    stored, sizes = reader.read(plan.select(["file", "row"]))
    return (
        stored.append_column("step", plan.column("step"))
        .append_column("slot", plan.column("slot"))
        .append_column("stored_bytes", pa.array(sizes, pa.int64()))
    )


def encoded_reader(files: list[str], storage: Any = None) -> RowReader:
    """A RowReader over the encoded files (URIs), which keeps their footers."""
    from amp_ray.storage.location import open_location

    def open_file(file: int) -> Any:
        location = open_location(files[file], storage)
        return location.fs.open(location.path, "rb")

    return RowReader(open_file)


VISION_CACHE_BYTES = 256 * 2**20


def image_inputs_of(
    batch: pa.Table,
    processor_path: str,
    storage: Any = None,
    trust_remote_code: bool = False,
    cache: MutableMapping[str, bytes] | None = None,
) -> pa.Table:
    """Ray Data task: each row's stored image to the model's pixel inputs, packed beside the
    tokens (`vision`). An image that does not decode now (it changed or broke after encoding)
    marks its row with the reason and the stored image, for the worker to set aside. `cache`
    (item id -> packed inputs) is looked in first and filled."""
    from amp_ray.data.encode import load_image, pack_vision
    from amp_ray.models.conversation import image_inputs
    from amp_ray.storage.quarantine import ROW_JSON, row_to_json

    processor = stored_processor(processor_path, storage, trust_remote_code)
    vision, reasons, originals = [], [], []
    for row in batch.select(["item_id", "image", "image_uri"]).to_pylist():
        packed = cache.get(row["item_id"]) if cache is not None else None
        try:
            if packed is None:
                packed = pack_vision(image_inputs(processor, load_image(row, storage)))
                if cache is not None:
                    with contextlib.suppress(ValueError):  # larger than the whole cache
                        cache[row["item_id"]] = packed
            vision.append(packed)
            reasons.append(None)
            originals.append(None)
        except DataError as exc:
            vision.append(None)
            reasons.append(f"at training time: {exc.message}")
            originals.append(row_to_json(row))
    batch = batch.drop_columns(["image", "image_uri"])
    batch = batch.append_column("vision", pa.array(vision, pa.binary()))
    batch = batch.append_column(QUARANTINE_REASON, pa.array(reasons, pa.string()))
    return batch.append_column(ROW_JSON, pa.array(originals, pa.string()))


@dataclass(frozen=True)
class InputSource:
    """What a worker's pipeline reads: the encoded files, and the processor for the images."""

    files: list[str]
    processor_path: str
    storage: Any = None
    input_cpus: float = 0.25
    trust_remote_code: bool = False


class RankShards(DataConfig):
    """Ray Train DataConfig: worker r of n gets its own pipeline over the "train" plan (a Ray
    Dataset of PLAN rows, one global batch a block): its slots -> its stored rows -> pixels."""

    def __init__(self, global_batch: int, source: InputSource) -> None:
        super().__init__(datasets_to_split=[])
        self.global_batch, self.source = global_batch, source

    def configure(
        self,
        datasets: dict[str, Any],
        world_size: int,
        worker_handles: Any,
        worker_node_ids: Any,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        if self.global_batch % world_size:
            raise SpecError(
                f"a global batch of {self.global_batch} does not split over {world_size} workers"
            )
        import ray.data

        share = self.global_batch // world_size
        shards = []
        for rank in range(world_size):
            dataset = datasets["train"].map_batches(
                RankInputs,
                fn_constructor_kwargs={"rank": rank, "share": share, "source": self.source},
                compute=ray.data.ActorPoolStrategy(size=1),
                num_cpus=self.source.input_cpus,
                batch_size=None,  # one block, one global batch, at a time
                batch_format="pyarrow",
            )
            # the worker's micro-batches come in plan order (the driver's limits kept)
            dataset.context.execution_options.preserve_order = True
            shards.append({"train": dataset.iterator()})
        return shards


class RankInputs:
    """Ray Data callable class, one actor per worker's pipeline: a global batch of the plan ->
    worker `rank`'s stored rows, in plan order, with their pixel inputs. An actor and not tasks:
    a task of a fraction of a CPU could start in a fresh worker process, which imported torch
    and loaded the processor again (seconds, on every few steps, beside the training on the
    same cores); the actor loads them once for the run."""

    def __init__(self, rank: int, share: int, source: InputSource) -> None:
        self.rank, self.share, self.source = rank, share, source
        # kept for the run: each encoded file's footer is parsed once, not at every step
        self.reader = encoded_reader(source.files, source.storage)
        # a run visits each item once an epoch (the demo's SFT runs ~2 times, its preference
        # runs ~2.4), and the processor was most of this actor's time; the least recently used
        # inputs go past the budget, so large images (MBs an item) are simply made again
        self.vision = LRUCache(maxsize=VISION_CACHE_BYTES, getsizeof=len)
        stored_processor(source.processor_path, source.storage, source.trust_remote_code)

    def __call__(self, plan: pa.Table) -> pa.Table:
        source = self.source
        stored = stored_rows(rows_of_rank(plan, self.rank, self.share), self.reader)
        return image_inputs_of(
            stored, source.processor_path, source.storage, source.trust_remote_code, self.vision
        )


def plan_dataset(plan: pa.Table, global_batch: int) -> Any:
    """The plan as a Ray Dataset of one global batch a block, so that the workers' pipelines
    stream step by step."""
    import ray.data

    blocks = [plan.slice(start, global_batch) for start in range(0, plan.num_rows, global_batch)]
    # from_blocks reads the blocks' metadata here; from_arrow would run a 1-CPU task per block,
    # which waits for ever where training workers hold all but a fraction of a CPU
    return ray.data.from_blocks(blocks or [plan])


@dataclass(frozen=True)
class ResumablePlan:
    """The plan as Ray Train's "train" dataset, made each time a worker group starts (Train V2
    calls a callable dataset then): from the step the run's latest checkpoint reached, so that a
    resumed run, in the same fit or a new job, reads none of the rows it has trained on."""

    plan: pa.Table
    global_batch: int
    run: Any  # the Location where Ray Train keeps this run (its storage path / run name)

    def __call__(self) -> Any:
        start = checkpointed_step(self.run)
        return plan_dataset(self.plan.filter(pc.field("step") >= start), self.global_batch)


def checkpointed_step(run: Any) -> int:
    """The optimizer steps done at the latest checkpoint of the Ray Train run kept at `run` (a
    Location), from Ray's own record of it; 0 for a run that has none yet."""
    import ray.train

    filesystem = None if run.is_local else run.arrow_fs
    try:
        result = ray.train.Result.from_path(run.path, storage_filesystem=filesystem)
    except RuntimeError:  # no run folder, or no checkpoint recorded in it yet
        return 0
    return int((result.metrics or {}).get("step", 0)) if result.checkpoint else 0


@dataclass
class StepRows:
    """One optimizer step's rows for this worker: its micro-batches (rows of a micro-batch may be
    fewer than micro_batch_size where rows were set aside), what was set aside, bytes read, and
    the seconds the worker waited for them."""

    step: int
    micro_batches: list[pa.Table]
    set_aside: list[dict[str, Any]]
    stored_bytes: int
    wait_seconds: float


def planned_steps(
    shard: Any, micro_batch_size: int, share: int, rank: int, start_step: int = 0
) -> Iterator[StepRows]:
    """This worker's steps from its shard, from `start_step` on. The shard starts there already
    (ResumablePlan); steps before it, should Ray's record lag the checkpoint, are skipped."""
    pending: list[pa.Table] = []
    waited = 0.0
    batches = iter(shard.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2))
    while True:
        started = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - started
        steps = [] if batch is None else pc.unique(batch.column("step")).to_pylist()
        for step in steps:
            part = batch.filter(pc.equal(batch.column("step"), step))
            if pending and pending[0]["step"][0].as_py() != step:
                rows = pa.concat_tables(pending)
                if rows["step"][0].as_py() >= start_step:
                    yield _step_rows(rows, micro_batch_size, share, rank, waited)
                pending, waited = [], 0.0
            pending.append(part)
        if batch is None:
            break
    if pending and pending[0]["step"][0].as_py() >= start_step:
        yield _step_rows(pa.concat_tables(pending), micro_batch_size, share, rank, waited)


def _step_rows(
    rows: pa.Table, micro_batch_size: int, share: int, rank: int, waited: float
) -> StepRows:
    from amp_ray.storage.quarantine import ROW_JSON

    good_mask = pc.is_null(rows.column(QUARANTINE_REASON))
    bad = rows.filter(pc.invert(good_mask)).select(["item_id", QUARANTINE_REASON, ROW_JSON])
    good = rows.filter(good_mask)
    index = pc.divide(pc.subtract(good.column("slot"), rank * share), micro_batch_size)
    micro = [good.filter(pc.equal(index, m)) for m in range(share // micro_batch_size)]
    read = int(pc.sum(rows.column("stored_bytes")).as_py() or 0)
    return StepRows(rows["step"][0].as_py(), micro, bad.to_pylist(), read, waited)


@dataclass(frozen=True)
class PlannedInputs:
    """A training run's inputs: the plan of global batches, and the DataConfig that gives each
    worker its share (launch.fit passes both to the TorchTrainer)."""

    table: pa.Table  # the plan (PLAN rows)
    config: RankShards
    num_items: int  # usable items the plan draws from

    def dataset_for(self, run: Any) -> ResumablePlan:
        """The "train" dataset of the Ray Train run kept at `run` (a Location)."""
        return ResumablePlan(self.table, self.config.global_batch, run)

    @classmethod
    def plan(
        cls,
        encoded: Any,
        layout: BatchLayout,
        processor: ActorModel,
        seed: int,
        steps: int,
        keep: Any = None,
    ) -> PlannedInputs:
        """Plan `steps` global batches over the encoded dataset (a storage Dataset); the
        workers' pipelines make pixel inputs with the processor of model `processor`."""
        rows = encoded_index(encoded, keep)
        table = make_plan(rows, seed, layout.global_batch, steps, layout.mode)
        files = [encoded.location.join(entry.path).uri for entry in encoded.manifest.files]
        source = InputSource(
            files,
            processor.uri,
            processor.storage,
            layout.input_cpus,
            processor.load.trust_remote_code,
        )
        return cls(table, RankShards(layout.global_batch, source), len(rows))


@dataclass(frozen=True)
class BatchLayout:
    """How a run's steps are cut: items per micro-batch, micro-batches a step on each worker,
    workers; how items are grouped into global batches (make_plan's modes); and the CPUs of each
    worker's pixel tasks. `of` reads it from an `sft` or `training` block."""

    micro_batch_size: int
    accumulation: int
    num_workers: int
    mode: str = "shuffle"
    input_cpus: float = 0.25

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.accumulation * self.num_workers

    @classmethod
    def of(cls, block: Any) -> BatchLayout:
        return cls(
            block.micro_batch_size,
            block.gradient_accumulation_steps,
            block.scaling.num_workers,
            block.batching,
            block.input_cpus,
        )


def check_step(rows: StepRows, step: int) -> None:
    """The shard's next step must be the one the worker trains: a plan that does not start where
    the checkpoint left off would train on the wrong items without a sign."""
    if rows.step != step:
        raise RuntimeError(f"the input plan gave step {rows.step + 1} where step {step + 1} is due")


def micro_batches_of(
    rows: StepRows, decode: Callable[[pa.Table], list[T]]
) -> Iterator[tuple[list[T], float]]:
    """A step's micro-batches, decoded, each with its weight: 1, or 0 for a micro-batch whose
    every row was set aside, which is replaced by another of the step's micro-batches so that
    the worker still takes part in every collective (its gradients then add nothing)."""
    decoded = [decode(micro) if micro.num_rows else [] for micro in rows.micro_batches]
    stand_in = next((items for items in decoded if items), None)
    if stand_in is None:
        raise DataError(f"every row of step {rows.step + 1} on this worker was set aside")
    for items in decoded:
        yield (items, 1.0) if items else (stand_in, 0.0)


class SetAside:
    """What a worker set aside at training time (by item id), and what it read; kept in its
    checkpoint files so that a resumed worker goes on counting."""

    def __init__(self, rows: dict[str, dict[str, Any]] | None = None, read: int = 0) -> None:
        self.rows = rows or {}
        self.read_bytes = read

    @staticmethod
    def file_name(rank: int) -> str:
        return f"set_aside-rank{rank}.json"

    @classmethod
    def restore(cls, checkpoint: Any, rank: int) -> SetAside:
        from amp_ray.training.worker import checkpoint_file

        saved = checkpoint_file(checkpoint, cls.file_name(rank))
        if not saved:
            return cls()
        raw = json.loads(saved)
        return cls(raw["rows"], raw["read_bytes"])

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.rows.setdefault(row["item_id"], row)

    def count_read(self, stored_bytes: int) -> None:
        self.read_bytes += stored_bytes

    def files(self, rank: int) -> dict[str, str]:
        return {
            self.file_name(rank): json.dumps({"rows": self.rows, "read_bytes": self.read_bytes})
        }

    def metrics(self, world: int, rank: int) -> dict[str, float]:
        """Per worker: items set aside so far, MB read from storage, peak RSS (MB)."""
        import resource

        import torch
        import torch.distributed as dist

        mine = [
            len(self.rows),
            self.read_bytes / 1e6,
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
        ]
        values = torch.zeros((world, len(mine)), dtype=torch.float64)
        values[rank] = torch.tensor(mine, dtype=torch.float64)
        if world > 1 and dist.is_initialized():
            dist.all_reduce(values)
        metrics = {"set_aside": float(values[:, 0].sum())}
        for r in range(world):
            metrics[f"worker{r}/read_mb"] = float(values[r, 1])
            metrics[f"worker{r}/peak_rss_mb"] = float(values[r, 2])
        return metrics


def set_aside_rows(checkpoint: Any) -> list[dict[str, Any]]:
    """Every worker's set-aside rows in a run's final checkpoint (item_id, reason, row JSON)."""
    from pathlib import Path

    if checkpoint is None:
        return []
    rows: dict[str, dict[str, Any]] = {}
    with checkpoint.as_directory() as directory:
        for path in sorted(Path(directory).glob("set_aside-rank*.json")):
            for item_id, row in json.loads(path.read_text())["rows"].items():
                rows.setdefault(item_id, row)
    return [rows[key] for key in sorted(rows)]
