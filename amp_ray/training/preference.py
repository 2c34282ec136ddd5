"""Preference training (MDPO, DPO, IPO, SLiC, Mixed/Avg-DPO, the SFT control): the per-worker
Ray Train loop and its typed config.

Per optimizer step a worker takes its share of one planned global batch (training/inputs.py),
scores the K levels of each item in one forward (models/level_scoring.py: the image prefix once,
the K responses on its repeated KV cache), reads the reference log-probs stored beside the data (or
scores them with a frozen reference when the spec asks), and applies the loss
(training/objective.py).
Metrics are averaged over the workers before they are reported.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from amp_ray.models.registry import LoadOptions
from amp_ray.spec.blocks import LoraSpec, StorageSpec, weights_dtype
from amp_ray.training.objective import Objective
from amp_ray.training.optim import EngineConfig

HISTORY_FILE = "history.json"  # every logged window's metrics, kept in each checkpoint


@dataclass(frozen=True)
class PreferenceLoopConfig:
    """Everything the loop reads besides its dataset."""

    init_path: str  # the policy's starting model: directory, s3:// URI or hub id
    reference_path: str | None  # a frozen reference to run in the loop; None: ref_logps in data
    output_uri: str
    attempt: str
    storage: StorageSpec | None
    objective: Objective
    engine: EngineConfig
    lora: LoraSpec | None
    freeze_vision: bool
    gradient_checkpointing: bool
    forward: str  # "shared_prefix" or "full"
    level_index: list[int]  # which of the encoded levels this recipe trains on, best first
    load: LoadOptions = field(default_factory=LoadOptions)  # its dtype: the engine's precision
    shuffle_window: int = 1024

    @property
    def load_options(self) -> LoadOptions:
        """The policy's (and an in-loop reference's) load options, in the dtype its weights
        train in: bf16 training keeps them in bfloat16."""
        return replace(self.load, dtype=weights_dtype(self.engine.precision))


def load_policy(cfg: PreferenceLoopConfig, path: str, device: Any) -> tuple[Any, int]:
    """The policy to train, and its count of trainable parameters."""
    from amp_ray.models.loading import freeze_all_but_language_model, load_model

    model = load_model(path, cfg.load_options, device, cfg.lora, cfg.gradient_checkpointing)
    if cfg.freeze_vision and cfg.lora is None:
        freeze_all_but_language_model(model)
    return model, sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class WorkerState:
    engine: Any  # DeepSpeed engine over a LevelScorer of the policy
    policy: Any  # the HF model inside it
    processor: Any
    reference: Any  # a LevelScorer of the frozen reference, or None
    trainable: int
    storage: StorageSpec | None


def set_up_worker(cfg: PreferenceLoopConfig, device: Any) -> WorkerState:
    from amp_ray.models.level_scoring import LevelScorer
    from amp_ray.models.loading import load_model, load_processor
    from amp_ray.models.store import local_model_path
    from amp_ray.training.worker import build_engine

    storage = cfg.storage
    path = local_model_path(cfg.init_path, storage)
    mode = "shared" if cfg.forward == "shared_prefix" else "full"
    policy, trainable = load_policy(cfg, path, device)
    engine = build_engine(LevelScorer(policy, mode), cfg.engine)
    reference: Any = None
    if cfg.reference_path == cfg.init_path and cfg.lora:
        # the reference is the policy's base: the adapters switched off, no second model
        # (and with a 4-bit base the only reference that starts equal to the policy)
        reference = BaseUnderAdapters(LevelScorer(policy, mode))
    elif cfg.reference_path is not None:
        frozen = load_model(local_model_path(cfg.reference_path, storage), cfg.load_options, device)
        reference = LevelScorer(frozen.eval().requires_grad_(False), mode)
    processor = load_processor(path, cfg.load_options.trust_remote_code)
    return WorkerState(engine, policy, processor, reference, trainable, storage)


class BaseUnderAdapters:
    """Scores with a peft policy's adapters disabled: its frozen base, the in-loop reference.
    It runs in the policy's training mode, through the same kernels as the policy's forward
    (bitsandbytes takes another 4-bit kernel in eval mode), so the margins start at exactly 0;
    with the adapters off no LoRA dropout runs, and the families' language models have none."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.scorer.model.disable_adapter():
            return self.scorer(batch)


