"""MDPO training steps on K=4 items: shared-prefix scoring against AMP's and TRL's designs.

    .venv/bin/python bench/bench_mdpo.py [--steps 5] [--warmup 2] [--threads N]
        [--memory-steps 2] [--world-batch-items 8] [--llava-batch-items 2] [--epochs 4]
        [--shapes world llava] [--designs a b c]

One run, for each data shape, the same tiny LLaVA (same weights), the same items, the same batch
(items per step), the same optimizer (torch AdamW, lr 1e-5, no weight decay, gradients clipped
to norm 1) for three designs of a preference training step:
  (a) this repo: LevelScorer(model, "shared") on collate_levels(..., "shared"): the image and
      prompt prefix runs once per item with a KV cache, the cache is repeated for the K responses,
      which run on top; the reference log-probs are precomputed before timing (as the reference
      stage does), so a step is the policy forward, mdpo_loss, backward and optimizer step;
  (b) the AMP public code: the K levels as K full sequences (LevelScorer "full"), and a frozen
      copy of the model scoring the same K full sequences (no grad) at every step, then mdpo_loss;
  (c) TRL's DPOTrainer (in the dev extras; skipped when missing) on the pairwise expansion
      of the same items: K(K-1)/2 = 6 (chosen, rejected) pairs per item, batch = 6 x items, the
      reference model run every step (TRL refuses precompute_ref_log_probs for vision datasets),
      gradient checkpointing off and float32 like (a) and (b), sequential sampling.
Shapes: "world", the synthetic world's captions (image 32 px, patch 8: 16 image tokens, answers
~10 tokens); "llava", LLaVA-1.5's shape at tiny width (image 336 px, patch 14: 576 image tokens,
the caption's words repeated to ~100 response tokens). Level 0 is the reference answer, levels 1-3
have more and more words replaced by a wrong object word.

What each number includes. Every design runs in fresh processes (this script re-invoked with
--one), torch threads = --threads (default: every core), --warmup untimed steps first. Speed run:
--steps timed steps; items/s = batch items x timed steps / their wall time, for (c) one item is
its 6 pairs (pairs/s / 6). (a)/(b) steps include collate_levels, not encode_conversation (the
encode stage does that once per run). (c) steps are timed from one step's end to the next, so
they include TRL's collator (chat text and image processing for every pair, on the fly: its
share is printed) and the Trainer's bookkeeping. "(a) + ref/E" adds (a)'s reference precompute
(timed apart after one untimed pass, no grad, same batches) spread over E = --epochs epochs.
Memory run: a second process, --memory-steps timed steps, with glibc's mmap threshold fixed
(MEMORY_ENV; it slows the steps, hence the separate run); a psutil thread samples the RSS every
2 ms. "step MB" = peak RSS during the timed steps - RSS just before the first: activations,
gradients (set to None between steps) and temporaries, not the weights or the optimizer state;
"peak MB" = that peak in full (weights, optimizer state, the reference model of (b) and (c),
libraries). "seq/item" counts the
rows one item sends through the model a step (P: the shared prefix, R: one response, ref:
reference rows, no grad). The predicted ratios count token passes (forward 1, backward 2) with
the measured mean prefix P and response R tokens, K=4: (c) 48(P+R) per item, (b) 16(P+R),
(a) 3P + 3KR, + (P+KR)/E with the reference amortised.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import psutil
import torch
from PIL import Image

from amp_ray.losses.preference import mdpo_loss
from amp_ray.models.conversation import Encoded, encode_conversation, messages_for
from amp_ray.models.level_scoring import LevelScorer, collate_levels, shared_prefix_length
from amp_ray.models.loading import load_model, load_processor
from amp_ray.models.registry import LoadOptions
from amp_ray.models.tiny import create_tiny_model
from amp_ray.spec.blocks import TinyLlavaSpec, WorldSpec
from amp_ray.world import World

K = 4
PAIRS = K * (K - 1) // 2
WRONG = "square"  # the wrong object word of the corrupted levels
LR = 1e-5
DESIGNS = {
    "a": "(a) shared prefix, ref precomputed",
    "b": "(b) AMP: K full seqs + ref model",
    "c": "(c) TRL DPOTrainer, 6 pairs/item",
}
SEQUENCES = {"a": "1P+4R", "b": "4+4ref", "c": "12+12ref"}
# Memory runs: a fixed mmap threshold turns glibc's dynamic one off, so every buffer over 128 KiB
# is mmapped and unmapped when freed, and the RSS follows the live tensors. With the default,
# the warm-up's freed activations stay resident, and a step's peak hardly rises above them.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


@dataclass(frozen=True)
class Shape:
    name: str
    image_size: int
    patch_size: int
    response_words: int | None  # None: the caption as it is


SHAPES = {
    "world": Shape("world", 32, 8, None),
    "llava": Shape("llava", 336, 14, 99),  # 99 words + <eos> = 100 response tokens
}


# --- data --------------------------------------------------------------------------------------


def caption_items(count: int) -> list[dict[str, Any]]:
    splits = {"sft": 0, "preference": count, "eval_iid": 0, "eval_bias_probe": 0, "eval_control": 0}
    world = World(WorldSpec(splits=splits))
    items = [item for index in range(world.num_images) for item in world.items(index)]
    return [item for item in items if item["task"] == "caption"][:count]


def corrupted(answer: str, k: int, per_level: int) -> str:
    """Level k: the first k·per_level word positions, where alphabetic, become the wrong word."""
    words = answer.split()
    return " ".join(WRONG if i < k * per_level and w.isalpha() else w for i, w in enumerate(words))


def level_answers(answer: str, response_words: int | None) -> list[str]:
    """K answers, best first; with response_words the caption's words repeat to that length."""
    words = answer.split()
    if response_words is not None:
        words = (words * (response_words // len(words) + 1))[:response_words]
    per_level = max(2, len(words) // 5)  # 2 words a level on captions, as tests/ do
    return [corrupted(" ".join(words), k, per_level) for k in range(K)]


def prepared_data(
    shape: Shape, num_items: int
) -> tuple[list[dict[str, Any]], list[list[str]], list[str]]:
    """The items, each item's K answers, and the texts the tokenizer is trained on."""
    items = caption_items(num_items)
    if len(items) < num_items:
        raise SystemExit(f"the world gave {len(items)} caption items, {num_items} needed")
    answers = [level_answers(item["rounds"][0]["answer"], shape.response_words) for item in items]
    texts = [t[key] for item in items for t in item["rounds"] for key in ("question", "answer")]
    return items, answers, [*texts, WRONG]


def image_of(item: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(item["image"])).convert("RGB")


def encoded_levels(
    processor: Any, items: list[dict[str, Any]], answers: list[list[str]]
) -> list[list[Encoded]]:
    return [
        [
            encode_conversation(processor, image_of(item), [item["rounds"][0]["question"]], [a])
            for a in levels
        ]
        for item, levels in zip(items, answers, strict=True)
    ]


def prefix_and_response(levels: list[list[Encoded]]) -> tuple[float, float]:
    """Mean shared prefix tokens P and mean response tokens R (one level) over the items."""
    cuts = [shared_prefix_length(item) for item in levels]
    responses = [len(level) - cut for item, cut in zip(levels, cuts, strict=True) for level in item]
    return sum(cuts) / len(cuts), sum(responses) / len(responses)


def batches_of(data: list[Any], size: int) -> list[list[Any]]:
    return [data[start : start + size] for start in range(0, len(data), size)]


# --- measuring ---------------------------------------------------------------------------------


def rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


class PeakRss:
    """Samples this process's RSS every `interval` s in a thread between start() and stop()."""

    def __init__(self, interval: float = 0.002) -> None:
        self.process = psutil.Process()
        self.interval = interval
        self.baseline = self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb(self.process))

    def start(self) -> None:
        self.baseline = self.peak = rss_mb(self.process)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.process))


