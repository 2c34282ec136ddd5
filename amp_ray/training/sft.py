"""Supervised fine-tuning: the per-worker loop (Ray Train + DeepSpeed) and its typed config.

The loss is the mean negative log-likelihood of the response tokens (reference answers), from the
same `sequence_logprobs` that scores preferences.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from amp_ray.models.conversation import collate
from amp_ray.models.logprobs import sequence_logprobs
from amp_ray.models.registry import LoadOptions
from amp_ray.spec.blocks import StorageSpec, weights_dtype
from amp_ray.training.optim import EngineConfig


@dataclass(frozen=True)
class SftLoopConfig:
    """Everything the loop reads besides its dataset shard."""

    init_path: str  # model to start from: directory, s3:// URI or hub id
    output_uri: str  # model store location; the model goes under output_uri/attempt
    attempt: str
    storage: StorageSpec | None  # for s3 options
    engine: EngineConfig
    load: LoadOptions = field(default_factory=LoadOptions)  # its dtype: the engine's precision

    def load_options(self) -> LoadOptions:
        """The model's load options, in the dtype its weights train in."""
        return replace(self.load, dtype=weights_dtype(self.engine.precision))


def sft_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker loop: reads only `config` and its "train" dataset shard (its share of
    each planned global batch, length-bucketed: training/inputs.py).

    Returns the step it started from (0, or the checkpoint's) and every logged window's metrics.
    """
    import ray.train
    import ray.train.torch

    from amp_ray.cluster.placement import train_worker_device
    from amp_ray.data.encode import encoded_rows
    from amp_ray.models.loading import load_model, load_processor
    from amp_ray.models.store import local_model_path
    from amp_ray.training.inputs import check_step, micro_batches_of, planned_steps
    from amp_ray.training.worker import (
        build_engine,
        export_model,
        restore_checkpoint,
        save_checkpoint,
        seed_everything,
    )

    cfg: SftLoopConfig = config["loop"]
    opt = cfg.engine
    torch.set_num_threads(opt.threads)
    rank = ray.train.get_context().get_world_rank()
    seed_everything(opt.seed + rank)
    storage = cfg.storage
    path = local_model_path(cfg.init_path, storage)
    options = cfg.load_options()
    processor = load_processor(path, options.trust_remote_code)
    device = train_worker_device(f"sft.scaling:{cfg.output_uri.rstrip('/').split('/')[-1]}")
    model = load_model(path, options, device)
    params = sum(p.numel() for p in model.parameters())
    engine = build_engine(model, opt)
    step = start_step = restore_checkpoint(engine)
    history: list[dict[str, float]] = []
    share = opt.micro_batch_size * opt.gradient_accumulation_steps
    shard = ray.train.get_dataset_shard("train")
    planned = planned_steps(shard, opt.micro_batch_size, share, rank, start_step)
    pad = processor.tokenizer.pad_token_id
    window = dict.fromkeys(("loss", "tokens", "seconds", "data_seconds", "steps"), 0.0)
    while step < opt.steps:
        started = time.perf_counter()
        rows = next(planned)
        check_step(rows, step)
        for micro, weight in micro_batches_of(rows, encoded_rows):
            batch = {k: v.to(device) for k, v in collate(micro, pad, "right").items()}
            tokens = batch["response_weights"].sum()
            loss = -sequence_logprobs(engine, batch).sum() / tokens
            engine.backward(loss * weight if weight != 1.0 else loss)
            engine.step()
            window["loss"] += weight * loss.item() / opt.gradient_accumulation_steps
            window["tokens"] += weight * float(batch["attention_mask"].sum())
        window["data_seconds"] += rows.wait_seconds
        step += 1
        window["seconds"] += time.perf_counter() - started
        window["steps"] += 1
        if step % opt.log_every == 0 or step % opt.checkpoint_every == 0 or step == opt.steps:
            metrics = {
                "step": step,
                "loss": window["loss"] / window["steps"],
                "lr": engine.get_lr()[0],
                "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                "tokens_per_s": window["tokens"] / window["seconds"],
                "data_wait_share": window["data_seconds"] / window["seconds"],
                "params": params,
                "start_step": start_step,
            }
            history.append(metrics)
            window = dict.fromkeys(window, 0.0)
            if step % opt.checkpoint_every == 0 or step == opt.steps:
                save_checkpoint(engine, step, metrics)
            else:
                ray.train.report(metrics)
    export_model(engine, processor, opt.zero_stage, cfg.output_uri, cfg.attempt, storage)
    return {"start_step": start_step, "history": history}
