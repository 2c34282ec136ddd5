"""The data stage: the run's items, made by the synthetic world or imported.

Output: data/items (ITEMS schema) and data/quarantine (rows that could not be used, with reasons).
A preference source (amp_json, trl_dpo, pairs: docs/formats.md) also commits data/preferences
(PREFERENCES schema), the ranked levels that stand in for the generate and rank stages; those
files are small JSON or Parquet, so they are converted in the driver (amp_ray/data/formats.py).
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from amp_ray.cluster.requests import SPARE_CPUS_FOR_TASKS, pool_request
from amp_ray.data import formats
from amp_ray.data.items import ItemChecker, image_root_for
from amp_ray.errors import DataError, StorageError
from amp_ray.runtime import LIGHT_TASK_CPUS, map_with_actor_pool
from amp_ray.spec.blocks import PREFERENCE_SOURCES, WorldSpec
from amp_ray.stages.base import Stage, StageCounts
from amp_ray.storage.location import Location, guard, open_location
from amp_ray.storage.quarantine import route_quarantine
from amp_ray.storage.schemas import ITEMS, ROUND
from amp_ray.world import World
from amp_ray.world.stats import world_table


class WorldItemMaker:
    """Ray Data callable: image indices in, the items of those images out."""

    def __init__(self, spec: WorldSpec) -> None:
        self.world = World(spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = [item for index in batch["id"] for item in self.world.items(int(index))]
        return pa.Table.from_pylist(rows, schema=ITEMS)


class DataStage(Stage):
    name = "data"

    @property  # type: ignore[override]
    def outputs(self) -> tuple[str, ...]:
        """Preference sources also commit data/preferences."""
        if self.spec.data.source in PREFERENCE_SOURCES:
            return ("items", "preferences", "quarantine")
        return ("items", "quarantine")

    def config(self) -> dict[str, Any]:
        data = self.spec.data.model_dump(mode="json", exclude={"actors"})
        if self.spec.data.source != "world":
            data.pop("world")
        return data

    def preflight(self) -> None:
        data = self.spec.data
        if data.source == "parquet":
            self._import_files()
        elif data.source in PREFERENCE_SOURCES:
            _, files = formats.source_files(str(data.path), self.spec.storage, "data.path ")
            for file in files:  # small files: read now, so a wrong format stops the run here
                formats.read_records(data.source, file)
            if data.image_root and not open_location(data.image_root, self.spec.storage).exists():
                raise StorageError(
                    f"data.image_root {data.image_root} does not exist",
                    hint="fix data.image_root, or leave it out to read images beside data.path",
                )

    def run(self) -> StageCounts:
        if self.spec.data.source in PREFERENCE_SOURCES:
            return self._import_preferences()
        import ray.data

        from amp_ray.storage.raysink import write_ray

        pool = self.spec.data.actors
        self.ensure_resources(
            [pool_request("data.actors", pool, "the item pool")], spare_cpus=SPARE_CPUS_FOR_TASKS
        )
        if self.spec.data.source == "world":
            world = World(self.spec.data.world)
            blocks = max(4 * pool.max_actors, world.num_images // 2_000)
            source = ray.data.range(world.num_images, override_num_blocks=blocks)
            rows_in = world.num_images
            rows = map_with_actor_pool(
                source, WorldItemMaker, pool, {"spec": self.spec.data.world}, "numpy"
            )
        else:
            location, files = self._import_files()
            source = ray.data.read_parquet(
                files, filesystem=location.arrow_fs, ray_remote_args={"num_cpus": LIGHT_TASK_CPUS}
            )
            rows_in = sum(pq.read_metadata(f, filesystem=location.fs).num_rows for f in files)
            rows = map_with_actor_pool(
                source, ItemChecker, pool, {"image_root": image_root_for(location)}
            )
        items = self.run_dir.writer(self.name, "items", "items")
        quarantine = self.run_dir.writer(self.name, "quarantine", "quarantine")
        route = functools.partial(route_quarantine, stage=self.name, good="items", bad="quarantine")
        write_ray(rows, {"items": items, "quarantine": quarantine}, route)
        quarantined = quarantine.commit().num_rows
        committed = items.commit({"source": self.spec.data.source})
        return StageCounts(rows_in, committed.num_rows, quarantined)

    def summary(self) -> list[str]:
        if self.spec.data.source in PREFERENCE_SOURCES:
            levels = self.run_dir.dataset(self.name, "preferences").read_table(["levels"])
            counts = Counter(len(row) for row in levels.column("levels").to_pylist())
            shown = ", ".join(f"{counts[k]} with K={k}" for k in sorted(counts))
            return [f"{self.spec.data.source}: {levels.num_rows} preference items ({shown or '-'})"]
        if self.spec.data.source != "world":
            return []
        table = self.run_dir.dataset(self.name, "items").read_table(
            ["item_id", "split", "annotations"]
        )
        return world_table(table)

    def _import_preferences(self) -> StageCounts:
        """Convert a preference file (or folder) in the driver; bad records go to quarantine."""
        data = self.spec.data
        result = formats.import_preferences(
            data.source, str(data.path), data.image_root, self.spec.storage
        )
        metadata = {"source": data.source}
        for name, table in (
            ("quarantine", result.quarantine),
            ("preferences", result.preferences),
            ("items", result.items),
        ):
            writer = self.run_dir.writer(self.name, name, name)
            if table.num_rows:
                writer.write_table(table)
            writer.commit(metadata)
        return StageCounts(result.rows_in, result.items.num_rows, result.quarantine.num_rows)

    def _import_files(self) -> tuple[Location, list[str]]:
        """The Parquet files under data.path, after checking they exist and hold items."""
        uri = str(self.spec.data.path)
        location = open_location(uri, self.spec.storage)
        if not location.exists():
            raise StorageError(f"data.path {uri} does not exist", hint="fix data.path in the spec")
        if guard(location, "read", location.fs.isdir, location.path):
            files = [f for f in location.list_files() if f.endswith(".parquet")]
        else:
            files = [location.path]
        if not files:
            raise DataError(f"data.path {uri} holds no .parquet files")
        for path in files:
            try:
                schema = pq.read_schema(path, filesystem=location.fs)
            except Exception as exc:
                raise DataError(
                    f"data.path {uri}: {path} is not readable Parquet ({exc})"
                ) from None
            check_import_schema(schema, path)
        return location, files


def check_import_schema(schema: pa.Schema, path: str) -> None:
    """Columns an import must have: item_id, rounds (question/answer structs), an image column."""
    missing = [name for name in ("item_id", "rounds") if name not in schema.names]
    if "image" not in schema.names and "image_uri" not in schema.names:
        missing.append("image or image_uri")
    if missing:
        raise DataError(
            f"{path} lacks the column(s) {missing}",
            hint="imports use the items schema: `amp-ray schemas` prints it",
        )
    rounds = schema.field("rounds").type
    is_list = pa.types.is_list(rounds) or pa.types.is_large_list(rounds)
    if not (
        is_list
        and pa.types.is_struct(rounds.value_type)
        and all(rounds.value_type.get_field_index(name) >= 0 for name in ROUND.names)
    ):
        raise DataError(
            f"{path}: column rounds must be a list of {{question, answer}}, got {rounds}"
        )