def timed_steps(
    step: Callable[[Any], None], batches: list[Any], warmup: int, steps: int
) -> dict[str, float]:
    """Run warmup untimed steps, then `steps` timed ones under the RSS sampler."""
    cycle = (batches[i % len(batches)] for i in range(warmup + steps))
    for _ in range(warmup):
        step(next(cycle))
    sampler = PeakRss()
    sampler.start()
    started = time.perf_counter()
    for _ in range(steps):
        step(next(cycle))
    seconds = time.perf_counter() - started
    sampler.stop()
    return {"seconds": seconds, "baseline_mb": sampler.baseline, "peak_mb": sampler.peak}


def optimizer_for(model: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)


# --- the designs, each run in its own process ---------------------------------------------------


def mdpo_step(
    model: Any, scorer: LevelScorer, pad: int, reference: Callable[[Any], torch.Tensor]
) -> Callable[[Any], None]:
    """One training step on a batch (index, items' levels): collate, score, loss, update."""
    optimizer = optimizer_for(model)
    model.train()

    def step(batch: tuple[int, list[list[Encoded]]]) -> None:
        index, items = batch
        inputs = collate_levels(items, pad, scorer.mode)
        policy = scorer(inputs).sum(-1)  # a caption is one round
        loss = mdpo_loss(policy, reference((index, inputs)), beta=0.1, penalty_weight=1.0).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run_shared(model: Any, processor: Any, batches: list[Any], args: Any) -> dict[str, Any]:
    """(a): reference log-probs precomputed (timed apart), then shared-prefix policy steps."""
    pad = processor.tokenizer.pad_token_id
    scorer = LevelScorer(model, "shared")
    with torch.no_grad():
        # one untimed pass first: the process's first forward pays one-time set-up (thread
        # pools, allocator) that the reference stage pays once per run, not once per item
        scorer(collate_levels(batches[0], pad, "shared"))
        started = time.perf_counter()
        precomputed = [scorer(collate_levels(items, pad, "shared")).sum(-1) for items in batches]
        reference_seconds = time.perf_counter() - started
    step = mdpo_step(model, scorer, pad, lambda batch: precomputed[batch[0]])
    result = timed_steps(step, list(enumerate(batches)), args.warmup, args.steps)
    result["reference_seconds_per_item"] = reference_seconds / sum(len(b) for b in batches)
    return result


