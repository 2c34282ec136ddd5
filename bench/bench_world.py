"""World generation throughput: one process against the data stage's Ray Data actor pool.

    .venv/bin/python bench/bench_world.py [--images 6000]

Prints images per second for (a) a plain loop in this process, (b) the data stage's Ray Data
pipeline (render, encode, write Parquet) with 1 and 2 actors, and the ratios, all in one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from amp_ray.pipeline import run_job
from amp_ray.runtime import RaySession
from amp_ray.spec import validate_spec
from amp_ray.spec.blocks import ResourcesSpec, WorldSpec
from amp_ray.world import World


def splits(images: int) -> dict[str, int]:
    return {"sft": images, "preference": 0, "eval_iid": 0, "eval_bias_probe": 0, "eval_control": 0}


def loop_rate(images: int) -> float:
    world = World(WorldSpec(splits=splits(images)))
    started = time.perf_counter()
    for index in range(world.num_images):
        world.items(index)
    return images / (time.perf_counter() - started)


def stage_rate(images: int, actors: int, run_dir: str) -> float:
    spec = validate_spec(
        {
            "name": "bench",
            "stages": ["data"],
            "storage": {"run_dir": run_dir},
            "data": {
                "world": {"splits": splits(images)},
                "actors": {"num_actors": actors, "num_cpus": 0.5, "batch_size": 256},
            },
        }
    )
    (report,) = run_job(spec, echo=lambda _: None)
    return images / report.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000)
    args = parser.parse_args()
    loop = loop_rate(args.images)
    print(f"plain loop, 1 process   {loop:8.0f} images/s")
    with RaySession(ResourcesSpec()) as session, tempfile.TemporaryDirectory() as tmp:
        session.ensure()
        stage_rate(200, 1, f"{tmp}/warmup")  # first use imports in the workers
        for actors in (1, 2):
            rate = stage_rate(args.images, actors, f"{tmp}/a{actors}")
            ratio = rate / loop
            print(f"data stage, {actors} actor(s)  {rate:8.0f} images/s  ({ratio:.2f}x the loop)")


if __name__ == "__main__":
    main()
