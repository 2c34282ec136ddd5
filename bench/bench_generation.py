"""Generation throughput: a plain Hugging Face loop against the generation stage's actor pool.

    .venv/bin/python bench/bench_generation.py [--items 256] [--batch-size 16]
        [--max-new-tokens 24] [--threads N] [--model-dir runs/demo/sft/models/expert_m]

One run, one model, the same caption items of the synthetic world's preference split and the same
greedy decoding (num_beams=1, no sampling, repetition penalty 1) for every method:
  (1) a loop in this process, one item at a time: encode_conversation, collate (left), generate;
  (2) the same loop in batches of --batch-size;
  (3) the generation stage's Ray Data path: from_arrow, blocks of one batch, start_candidates,
      ModelCandidates in map_with_actor_pool, with 1 and with 2 actors.
Prints seconds, items/s, candidates/s (one per item), generated tokens/s, the ratio to (1), and
how many answers equal (1)'s. Tokens are counted the same way for every method: the answers
re-tokenized with the model's tokenizer. Without --model-dir a tiny untrained LLaVA is built; it
rarely emits EOS, so every method generates max_new_tokens per item and does the same work.

What each number includes. Loops: torch threads = --threads (default: every core; on a machine
busy with other jobs that oversubscribes: 2 threads on a loaded 2-core box ran 10-50x slower);
image decoding, encoding, collating, generating, decoding; not the model load (warmed on 4 items).
Ray "with startup": from building the dataset to take_all() returning every row: Ray Data
planning, the actor processes starting (imports, model load), the stage's per-item length check
and the rows coming back; not ray.init (Ray is started and warmed by an untimed run first).
Ray "steady": the rate from the n-th batch back (n actors: about one batch from each) to the
last, shown as the seconds all items would take at that rate. Each of the n actors holds
(cpus - 1) / n CPUs, leaving one for Ray Data's tasks, and runs torch_threads_for(those CPUs)
torch threads: on 2 cores the loops use 2 by default, each actor 1.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import torch

from amp_ray.data.encode import load_image
from amp_ray.generation.candidates import start_candidates
from amp_ray.generation.pools import model_candidates
from amp_ray.models.conversation import collate, encode_conversation
from amp_ray.models.decoding import generate
from amp_ray.models.loading import load_model, load_processor
from amp_ray.models.registry import ActorModel
from amp_ray.models.tiny import create_tiny_model
from amp_ray.runtime import RaySession, light_map, map_with_actor_pool, torch_threads_for
from amp_ray.spec.alignment import GenerationSpec, SamplingSpec
from amp_ray.spec.blocks import ActorPoolSpec, ResourcesSpec, TinyLlavaSpec, WorldSpec
from amp_ray.storage.schemas import ITEMS
from amp_ray.world import World

Answers = dict[str, str]  # item_id -> answer of the first (only) round


def caption_items(count: int) -> list[dict[str, Any]]:
    splits = {"sft": 0, "preference": count, "eval_iid": 0, "eval_bias_probe": 0, "eval_control": 0}
    world = World(WorldSpec(splits=splits))
    items = [item for index in range(world.num_images) for item in world.items(index)]
    return [item for item in items if item["task"] == "caption"][:count]


def tiny_model(directory: str, items: list[dict[str, Any]]) -> str:
    texts = [t[k] for item in items for t in item["rounds"] for k in ("question", "answer")]
    spec = TinyLlavaSpec(vision_hidden=64, text_hidden=128, text_layers=2, mlp=256)
    create_tiny_model(directory, spec, texts, image_size=32, seed=0)
    return directory


def loop_answers(
    model: Any, processor: Any, items: list[dict[str, Any]], sampling: SamplingSpec, size: int
) -> Answers:
    pad = processor.tokenizer.pad_token_id
    answers: Answers = {}
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        encoded = [
            encode_conversation(processor, load_image(item), [item["rounds"][0]["question"]], [])
            for item in chunk
        ]
        batch = collate(encoded, pad, "left")
        for item, result in zip(chunk, generate(model, processor, batch, sampling), strict=True):
            answers[item["item_id"]] = result.text
    return answers


def pool_run(
    table: pa.Table, model_dir: str, sampling: SamplingSpec, pool: ActorPoolSpec
) -> tuple[float, float | None, Answers]:
    """The generation stage's path for one ModelCandidates pool, streamed back batch by batch.

    Returns the seconds from building the dataset to the last row back; the seconds all items
    would take at the rate seen after the first `num_actors` batches came back (None with
    fewer than 4 batches after those); the answers (quarantined rows left out)."""
    import ray.data

    started = time.perf_counter()
    rows = ray.data.from_arrow(table).repartition(target_num_rows_per_block=pool.batch_size)
    rows = light_map(rows, start_candidates)
    model = ActorModel("bench", model_dir, num_cpus=pool.num_cpus)
    generation = GenerationSpec(sampling=sampling, actors=pool)
    fn_class, kwargs = model_candidates(generation, "meg", model, 1, seed=0)
    rows = map_with_actor_pool(rows, fn_class, pool, kwargs)
    answers: Answers = {}
    arrivals: list[tuple[float, int]] = []
    for batch in rows.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.select(["item_id", "candidates"]).to_pylist():
            if row["candidates"]:
                answers[row["item_id"]] = row["candidates"][0]["answers"][0]
        arrivals.append((time.perf_counter() - started, batch.num_rows))
    total = time.perf_counter() - started
    skip = pool.num_actors
    if len(arrivals) < skip + 4:  # too few batches for a rate
        return total, None, answers
    later = sum(count for _, count in arrivals[skip:])
    return total, (arrivals[-1][0] - arrivals[skip - 1][0]) * table.num_rows / later, answers


def timed(fn: Callable[..., Answers], *args: Any) -> tuple[float, Answers]:
    started = time.perf_counter()
    answers = fn(*args)
    return time.perf_counter() - started, answers


def pool_results(
    table: pa.Table, model_dir: str, sampling: SamplingSpec, batch_size: int, cpus: int
) -> list[tuple[str, float, Answers]]:
    results = []
    with RaySession(ResourcesSpec(num_cpus=cpus)) as session:
        session.ensure()
        for actors in (1, 2):
            per_actor = max(0.25, (cpus - 1) / actors)
            pool = ActorPoolSpec(num_actors=actors, num_cpus=per_actor, batch_size=batch_size)
            if actors == 1:  # untimed: the first Ray Data run of a session pays for imports
                pool_run(table.slice(0, 2), model_dir, sampling, pool)
            full, steady, answers = pool_run(table, model_dir, sampling, pool)
            label = f"ray {actors} x {per_actor:g} CPU, {torch_threads_for(per_actor)} thr"
            results.append((f"{label}, with startup", full, answers))
            if steady is not None:
                results.append((f"{label}, steady", steady, answers))
    return results


def report(
    results: list[tuple[str, float, Answers]], tokenizer: Any, items: list[dict[str, Any]]
) -> None:
    count, base_rate = len(items), 0.0
    reference = results[0][2]
    print(f"{'method':<42} {'s':>7} {'items/s':>8} {'cand/s':>8} {'tok/s':>8} {'ratio':>6} same")
    for name, seconds, answers in results:
        texts = list(answers.values())
        tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
        rate = count / seconds
        base_rate = base_rate or rate
        same = sum(answers.get(item_id) == text for item_id, text in reference.items())
        print(
            f"{name:<42} {seconds:7.2f} {rate:8.1f} {len(texts) / seconds:8.1f} "
            f"{tokens / seconds:8.0f} {rate / base_rate:5.2f}x {same}/{count}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="loop's")
    parser.add_argument("--model-dir", default=None, help="an existing HF model (default: tiny)")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    items = caption_items(args.items)
    sampling = SamplingSpec(
        max_new_tokens=args.max_new_tokens, do_sample=False, num_beams=1, repetition_penalty=1.0
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.abspath(args.model_dir) if args.model_dir else tiny_model(tmp, items)
        torch.set_num_threads(args.threads)
        model, processor = load_model(model_dir).eval(), load_processor(model_dir)
        loop_answers(model, processor, items[:4], sampling, 1)  # warm-up
        results = [
            (
                f"loop, 1 item at a time, {args.threads} thr",
                *timed(loop_answers, model, processor, items, sampling, 1),
            ),
            (
                f"loop, batches of {args.batch_size}, {args.threads} thr",
                *timed(loop_answers, model, processor, items, sampling, args.batch_size),
            ),
        ]
        table = pa.Table.from_pylist(items, schema=ITEMS)
        results += pool_results(table, model_dir, sampling, args.batch_size, cpus)
    print(f"cpus: {cpus}  items: {len(items)}  max_new_tokens: {args.max_new_tokens}  greedy")
    report(results, processor.tokenizer, items)


if __name__ == "__main__":
    main()