def run_full(model: Any, processor: Any, batches: list[Any], args: Any) -> dict[str, Any]:
    """(b): K full sequences for the policy, and a frozen reference copy on them every step."""
    pad = processor.tokenizer.pad_token_id
    reference_scorer = LevelScorer(copy.deepcopy(model).eval().requires_grad_(False), "full")

    def reference(batch: tuple[int, dict[str, torch.Tensor]]) -> torch.Tensor:
        with torch.no_grad():
            return reference_scorer(batch[1]).sum(-1)

    step = mdpo_step(model, LevelScorer(model, "full"), pad, reference)
    return timed_steps(step, list(enumerate(batches)), args.warmup, args.steps)


def pairwise_rows(
    processor: Any, items: list[dict[str, Any]], answers: list[list[str]]
) -> dict[str, list[Any]]:
    """TRL's standard (not conversational) vision format, rendered with the model's chat
    template exactly as encode_conversation renders it: the same tokens as (a) and (b)."""
    rows: dict[str, list[Any]] = {"image": [], "prompt": [], "chosen": [], "rejected": []}
    template = processor.apply_chat_template
    for item, levels in zip(items, answers, strict=True):
        question = item["rounds"][0]["question"]
        prompt = template(messages_for([question], []), tokenize=False, add_generation_prompt=True)
        full = [template(messages_for([question], [a]), tokenize=False) for a in levels]
        for i in range(K):
            for j in range(i + 1, K):
                rows["image"].append({"bytes": item["image"], "path": None})
                rows["prompt"].append(prompt)
                rows["chosen"].append(full[i][len(prompt) :])
                rows["rejected"].append(full[j][len(prompt) :])
    return rows


