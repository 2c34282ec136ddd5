"""Memory and reads as the preference data grows: encode, then train a fixed number of steps.

    .venv/bin/python bench/bench_scale.py [--sizes 1000 4000 16000] [--steps 48] [--data-store-gb G]

Synthetic LLaVA-1.5-shaped preference items (336 px images, a tiny LLaVA with 14 px patches, so
576 image tokens and a ~600-token prefix; K = 4 levels with reference log-probs) are made in Ray
tasks, encoded on a Ray Data actor pool into a stored dataset (training/inputs.py's form: token ids
beside the image bytes), then trained for `--steps` MDPO steps on 2 Ray Train workers that stream
their own shares. Per N it prints, side by side: peak RSS of the driver (sampled) and of each
worker, peak object-store bytes (sampled) while encoding and while training, MB each worker read
from storage against the whole dataset's size, and items/s of encoding and of training (the
median of the logged windows of LOG_EVERY steps after the first); then the ratios of the largest
N to the smallest. --data-store-gb sets runtime.data_object_store_gb.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa

from amp_ray.data.encode import EncodeSettings
from amp_ray.data.level_encoding import LevelEncoder
from amp_ray.models.registry import ActorModel
from amp_ray.models.tiny import create_tiny_model
from amp_ray.runtime import map_with_actor_pool
from amp_ray.spec.blocks import ActorPoolSpec, ScalingSpec, TinyLlavaSpec, WorldSpec
from amp_ray.storage import open_location
from amp_ray.storage.dataset import Dataset, DatasetWriter
from amp_ray.storage.quarantine import route_quarantine
from amp_ray.storage.raysink import write_ray
from amp_ray.storage.schemas import ENCODED_LEVELS, QUARANTINE
from amp_ray.training.inputs import BatchLayout, PlannedInputs
from amp_ray.training.launch import fit
from amp_ray.training.objective import Objective
from amp_ray.training.optim import EngineConfig
from amp_ray.training.preference import PreferenceLoopConfig, preference_loop
from amp_ray.world import World

IMAGE_SIZE, PATCH = 336, 14
TINY = TinyLlavaSpec(
    image_size=IMAGE_SIZE, patch_size=PATCH, vision_hidden=32, vision_layers=1,
    text_hidden=64, text_layers=1, heads=2, mlp=128,
)  # fmt: skip
MICRO, WORKERS, LEVELS = 2, 2, 4
LOG_EVERY = 4  # steps per logged window: train items/s is the median window after the first


class Peaks:
    """Peak driver RSS and object-store bytes, sampled every `every` seconds in a thread."""

    def __init__(self, every: float = 0.5) -> None:
        self.every, self.rss, self.store = every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        from ray._private.internal_api import memory_summary

        me = psutil.Process()
        while not self._stop.is_set():
            self.rss = max(self.rss, me.memory_info().rss)
            found = re.search(r"Plasma memory usage (\d+) MiB", memory_summary(stats_only=True))
            if found:
                self.store = max(self.store, int(found.group(1)) << 20)
            self._stop.wait(self.every)


def world_pool(count: int) -> list[dict[str, Any]]:
    """`count` world caption items at 336 px: the images and questions the rows cycle through."""
    splits = {"sft": count, "preference": 0, "eval_iid": 0, "eval_bias_probe": 0}
    world = World(WorldSpec(image_size=IMAGE_SIZE, splits={**splits, "eval_control": 0}))
    items = [item for index in range(world.num_images) for item in world.items(index)]
    return [item for item in items if item["task"] == "caption"][:count]


def synthetic_rows(batch: dict[str, Any], pool: list[dict[str, Any]]) -> pa.Table:
    """Preference rows for the ids in `batch`, made in a Ray task (the driver holds none)."""
    rows = []
    for n in batch["id"].tolist():
        item = pool[n % len(pool)]
        answer = item["rounds"][0]["answer"].split()
        rng = random.Random(n)
        levels = [
            {"answers": [" ".join(w if rng.random() > 0.2 * k else "square" for w in answer)]}
            for k in range(LEVELS)
        ]
        rows.append(
            {
                "item_id": f"item-{n:06d}",
                "image": item["image"],
                "image_uri": None,
                "rounds": item["rounds"],
                "levels": levels,
                "ref_logps": [[-10.0 - 2 * k] for k in range(LEVELS)],
            }
        )
    return pa.Table.from_pylist(rows)


def encode(size: int, pool: list[dict[str, Any]], model_dir: str, root: Path) -> Dataset:
    import ray.data

    rows = ray.data.range(size, override_num_blocks=max(4, size // 250)).map_batches(
        synthetic_rows, fn_kwargs={"pool": pool}, batch_size=250, num_cpus=0.25
    )
    encoder = ActorPoolSpec(num_actors=2, num_cpus=0.5, batch_size=64)
    kwargs = {
        "settings": EncodeSettings(processor_path=model_dir, max_length=4096),
        "num_levels": LEVELS,
        "levels": list(range(LEVELS)),
        "need_reference": True,
    }
    location = open_location(str(root / f"encoded-{size}"))
    writer = DatasetWriter(location, ENCODED_LEVELS, "encoded_levels")
    quarantine = DatasetWriter(open_location(str(root / f"q-{size}")), QUARANTINE, "quarantine")
    write_ray(
        map_with_actor_pool(rows, LevelEncoder, encoder, kwargs),
        {"encoded": writer, "quarantine": quarantine},
        lambda batch: route_quarantine(batch, "bench", "encoded", "quarantine"),
    )
    writer.commit()
    return Dataset(location)


def train(encoded: Dataset, model_dir: str, steps: int, root: Path, size: int) -> list[dict]:
    engine = EngineConfig(
        steps=steps, micro_batch_size=MICRO, gradient_accumulation_steps=1,
        optimizer={"lr": 1e-4, "weight_decay": 0.0, "betas": (0.9, 0.999)},
        schedule={"name": "constant", "warmup_steps": 0}, max_grad_norm=1.0, zero_stage=2,
        precision="fp32", checkpoint_every=steps, log_every=LOG_EVERY, seed=0, threads=1,
    )  # fmt: skip
    config = PreferenceLoopConfig(
        init_path=model_dir, reference_path=None, output_uri=str(root / f"model-{size}"),
        attempt="bench", storage=None,
        objective=Objective(loss="mdpo", beta=0.1, penalty_weight=0.1, length_normalise=True,
                            spread_over_pairs=False, gamma=0.5),
        engine=engine, lora=None, freeze_vision=True, gradient_checkpointing=False,
        forward="shared_prefix", level_index=list(range(LEVELS)),
    )  # fmt: skip
    layout = BatchLayout(micro_batch_size=MICRO, accumulation=1, num_workers=WORKERS)
    inputs = PlannedInputs.plan(encoded, layout, ActorModel("bench", model_dir), 0, steps)
    scaling = ScalingSpec(num_workers=WORKERS, cpus_per_worker=0.5)
    result = fit(
        preference_loop, config, scaling, f"bench-{size}",
        open_location(str(root / "ray")), inputs,
    )  # fmt: skip
    return result.return_value["history"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument(
        "--data-store-gb", type=float, default=None,
        help="runtime.data_object_store_gb: the object store one Ray Data pipeline may fill; "
        "default: Ray Data's own budget",
    )  # fmt: skip
    args = parser.parse_args()
    import ray

    from amp_ray.runtime import configure_ray_data

    ray.init(num_cpus=4, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
    configure_ray_data(verbose=False, object_store_gb=args.data_store_gb)
    pool = world_pool(64)
    results = []
    with tempfile.TemporaryDirectory() as directory:
        root, model_dir = Path(directory), str(Path(directory) / "tiny")
        texts = [t[k] for item in pool for t in item["rounds"] for k in ("question", "answer")]
        create_tiny_model(model_dir, TINY, texts, IMAGE_SIZE, seed=0)
        for size in args.sizes:
            with Peaks() as encoding:
                started = time.perf_counter()
                encoded = encode(size, pool, model_dir, root)
                encode_seconds = time.perf_counter() - started
            with Peaks() as training:
                history = train(encoded, model_dir, args.steps, root, size)
            last = history[-1]
            stored = sum(entry.size_bytes for entry in encoded.manifest.files)
            results.append(
                {
                    "N": size,
                    "driver_rss_mb": max(encoding.rss, training.rss) / 1e6,
                    "encode_store_mb": encoding.store / 1e6,
                    "store_mb": training.store / 1e6,
                    "worker_rss_mb": [last[f"worker{r}/peak_rss_mb"] for r in range(WORKERS)],
                    "worker_read_mb": [last[f"worker{r}/read_mb"] for r in range(WORKERS)],
                    "dataset_mb": stored / 1e6,
                    "encode_items_s": size / encode_seconds,
                    # the median window: robust to a step that waits for a new Ray worker
                    "train_items_s": statistics.median(w["items_per_s"] for w in history[1:]),
                }
            )
    print(f"{args.steps} steps of {MICRO * WORKERS} items on {WORKERS} workers per N")
    print(
        "N driver_RSS_MB store_MB(encode) store_MB(train) worker_RSS_MB worker_read_MB "
        "dataset_MB enc_items/s train_items/s"
    )
    for r in results:
        print(
            f"{r['N']} {r['driver_rss_mb']:.0f} {r['encode_store_mb']:.0f} {r['store_mb']:.0f} "
            f"{'/'.join(f'{v:.0f}' for v in r['worker_rss_mb'])} "
            f"{'/'.join(f'{v:.2f}' for v in r['worker_read_mb'])} {r['dataset_mb']:.0f} "
            f"{r['encode_items_s']:.1f} {r['train_items_s']:.2f}"
        )
    first, last = results[0], results[-1]
    growth = last["N"] / first["N"]
    print(f"N x{growth:g}: driver RSS x{last['driver_rss_mb'] / first['driver_rss_mb']:.2f}, "
          f"worker RSS x{max(last['worker_rss_mb']) / max(first['worker_rss_mb']):.2f}, "
          f"object store in training x{last['store_mb'] / max(first['store_mb'], 1):.2f}, "
          f"in encoding x{last['encode_store_mb'] / max(first['encode_store_mb'], 1):.2f}, "
          f"train items/s x{last['train_items_s'] / first['train_items_s']:.2f}")  # fmt: skip
    for r in results:
        total = sum(r["worker_read_mb"])
        shares = ", ".join(f"{v / total:.2f}" for v in r["worker_read_mb"])
        print(f"N={r['N']}: the workers read {total:.2f} MB of {r['dataset_mb']:.0f} MB stored; "
              f"shares {shares}")  # fmt: skip


if __name__ == "__main__":
    main()
