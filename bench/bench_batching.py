"""How micro-batches are formed: learning and speed of random, bucketed and sorted batches.

    .venv/bin/python bench/bench_batching.py [--steps 200] [--threads 2]

Trains the same tiny LLaVA from the same initial weights on the synthetic world's SFT items with
each batching mode (amp_ray.training.worker.make_batches) for the same number of steps, and
prints the wall time and the loss on held-out items, side by side, in one run.
"""

from __future__ import annotations

import argparse
import copy
import io
import random
import tempfile
import time

import torch
from PIL import Image

from amp_ray.models.conversation import collate, encode_conversation
from amp_ray.models.loading import load_model, load_processor
from amp_ray.models.logprobs import sequence_logprobs
from amp_ray.models.tiny import create_tiny_model
from amp_ray.spec.blocks import ScheduleSpec, TinyLlavaSpec, WorldSpec
from amp_ray.training.optim import lr_factor
from amp_ray.training.worker import make_batches
from amp_ray.world import World


def encode_items(processor, items):
    return [
        encode_conversation(
            processor,
            Image.open(io.BytesIO(item["image"])).convert("RGB"),
            [turn["question"] for turn in item["rounds"]],
            [turn["answer"] for turn in item["rounds"]],
        )
        for item in items
    ]


def held_out_loss(model, processor, rows) -> float:
    pad = processor.tokenizer.pad_token_id
    total = tokens = 0.0
    with torch.no_grad():
        for i in range(0, len(rows), 64):
            batch = collate(rows[i : i + 64], pad, "right")
            total -= sequence_logprobs(model, batch).sum().item()
            tokens += batch["response_weights"].sum().item()
    return total / tokens


def train(model, processor, rows, mode: str, steps: int, seed: int, lr: float = 2e-3) -> float:
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(ScheduleSpec(warmup_steps=50), steps)
    )
    pad = processor.tokenizer.pad_token_id
    batches: list = []
    started = time.perf_counter()
    for _ in range(steps):
        if not batches:
            for start in range(0, len(rows) - 1023, 1024):  # groups of 16 micro-batches
                batches += make_batches(rows[start : start + 1024], 64, rng, mode)
        batch = collate(batches.pop(), pad, "right")
        loss = -sequence_logprobs(model, batch).sum() / batch["response_weights"].sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = {"sft": 4000, "preference": 0, "eval_iid": 0, "eval_bias_probe": 0, "eval_control": 0}
    world = World(WorldSpec(splits=splits))
    items = [item for index in range(world.num_images) for item in world.items(index)]
    with tempfile.TemporaryDirectory() as directory:
        texts = [t[k] for item in items for t in item["rounds"] for k in ("question", "answer")]
        create_tiny_model(directory, TinyLlavaSpec(), texts, image_size=32, seed=0)
        processor, initial = load_processor(directory), load_model(directory)
    rows = encode_items(processor, items)
    random.Random(0).shuffle(rows)
    held_out, rows = rows[:512], rows[512:]
    print(f"{'batching':<10} {'seconds':>8} {'held-out loss':>14}   ({args.steps} steps of 64)")
    results = {}
    for mode in ("random", "buckets", "sorted"):
        model = copy.deepcopy(initial)
        seconds = train(model, processor, rows, mode, args.steps, seed=0)
        results[mode] = seconds
        loss = held_out_loss(model, processor, held_out)
        print(f"{mode:<10} {seconds:>8.1f} {loss:>14.3f}")
    print(f"buckets take {results['buckets'] / results['random']:.2f}x the time of random batches")


if __name__ == "__main__":
    main()