class TimedCollator:
    """Wraps TRL's vision collator to add up the seconds it takes."""

    def __init__(self, collator: Callable[[list[dict[str, Any]]], Any]) -> None:
        self.collator = collator
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, examples: list[dict[str, Any]]) -> Any:
        started = time.perf_counter()
        batch = self.collator(examples)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return batch


def step_clock(warmup: int, steps: int, collator: TimedCollator) -> Any:
    """A TrainerCallback timing the steps after `warmup` from step end to step end."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.sampler = PeakRss()
            self.result: dict[str, float] = {}

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == warmup:
                self.sampler.start()
                self.started = time.perf_counter()
            elif state.global_step == warmup + steps:
                seconds = time.perf_counter() - self.started
                self.sampler.stop()
                self.result = {
                    "seconds": seconds,
                    "baseline_mb": self.sampler.baseline,
                    "peak_mb": self.sampler.peak,
                    "collate_seconds_per_call": collator.seconds / max(collator.calls, 1),
                }

    return StepClock()


def run_trl(model: Any, processor: Any, data: tuple[Any, Any], args: Any) -> dict[str, Any]:
    """(c): DPOTrainer on the 6 pairs of every item, its reference model run at every step."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    items, answers = data
    text = Value("string")
    features = Features({"image": ImageFeature(), "prompt": text, "chosen": text, "rejected": text})
    dataset = Dataset.from_dict(pairwise_rows(processor, items, answers), features=features)
    collator = TimedCollator(DataCollatorForVisionPreference(processor=processor, max_length=None))
    clock = step_clock(args.warmup, args.steps, collator)
    with tempfile.TemporaryDirectory() as output_dir:
        config = DPOConfig(
            output_dir=output_dir,
            per_device_train_batch_size=PAIRS * args.batch_items,
            gradient_accumulation_steps=1,
            max_steps=args.warmup + args.steps,
            learning_rate=LR,
            lr_scheduler_type="constant",
            max_grad_norm=1.0,
            beta=0.1,
            loss_type=["sigmoid"],
            max_length=None,
            precompute_ref_log_probs=False,
            gradient_checkpointing=False,
            bf16=False,
            fp16=False,
            use_cpu=True,
            train_sampling_strategy="sequential",
            dataloader_num_workers=0,
            logging_steps=10_000,
            save_strategy="no",
            report_to="none",
            seed=0,
        )
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        trainer = DPOTrainer(
            model=model,
            ref_model=reference,
            args=config,
            data_collator=collator,
            train_dataset=dataset,
            processing_class=processor,
            callbacks=[clock],
            optimizers=(optimizer_for(model), None),
        )
        trainer.train()
    if not clock.result:
        raise RuntimeError("DPOTrainer stopped before the last timed step")
    return clock.result


def run_one(design: str, shape: Shape, args: argparse.Namespace) -> dict[str, Any]:
    """One design on one shape, in this (fresh) process."""
    torch.set_num_threads(args.threads)
    items, answers, _ = prepared_data(shape, args.batch_items * (args.warmup + args.steps))
    model_dir = os.path.join(args.model_root, shape.name)
    model, processor = load_model(model_dir, LoadOptions("float32")), load_processor(model_dir)
    levels = encoded_levels(processor, items, answers)
    prefix, response = prefix_and_response(levels)
    if design == "c":
        result = run_trl(model, processor, (items, answers), args)
    else:
        runner = run_shared if design == "a" else run_full
        result = runner(model, processor, batches_of(levels, args.batch_items), args)
    result.update(
        prefix_tokens=prefix,
        response_tokens=response,
        threads=torch.get_num_threads(),
    )
    return result


# --- the parent: build the models, run every design apart, print the tables --------------------


def build_models(root: str, shapes: list[Shape], args: argparse.Namespace) -> None:
    for shape in shapes:
        count = batch_items_for(shape, args) * (args.warmup + max(args.steps, args.memory_steps))
        _, _, texts = prepared_data(shape, count)
        spec = TinyLlavaSpec(image_size=shape.image_size, patch_size=shape.patch_size)
        create_tiny_model(os.path.join(root, shape.name), spec, texts, shape.image_size, seed=0)


