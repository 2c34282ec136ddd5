"""Launching a Ray Train run of a per-worker loop, with checkpoints under the run directory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from amp_ray.spec.blocks import ScalingSpec
from amp_ray.storage.location import Location


def fit(
    loop: Callable[[dict[str, Any]], None],
    config: dict[str, Any],
    datasets: dict[str, Any],
    scaling: ScalingSpec,
    name: str,
    storage: Location,
    max_failures: int = 2,
    unsplit: bool = False,
) -> Any:
    """Run `loop` on `scaling.num_workers` Ray Train workers; returns the ray.train Result.

    Checkpoints go to `storage/name`. Re-running with the same name and storage resumes from the
    latest checkpoint there (Train V2 has no resume_from_checkpoint argument); a worker that dies
    is restarted from it up to `max_failures` times. `unsplit`: every worker reads each dataset
    whole, in its stored order (training/batches.py derives one global order from it).
    """
    from ray.data import ExecutionOptions
    from ray.train import DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    dataset_config = None
    if unsplit:
        dataset_config = DataConfig(
            datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True)
        )
    resources: dict[str, float] = {"CPU": scaling.cpus_per_worker}
    if scaling.gpus_per_worker:
        resources["GPU"] = scaling.gpus_per_worker
    trainer = TorchTrainer(
        loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.gpus_per_worker > 0,
            resources_per_worker=resources,
        ),
        datasets=datasets,
        dataset_config=dataset_config,
        run_config=RunConfig(
            name=name,
            storage_path=storage.path,
            storage_filesystem=None if storage.is_local else storage.arrow_fs,
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    return trainer.fit()
