"""Candidates per second of the generate stage with engine hf and engine vllm, on the same items.

    .venv/bin/python bench/bench_engines.py [--items 64 640] [--max-new-tokens 24]
        [--vllm-python .venv-vllm/bin/python]      # make vllm-env first

One run: a tiny untrained LLaVA (hidden 128; it rarely emits EOS, so every answer is
max-new-tokens long and both engines do the same work) and the synthetic world's preference
items (captions and 2-5 round dialogues). For each engine and each item count the real generate
stage (one MEG model, greedy, one actor of all CPUs but one) runs into a fresh run directory on
a local Ray sized to the machine, after an untimed run of 8 items per engine (imports, vLLM's
compile caches). Printed side by side: the stage's seconds and candidates/s at
each count, the marginal rate between the two counts (the extra candidates over the extra
seconds: the actor's start-up, model load and engine warm-up cancel out), how many candidates
the two engines answered identically, and vllm / hf ratios. On a GPU node set --gpus 1.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any

from amp_ray.models.tiny import create_tiny_model
from amp_ray.pipeline import run_job
from amp_ray.runtime import RaySession
from amp_ray.spec import validate_spec
from amp_ray.spec.blocks import ResourcesSpec, TinyLlavaSpec, WorldSpec
from amp_ray.storage import RunDir
from amp_ray.world import World

SPLITS = {"sft": 0, "eval_iid": 0, "eval_bias_probe": 0, "eval_control": 0}


def tiny_model(directory: str) -> str:
    world = World(WorldSpec(splits={**SPLITS, "preference": 200}))
    items = [item for index in range(world.num_images) for item in world.items(index)]
    texts = [t[k] for item in items for t in item["rounds"] for k in ("question", "answer")]
    spec = TinyLlavaSpec(vision_hidden=64, text_hidden=128, text_layers=2, mlp=256)
    create_tiny_model(directory, spec, texts, image_size=32, seed=0)
    return directory


def stage_spec(run_dir: str, model_dir: str, items: int, engine: str, args: Any) -> dict:
    cpus = max(0.5, (os.cpu_count() or 2) - 1) if not args.gpus else 1
    return {
        "name": "bench-engines",
        "stages": ["data", "generate"],
        "storage": {"run_dir": run_dir},
        "data": {"world": {"splits": {**SPLITS, "preference": items}}},
        "models": {"tiny": {"path": model_dir, "dtype": "float32"}},
        "generation": {
            "methods": ["meg"],
            "meg": {"experts": ["tiny"]},
            "sampling": {
                "max_new_tokens": args.max_new_tokens,
                "do_sample": False,
                "num_beams": 1,
                "repetition_penalty": 1.0,
            },
            "actors": {"num_cpus": cpus, "num_gpus": args.gpus, "batch_size": 16},
            "engine": engine,
            "vllm": {"python": args.vllm_python, "gpu_memory_utilization": args.memory},
        },
    }


def run_stage(run_dir: str, model_dir: str, items: int, engine: str, args: Any) -> tuple:
    """(seconds of the generate stage, {candidate key: answers})."""
    spec = validate_spec(stage_spec(run_dir, model_dir, items, engine, args))
    generate = run_job(spec, echo=lambda _: None)[-1]
    table = RunDir.open(run_dir).dataset("generate", "candidates").read_table()
    answers = {
        (row["item_id"], c["candidate_id"]): c["answers"]
        for row in table.to_pylist()
        for c in row["candidates"]
    }
    return generate.seconds, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs=2, default=[64, 640])
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--vllm-python", default=os.path.abspath(".venv-vllm/bin/python"))
    parser.add_argument("--gpus", type=float, default=0, help="per actor (GPU nodes)")
    parser.add_argument("--memory", type=float, default=0.05, help="vllm gpu_memory_utilization")
    args = parser.parse_args()
    small, large = args.items
    rows: dict[str, dict[str, Any]] = {}
    with RaySession(ResourcesSpec()) as session, tempfile.TemporaryDirectory() as tmp:
        session.ensure()
        model_dir = tiny_model(f"{tmp}/model")
        for engine in ("hf", "vllm"):
            # untimed: the first run of an engine pays for imports and vLLM's compile caches
            run_stage(f"{tmp}/{engine}-warm", model_dir, 8, engine, args)
            t_small, a_small = run_stage(f"{tmp}/{engine}-s", model_dir, small, engine, args)
            t_large, a_large = run_stage(f"{tmp}/{engine}-l", model_dir, large, engine, args)
            extra = t_large - t_small
            rows[engine] = {
                "seconds": (t_small, t_large),
                "rate": (len(a_small) / t_small, len(a_large) / t_large),
                "marginal": (len(a_large) - len(a_small)) / extra if extra > 0 else float("nan"),
                "answers": a_large,
            }
    same = sum(rows["vllm"]["answers"].get(k) == v for k, v in rows["hf"]["answers"].items())
    print(
        f"cpus: {os.cpu_count()}  gpus per actor: {args.gpus}  items: {small}, {large}  "
        f"max_new_tokens: {args.max_new_tokens}  greedy  candidates: one per item"
    )
    print(
        f"{'engine':<8} {'s @' + str(small):>8} {'s @' + str(large):>8} "
        f"{'cand/s @' + str(small):>12} {'cand/s @' + str(large):>12} {'marginal cand/s':>16}"
    )
    for engine, row in rows.items():
        print(
            f"{engine:<8} {row['seconds'][0]:8.1f} {row['seconds'][1]:8.1f} "
            f"{row['rate'][0]:12.2f} {row['rate'][1]:12.2f} {row['marginal']:16.2f}"
        )
    hf, vllm = rows["hf"], rows["vllm"]
    print(
        f"vllm / hf: {vllm['rate'][1] / hf['rate'][1]:.2f}x at {large} items, "
        f"{vllm['marginal'] / hf['marginal']:.2f}x marginal; "
        f"identical candidates {same}/{len(hf['answers'])}"
    )
    print(json.dumps({e: {k: v for k, v in r.items() if k != "answers"} for e, r in rows.items()}))


if __name__ == "__main__":
    main()
