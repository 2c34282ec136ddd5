"""Launching a Ray Train run of a per-worker loop, with checkpoints under the run directory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from amp_ray.spec.blocks import ScalingSpec
from amp_ray.storage.location import Location
from amp_ray.training.inputs import PlannedInputs


def fit(
    loop: Callable[[dict[str, Any]], Any],
    config: Any,
    scaling: ScalingSpec,
    name: str,
    storage: Location,
    inputs: PlannedInputs,
    max_failures: int = 2,
    tracker: Any = None,
) -> Any:
    """Run `loop` on `scaling.num_workers` Ray Train workers; returns the ray.train Result.

    `config` is the run's settings as one typed object built once on the driver (SftLoopConfig,
    PreferenceLoopConfig): the loop reads it whole as `config["loop"]`, never rebuilt from a dict.

    Each worker streams its own share of `inputs` (training/inputs.py) as its "train" dataset
    shard. Checkpoints go to `storage/name`. Re-running with the same name and storage resumes
    from the latest checkpoint there (Train V2 has no resume_from_checkpoint argument); a worker
    that dies is restarted from it up to `max_failures` times. `tracker` (a Ray Train callback,
    training/tracking.py) shows and records every logged window.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from amp_ray import runtime
    from amp_ray.cluster.placement import ENV_LOG

    resources = {k: v for k, v in scaling.bundle.items() if not k.startswith("accelerator_type:")}
    use_gpu = scaling.gpus_per_worker > 0
    trainer = TorchTrainer(
        loop,
        train_loop_config={"loop": config},
        # NCCL where the workers' GPUs are CUDA devices; gloo where they are logical only
        torch_config=TorchConfig(backend="nccl" if use_gpu and cuda_on(scaling) else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            accelerator_type=scaling.accelerator_type,
        ),
        datasets={"train": inputs.dataset_for(storage.join(name))},
        dataset_config=inputs.config,
        run_config=RunConfig(
            name=name,
            storage_path=storage.path,
            storage_filesystem=None if storage.is_local else storage.arrow_fs,
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=[tracker] if tracker is not None else None,
            # the workers report where they run to the stage's placement log
            worker_runtime_env={"env_vars": {ENV_LOG: runtime.placement_log or ""}},
        ),
    )
    return trainer.fit()


def cuda_on(scaling: ScalingSpec) -> bool:
    """Whether a worker placed as `scaling` asks sees a CUDA device: a one-off task with the
    worker's resources, on the node type the workers will get (a simulated cluster's GPUs are
    logical: Ray hands them out, torch finds no CUDA)."""
    import ray

    options: dict[str, Any] = {"num_cpus": 0, "num_gpus": scaling.gpus_per_worker}
    if scaling.accelerator_type:
        options["accelerator_type"] = scaling.accelerator_type
    if scaling.resources:
        options["resources"] = dict(scaling.resources)

    def probe() -> bool:
        import torch

        return torch.cuda.is_available()

    return bool(ray.get(ray.remote(**options)(probe).remote()))