def preference_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker loop: reads only `config` and its "train" dataset shard (its share of
    each planned global batch, training/inputs.py). Returns the step it started from and every
    logged window's metrics."""
    import ray.train
    import ray.train.torch

    from amp_ray.cluster.placement import train_worker_device
    from amp_ray.data.level_encoding import level_items
    from amp_ray.models.store import local_model_path
    from amp_ray.training import worker
    from amp_ray.training.inputs import SetAside, check_step, micro_batches_of, planned_steps

    cfg: PreferenceLoopConfig = config["loop"]
    opt = cfg.engine
    torch.set_num_threads(opt.threads)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    worker.seed_everything(opt.seed)  # the same on every rank: LoRA's initial weights agree
    device = train_worker_device(f"training.scaling:{cfg.output_uri.rstrip('/').split('/')[-1]}")
    state = set_up_worker(cfg, device)
    engine, mode = state.engine, state.engine.module.mode
    step = start_step = worker.restore_checkpoint(engine)
    saved = worker.checkpoint_file(ray.train.get_checkpoint(), HISTORY_FILE)
    history: list[dict[str, float]] = json.loads(saved) if saved else []
    share = opt.micro_batch_size * opt.gradient_accumulation_steps
    shard = ray.train.get_dataset_shard("train")
    planned = planned_steps(shard, opt.micro_batch_size, share, rank, start_step)
    set_aside = SetAside.restore(ray.train.get_checkpoint(), rank)
    objective = cfg.objective
    pad = state.processor.tokenizer.pad_token_id
    window: dict[str, float] = defaultdict(float)
    while step < opt.steps:
        started = time.perf_counter()
        rows = next(planned)
        check_step(rows, step)
        set_aside.add(rows.set_aside)
        generator = torch.Generator().manual_seed(opt.seed * 1_000_003 + step * 101 + rank)
        for micro, weight in micro_batches_of(rows, level_items):
            batch = collate_for(micro, cfg.level_index, pad, mode, device)
            out = train_micro_step(engine, state.reference, objective, batch, generator, weight)
            if weight:
                accumulate(window, out, batch, opt.gradient_accumulation_steps)
        step += 1
        window["seconds"] += time.perf_counter() - started
        window["steps"] += 1
        set_aside.count_read(rows.stored_bytes)
        if step % opt.log_every and step % opt.checkpoint_every and step != opt.steps:
            continue
        metrics = reduce_window(window, world, engine, start_step, state.trainable, step)
        metrics.update(set_aside.metrics(world, rank))
        history.append(metrics)
        window = defaultdict(float)
        if step % opt.checkpoint_every == 0 or step == opt.steps:
            files = {HISTORY_FILE: json.dumps(history)}
            worker.save_checkpoint(engine, step, metrics, files, set_aside.files(rank))
        else:
            ray.train.report(metrics)
    adapter_base = cfg.init_path if cfg.lora and cfg.lora.export == "adapter" else None
    worker.export_model(
        engine,
        state.processor,
        opt.zero_stage,
        cfg.output_uri,
        cfg.attempt,
        state.storage,
        state.policy,
        adapter_base,
        (local_model_path(cfg.init_path, state.storage), cfg.load_options),
    )
    return {"start_step": start_step, "history": history}


def collate_for(
    micro: list[Any], index: list[int], pad: int, mode: str, device: Any
) -> dict[str, torch.Tensor]:
    """A micro-batch of the levels at `index` of every item, with their reference log-probs
    per round ([B, K, T], 0 past an item's rounds; an empty tensor when the data carries none)
    and their `answer_ids` ([B, K, T], −1 past an item's rounds)."""
    from amp_ray.models.level_scoring import collate_levels

    batch = collate_levels([[item.levels[k] for k in index] for item in micro], pad, mode)
    batch = {key: value.to(device) for key, value in batch.items()}
    rounds = max(len(item.answer_ids[0]) for item in micro)
    answers = torch.full((len(micro), len(index), rounds), -1, dtype=torch.long)
    reference = torch.zeros((len(micro), len(index), rounds), dtype=torch.float64)
    for b, item in enumerate(micro):
        for column, k in enumerate(index):
            answers[b, column, : len(item.answer_ids[k])] = torch.tensor(item.answer_ids[k])
            if item.ref_logps:
                reference[b, column, : len(item.ref_logps[k])] = torch.tensor(item.ref_logps[k])
    has_reference = all(item.ref_logps for item in micro)
    batch["ref_logps"] = reference.to(device) if has_reference else torch.empty(0, device=device)
    batch["answer_ids"] = answers.to(device)
    return batch


def train_micro_step(
    engine: Any,
    reference: Any,
    objective: Objective,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
    weight: float = 1.0,
) -> Any:
    """Forward the K levels of every item, the loss, backward, and a DeepSpeed step (which
    updates the weights at the end of each accumulation window). `weight` 0: a pass that changes
    nothing but keeps this worker's collectives in step with the others'."""
    ref_logps, answers = batch.pop("ref_logps"), batch.pop("answer_ids")
    policy = engine(batch)
    if reference is not None:
        with torch.no_grad():
            ref_logps = reference(batch)
    ref_logps = ref_logps.to(policy.dtype) if ref_logps.numel() else torch.zeros_like(policy)
    out = objective(policy, ref_logps.detach(), batch["response_lengths"], answers, generator)
    engine.backward(out.loss * weight if weight != 1.0 else out.loss)
    engine.step()
    return out


def accumulate(window: dict[str, float], out: Any, batch: dict[str, Any], accum: int) -> None:
    window["loss"] += out.loss.item() / accum
    for key, value in out.metrics.items():
        window[key] += value.item() / accum
    window["tokens"] += float(batch["response_lengths"].sum())
    window["items"] += float(batch["response_lengths"].shape[0])


def reduce_window(
    window: dict[str, float], world: int, engine: Any, start: int, trainable: int, step: int
) -> dict[str, float]:
    """The window's metrics averaged over steps and workers (throughput summed over workers)."""
    import torch.distributed as dist

    keys = sorted(window)
    values = torch.tensor([window[key] for key in keys], dtype=torch.float64)
    if world > 1 and dist.is_initialized():
        dist.all_reduce(values)
        values /= world
    totals = dict(zip(keys, values.tolist(), strict=True))
    steps, seconds = totals.pop("steps"), totals.pop("seconds")
    tokens, items = totals.pop("tokens"), totals.pop("items")
    metrics = {key: value / steps for key, value in totals.items()}
    metrics.update(
        step=step,
        lr=engine.get_lr()[0],
        grad_norm=float(engine.get_global_grad_norm() or 0.0),
        step_seconds=seconds / steps,
        response_tokens_per_s=tokens * world / seconds,
        items_per_s=items * world / seconds,
        trainable_params=trainable,
        start_step=start,
    )
    return metrics