def batch_items_for(shape: Shape, args: argparse.Namespace) -> int:
    return args.world_batch_items if shape.name == "world" else args.llava_batch_items


def run_child(
    design: str, shape: Shape, root: str, args: argparse.Namespace, memory: bool
) -> dict[str, Any]:
    """Re-invoke this script with --one; its last RESULT line, or {"error": ...}. A memory run
    takes --memory-steps timed steps, with glibc's mmap threshold fixed (MEMORY_ENV)."""
    steps = args.memory_steps if memory else args.steps
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--one",
        design,
        shape.name,
        "--model-root",
        root,
        *("--steps", str(steps), "--warmup", str(args.warmup)),
        *("--threads", str(args.threads), "--epochs", str(args.epochs)),
        *("--world-batch-items", str(args.world_batch_items)),
        *("--llava-batch-items", str(args.llava_batch_items)),
    ]
    env = {**os.environ, **MEMORY_ENV} if memory else None
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if results:
        return json.loads(results[-1].removeprefix("RESULT "))
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {done.returncode}: {tail[0]}"}


def run_design(design: str, shape: Shape, root: str, args: argparse.Namespace) -> dict[str, Any]:
    """The speed run's result, with step MB and peak MB taken from the memory run."""
    result = run_child(design, shape, root, args, memory=False)
    if "error" in result:
        return result
    memory = run_child(design, shape, root, args, memory=True)
    if "error" in memory:
        return {"error": f"memory run: {memory['error']}"}
    result["step_mb"] = memory["peak_mb"] - memory["baseline_mb"]
    result["peak_mb"] = memory["peak_mb"]
    return result


def add_rates(results: dict[str, dict[str, Any]], batch_items: int, args: Any) -> None:
    """items/s, seconds per step and, for (a), the rate with its reference spread over E."""
    for result in results.values():
        if "error" in result:
            continue
        result["rate"] = batch_items * args.steps / result["seconds"]
        result["seconds_per_step"] = result["seconds"] / args.steps
        if "reference_seconds_per_item" in result:
            per_item = 1 / result["rate"] + result["reference_seconds_per_item"] / args.epochs
            result["amortised_rate"] = 1 / per_item


def print_designs(results: dict[str, dict[str, Any]], epochs: int) -> None:
    columns = ("items/s", "seq/item", "s/step", "step MB", "peak MB")
    print(f"{'design':<38} " + " ".join(f"{c:>8}" for c in columns))
    for design, result in results.items():
        if "error" in result:
            print(f"{DESIGNS[design]:<38} failed: {result['error']}")
            continue
        print(
            f"{DESIGNS[design]:<38} {result['rate']:8.2f} {SEQUENCES[design]:>8} "
            f"{result['seconds_per_step']:8.3f} {result['step_mb']:8.1f} {result['peak_mb']:8.0f}"
        )
        if design == "a":
            label = f"(a) + ref precompute spread over E={epochs}"
            print(f"{label:<38} {result['amortised_rate']:8.2f}")
    if "collate_seconds_per_call" in results.get("c", {}):
        c = results["c"]
        share = c["collate_seconds_per_call"] / c["seconds_per_step"]
        print(f"(c) of which TRL's collator (text and images of every pair): {share:.0%} a step")


def predicted_costs(prefix: float, response: float, epochs: int) -> dict[str, float]:
    """Token passes per item (forward 1, backward 2), K=4, as the issue counts them."""
    shared = 3 * prefix + 3 * K * response
    return {
        "a": shared,
        "a+ref": shared + (prefix + K * response) / epochs,
        "b": 16 * (prefix + response),
        "c": 48 * (prefix + response),
    }


