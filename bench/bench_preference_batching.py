"""Padding and step time of preference training under each batching mode (`training.batching`).

    .venv/bin/python bench/bench_preference_batching.py [RUN_DIR] [--steps 30] [--threads 1]

Reads a finished run's encoded preference data (RUN_DIR/train/encoded, default runs/demo: run
`make demo` first) and its policy, plans the run's micro-batches with each mode
(training/inputs.make_plan) and prints, side by side in one run: the share of the padded
response tokens that are real, and the milliseconds of an MDPO step of the demo's recipe
(the K levels' shared-prefix forward, the loss, backward, AdamW) on the same steps' items.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from amp_ray.data.level_encoding import level_items
from amp_ray.models.level_scoring import LevelScorer
from amp_ray.models.loading import load_model, load_processor
from amp_ray.models.registry import model_uri
from amp_ray.models.store import local_model_path
from amp_ray.spec import load_spec
from amp_ray.storage.run import RunDir
from amp_ray.training.inputs import InputSource, RankInputs, encoded_index, make_plan
from amp_ray.training.objective import Objective
from amp_ray.training.preference import collate_for

SPEC = Path(__file__).resolve().parent.parent / "jobs" / "demo.yaml"
MODES = ("shuffle", "buckets", "by_length")


def planned_items(encoded: Any, processor_path: str, mode: str, steps: int, size: int) -> list:
    """The first `steps` micro-batches of a run planned with `mode`, decoded for training."""
    plan = make_plan(encoded_index(encoded), 0, size, steps, mode)
    files = [encoded.location.join(entry.path).uri for entry in encoded.manifest.files]
    inputs = RankInputs(0, size, InputSource(files, processor_path))
    return [level_items(inputs(plan.slice(step * size, size))) for step in range(steps)]


def time_steps(policy_path: str, batches: list, levels: list[int], objective: Objective) -> float:
    """Milliseconds per optimizer step, the first two steps left out (warm-up)."""
    model = load_model(policy_path)
    model.train()
    scorer = LevelScorer(model, "shared")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    generator = torch.Generator().manual_seed(0)
    pad = load_processor(policy_path).tokenizer.pad_token_id
    seconds = []
    for items in batches:
        started = time.perf_counter()
        batch = collate_for(items, levels, pad, "shared", torch.device("cpu"))
        reference, answers = batch.pop("ref_logps"), batch.pop("answer_ids")
        policy = scorer(batch)
        lengths = batch["response_lengths"]
        out = objective(policy, reference.to(policy.dtype), lengths, answers, generator)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - started)
    return 1000 * sum(seconds[2:]) / max(1, len(seconds) - 2)


def real_share(batches: list, levels: list[int]) -> float:
    real = padded = 0
    for items in batches:
        mask = collate_for(items, levels, 0, "shared", torch.device("cpu"))
        mask = mask["response_attention_mask"]
        real, padded = real + int(mask.sum()), padded + mask.numel()
    return real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default="runs/demo")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_spec(str(SPEC), [f"storage.run_dir={args.run_dir}"])
    training = spec.training
    run_dir = RunDir.open(spec.storage.run_dir, spec.storage, check=False)
    encoded = run_dir.dataset("train", "encoded")
    if not encoded.exists:
        raise SystemExit(f"{args.run_dir}/train/encoded is missing: run `make demo` first")
    policy = model_uri(spec, run_dir, str(training.policy))
    policy_path = local_model_path(policy, spec.storage)
    objective = Objective.from_recipe(training)
    levels = training.trained_levels
    print(
        f"{'batching':<10} {'real tokens':>12} {'ms/step':>8}   ({args.steps} MDPO steps of "
        f"{training.micro_batch_size} items, K={len(levels)}, {args.threads} thread)"
    )
    results = {}
    for mode in MODES:
        batches = planned_items(encoded, policy, mode, args.steps, training.micro_batch_size)
        results[mode] = time_steps(policy_path, batches, levels, objective)
        print(f"{mode:<10} {real_share(batches, levels):>12.2f} {results[mode]:>8.0f}")
    ratio = results["shuffle"] / results["by_length"]
    print(f"by_length steps are {ratio:.2f}x as fast as shuffle")


if __name__ == "__main__":
    main()
