"""What every training loop does on its Ray Train worker: build the DeepSpeed engine, batch the
shard, checkpoint and restore through Ray Train, export the final model in HF format.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amp_ray.models.conversation import Encoded
from amp_ray.models.loading import merged_lora, save_model
from amp_ray.models.registry import LoadOptions
from amp_ray.models.store import upload_model_dir
from amp_ray.spec.blocks import OptimizerSpec, ScheduleSpec
from amp_ray.storage.location import open_location
from amp_ray.training.optim import EngineConfig, deepspeed_config, lr_factor, make_optimizer

CHECKPOINT_TAG = "checkpoint"


def build_engine(model: torch.nn.Module, cfg: EngineConfig) -> Any:
    """A DeepSpeed engine over `model` with the spec's AdamW and a warm-up schedule.

    On CPU DeepSpeed uses its cpu accelerator and the gloo group Ray Train set up; on GPUs NCCL.
    """
    import deepspeed

    torch_optimizer = make_optimizer(model.parameters(), OptimizerSpec(**cfg.optimizer))
    schedule = lr_factor(ScheduleSpec(**cfg.schedule), cfg.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch_optimizer, schedule)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch_optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg)
    )
    # from_pretrained leaves a model in eval mode, where HF skips gradient checkpointing and
    # dropout (LoRA's included) is off; DeepSpeed does not change the mode
    engine.train()
    return engine


def make_batches(
    rows: list[Encoded], size: int, rng: random.Random, mode: str, long_share: float = 0.15
) -> list[list[Encoded]]:
    """Full micro-batches of `rows`, in shuffled order. `mode`: "random" (any rows together),
    "buckets" (the longest `long_share` batched apart, each bucket shuffled) or "sorted" (rows
    of similar length together). bench/bench_batching.py compares them."""
    rows = sorted(rows, key=len) if mode != "random" else rng.sample(rows, len(rows))
    if mode == "buckets":
        cut = len(rows) - int(len(rows) * long_share)
        buckets = [rows[:cut], rows[cut:]]
        for bucket in buckets:
            rng.shuffle(bucket)
    else:
        buckets = [rows]
    batches = [b[i : i + size] for b in buckets for i in range(0, len(b) - size + 1, size)]
    rng.shuffle(batches)
    return batches


def save_checkpoint(
    engine: Any,
    step: int,
    metrics: dict[str, Any],
    files: dict[str, str] | None = None,
    rank_files: dict[str, str] | None = None,
) -> None:
    """Every rank saves its DeepSpeed shard; Ray Train merges them into one checkpoint.
    Rank 0 adds `files` (name -> text), such as the metrics history, for the driver to read;
    every rank adds its own `rank_files` (names that differ by rank)."""
    import ray.train

    with tempfile.TemporaryDirectory() as directory:
        engine.save_checkpoint(directory, tag=CHECKPOINT_TAG, client_state={"step": step})
        mine = dict(rank_files or {})
        if ray.train.get_context().get_world_rank() == 0:
            mine.update(files or {})
        for name, text in mine.items():
            Path(directory, name).write_text(text)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def checkpoint_file(checkpoint: Any, name: str) -> str | None:
    """The text of file `name` in a Ray Train checkpoint (None if there is none, or no file)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        path = Path(directory, name)
        return path.read_text() if path.exists() else None


def restore_checkpoint(engine: Any) -> int:
    """Load the latest Ray Train checkpoint into `engine`; the step to continue from (0 if none)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        _, client_state = engine.load_checkpoint(directory, tag=CHECKPOINT_TAG)
    return int(client_state["step"])


def export_model(
    engine: Any,
    processor: Any,
    zero_stage: int,
    output_uri: str,
    attempt: str,
    storage: Any,
    model: Any = None,
    adapter_base: str | None = None,
    base: tuple[str, LoadOptions] | None = None,
) -> None:
    """Save the trained model (`engine.module` unless `model` names the HF model inside it) and
    its processor in HF format under `output_uri/attempt`. A peft model is saved merged, or as
    its adapter alone when `adapter_base` (the base model's URI) is given; a 4-bit base is
    merged by loading `base` (local path, options) unquantized (loading.merged_lora).

    Call on every rank: with ZeRO-3 the parameters are gathered collectively; rank 0 writes.
    """
    import deepspeed
    import ray.train

    model = engine.module if model is None else model
    rank = ray.train.get_context().get_world_rank()
    if hasattr(model, "peft_config"):
        if rank == 0:
            with tempfile.TemporaryDirectory() as directory:
                if adapter_base is not None:
                    model.peft_config["default"].base_model_name_or_path = adapter_base
                    model.save_pretrained(directory)
                else:
                    save_model(merged_lora(model, base), directory)
                processor.save_pretrained(directory)
                upload_model_dir(directory, open_location(output_uri, storage), attempt)
        return
    state: dict[str, torch.Tensor] | None = None
    if zero_stage == 3:
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if rank == 0:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    elif rank == 0:
        state = model.state_dict()
    if rank != 0:
        return
    with tempfile.TemporaryDirectory() as directory:
        save_model(model, directory, state)
        processor.save_pretrained(directory)
        upload_model_dir(directory, open_location(output_uri, storage), attempt)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
