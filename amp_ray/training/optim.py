"""Optimizer, learning-rate schedule and DeepSpeed configuration from the spec."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from amp_ray.errors import AmpRayError
from amp_ray.spec.blocks import OptimizerSpec, ScheduleSpec


@dataclass(frozen=True)
class EngineConfig:
    """The optimisation settings every training loop shares; the sft and training blocks of the
    spec name them alike (`from_block`)."""

    steps: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    optimizer: dict[str, Any]  # OptimizerSpec fields
    schedule: dict[str, Any]  # ScheduleSpec fields
    max_grad_norm: float
    zero_stage: int
    precision: str
    checkpoint_every: int
    log_every: int
    seed: int
    threads: int  # torch threads: the CPUs the worker owns
    offload_optimizer: bool = False  # DeepSpeedSpec's
    offload_params: bool = False

    @classmethod
    def from_block(cls, block: Any, steps: int, seed: int) -> EngineConfig:
        """From a spec block with the shared names (SftSpec, TrainingSpec)."""
        from amp_ray.runtime import torch_threads_for

        return cls(
            steps=steps,
            micro_batch_size=block.micro_batch_size,
            gradient_accumulation_steps=block.gradient_accumulation_steps,
            optimizer=block.optimizer.model_dump(),
            schedule=block.schedule.model_dump(),
            max_grad_norm=block.max_grad_norm,
            zero_stage=block.deepspeed.zero_stage,
            precision=block.precision,
            checkpoint_every=block.checkpoint_every,
            log_every=block.log_every,
            seed=seed,
            threads=torch_threads_for(block.scaling.cpus_per_worker),
            offload_optimizer=block.deepspeed.offload_optimizer,
            offload_params=block.deepspeed.offload_params,
        )


# bitsandbytes' AdamW variants by the spec's optimizer name
BNB_OPTIMIZERS = {
    "adamw_8bit": "AdamW8bit",
    "paged_adamw": "PagedAdamW",
    "paged_adamw_8bit": "PagedAdamW8bit",
}


def make_optimizer(
    params: Iterable[torch.nn.Parameter], spec: OptimizerSpec
) -> torch.optim.Optimizer:
    """The spec's AdamW over the trainable parameters: torch's, or a bitsandbytes variant
    (8-bit states, and/or states in paged memory that spills to the CPU under pressure)."""
    trainable = [p for p in params if p.requires_grad]
    settings = {"lr": spec.lr, "weight_decay": spec.weight_decay, "betas": spec.betas}
    if spec.name == "adamw":
        return torch.optim.AdamW(trainable, eps=spec.eps, **settings)
    try:
        import bitsandbytes
    except ImportError:
        raise AmpRayError(
            f"optimizer {spec.name} needs bitsandbytes, which is not installed",
            hint="pip install 'amp-ray[qlora]' on the training nodes' image, or set "
            "optimizer.name: adamw",
        ) from None
    return getattr(bitsandbytes.optim, BNB_OPTIMIZERS[spec.name])(
        trainable, eps=spec.eps, **settings
    )


def lr_factor(schedule: ScheduleSpec, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step `step`: linear warm-up, then the schedule."""

    def factor(step: int) -> float:
        if step < schedule.warmup_steps:
            return (step + 1) / schedule.warmup_steps
        if schedule.name == "constant":
            return 1.0
        progress = (step - schedule.warmup_steps) / max(1, total_steps - schedule.warmup_steps)
        progress = min(1.0, progress)
        if schedule.name == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def deepspeed_config(cfg: EngineConfig) -> dict[str, Any]:
    """The DeepSpeed config; the optimizer and scheduler are passed as torch objects. With
    offload the spec's optimizer steps on the CPU copies (`zero_force_ds_cpu_optimizer` off:
    DeepSpeed's own CPU Adam is a C++ op compiled at run time, torch's AdamW needs none)."""
    zero: dict[str, Any] = {
        "stage": cfg.zero_stage,
        "stage3_gather_16bit_weights_on_model_save": cfg.zero_stage == 3,
    }
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if cfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16"},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