def print_ratios(results: dict[str, dict[str, Any]], shape: Shape, epochs: int) -> None:
    ok = {d: r for d, r in results.items() if "error" not in r}
    if "a" not in ok or len(ok) == 1:
        return
    a = ok["a"]
    cost = predicted_costs(a["prefix_tokens"], a["response_tokens"], epochs)
    targets = shape.name == "llava"
    print(f"{'ratio':<38} {'measured':>8} {'predicted':>9}  target (issue, llava shape)")
    for other, target in (("c", 6.0), ("b", 1.8)):
        if other not in ok:
            continue
        for key, label in (("rate", "(a)"), ("amortised_rate", "(a) + ref/E")):
            measured = a[key] / ok[other]["rate"]
            predicted = cost[other] / cost["a" if key == "rate" else "a+ref"]
            verdict = ("met" if measured >= target else "MISSED") if targets else ""
            name = f"{label} / ({other}) items/s"
            print(f"{name:<38} {measured:7.2f}x {predicted:8.2f}x  >= {target:g}x {verdict}")
    if "b" in ok:
        measured = a["step_mb"] / max(ok["b"]["step_mb"], 1e-9)
        verdict = ("met" if measured <= 1 else "MISSED") if targets else ""
        print(f"{'(a) / (b) step memory':<38} {measured:7.2f}x {'':>9}  <= 1x {verdict}")


def report(shape: Shape, results: dict[str, dict[str, Any]], args: Any) -> None:
    batch_items = batch_items_for(shape, args)
    add_rates(results, batch_items, args)
    sample = next((r for r in results.values() if "error" not in r), {})
    print(
        f"\n== shape {shape.name}: image {shape.image_size} px / patch {shape.patch_size}, "
        f"P = {sample.get('prefix_tokens', 0):.0f} prefix tokens, "
        f"R = {sample.get('response_tokens', 0):.0f} response tokens, K = {K}; "
        f"{batch_items} items a step, {args.warmup} warm-up + {args.steps} timed steps, "
        f"{sample.get('threads', args.threads)} threads"
    )
    print_designs(results, args.epochs)
    print_ratios(results, shape, args.epochs)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--world-batch-items", type=int, default=8)
    parser.add_argument("--llava-batch-items", type=int, default=2)
    parser.add_argument("--memory-steps", type=int, default=2, help="of the memory runs")
    parser.add_argument("--epochs", type=int, default=4, help="E, to amortise (a)'s reference")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--designs", nargs="+", choices=list(DESIGNS), default=list(DESIGNS))
    parser.add_argument("--one", nargs=2, metavar=("DESIGN", "SHAPE"), help=argparse.SUPPRESS)
    parser.add_argument("--model-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.warmup, args.steps, args.memory_steps) < 1:
        parser.error("--warmup, --steps and --memory-steps need at least 1 step each")
    return args


def main() -> None:
    args = parse_args()
    if args.one:
        design, name = args.one
        args.batch_items = batch_items_for(SHAPES[name], args)
        try:
            result = run_one(design, SHAPES[name], args)
        except Exception as error:  # reported by the parent, the other designs still run
            traceback.print_exc()
            why = f"{type(error).__name__}: {error}"
            if design == "c":  # TRL is there (the parent checked): say which with which
                why = f"trl {version('trl')} with transformers {version('transformers')}: {why}"
            result = {"error": why}
        print("RESULT " + json.dumps(result))
        return
    designs = list(args.designs)
    if "c" in designs and importlib.util.find_spec("trl") is None:
        print("trl not installed: pip install trl==1.16.0 (design (c) skipped)")
        designs.remove("c")
    if "c" in designs:
        print("(c) TRL runs its reference model at every step: DPOTrainer refuses")
        print("    precompute_ref_log_probs for vision datasets")
    print(f"cpus: {os.cpu_count()}  command: {' '.join(sys.argv)}")
    shapes = [SHAPES[name] for name in args.shapes]
    with tempfile.TemporaryDirectory() as root:
        build_models(root, shapes, args)
        for shape in shapes:
            results = {design: run_design(design, shape, root, args) for design in designs}
            report(shape, results, args)


if __name__ == "__main__":
    main()
