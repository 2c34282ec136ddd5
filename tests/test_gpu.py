"""The GPU paths, on a machine with CUDA (pytest -m gpu; scripts/gpu_check.sh runs them).

- Ray actors and tasks given a GPU compute on CUDA, the others on the CPU.
- A generation actor pool with num_gpus=1 answers on the GPU.
- bf16 DeepSpeed ZeRO-2 MDPO of a tiny LLaVA for 20 steps on one GPU: the loss falls.
- QLoRA (4-bit NF4 base, paged 8-bit AdamW) in bf16 on one GPU: starts at its base, learns.
- bf16 ZeRO-3 with parameters and optimizer offloaded to the CPU on one GPU.
- Two NCCL workers, one GPU each, when the machine has two GPUs.

Without CUDA every test here is skipped; the simulated-cluster tests cover placement on logical
GPUs (tests/test_simulated_cluster.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from test_preference_training import amp_json_from_world, training_spec

from amp_ray.pipeline import run_job
from amp_ray.spec import validate_spec
from amp_ray.storage import RunDir

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("ray_session"),
]


@pytest.fixture(scope="module")
def preference_json(tmp_path_factory: pytest.TempPathFactory, world_items: list[dict]) -> Path:
    return amp_json_from_world(tmp_path_factory.mktemp("amp-gpu"), world_items)


def test_work_given_a_gpu_computes_on_cuda() -> None:
    import ray

    from amp_ray.cluster.placement import compute_device

    def device() -> str:
        return compute_device()

    assert ray.get(ray.remote(num_gpus=1)(device).remote()) == "cuda"
    assert ray.get(ray.remote(num_gpus=0)(device).remote()) == "cpu"


def test_a_generation_pool_with_a_gpu_answers_on_it(tiny_dir: str, world_items: list[dict]) -> None:
    import ray.data

    from amp_ray import runtime
    from amp_ray.cluster import placement
    from amp_ray.generation.candidates import start_candidates
    from amp_ray.generation.pools import model_candidates
    from amp_ray.models.registry import ActorModel
    from amp_ray.spec.alignment import GenerationSpec
    from amp_ray.storage.schemas import ITEM_FIELDS

    table = pa.Table.from_pylist([{k: item[k] for k in ITEM_FIELDS} for item in world_items[:16]])
    generation = GenerationSpec(
        actors={"num_actors": 1, "num_cpus": 1, "num_gpus": 1, "batch_size": 8},
        sampling={"max_new_tokens": 8, "do_sample": True, "num_samples": 2, "num_beams": 1},
    )
    model = ActorModel("tiny", tiny_dir, num_cpus=generation.actors.num_cpus)
    fn, kwargs = model_candidates(generation, "meg", model, 1, 0)
    runtime.placement_log = placement.log_name("gpu-test", "generate")
    log = placement.open_log(runtime.placement_log)
    try:
        data = runtime.light_map(ray.data.from_arrow(table), start_candidates)
        out = runtime.map_with_actor_pool(data, fn, generation.actors, kwargs).take_all()
        placed = placement.take(log)
    finally:
        runtime.placement_log = None
        placement.stop(log)
    assert len(out) == 16 and all(len(row["candidates"]) == 2 for row in out)
    assert [p["device"] for p in placed] == ["cuda"] and placed[0]["gpu_ids"]


def test_bf16_zero2_mdpo_on_one_gpu_lowers_the_loss(
    tmp_path: Path, preference_json: Path, tiny_dir: str
) -> None:
    gpu = {"num_actors": 1, "num_cpus": 1, "num_gpus": 1, "batch_size": 16}
    raw = training_spec(
        tmp_path / "run",
        preference_json,
        tiny_dir,
        max_steps=20,
        precision="bf16",
        deepspeed={"zero_stage": 2},
        scaling={"num_workers": 1, "gpus_per_worker": 1, "cpus_per_worker": 1},
    )
    raw["reference"]["actors"] = gpu
    run_job(validate_spec(raw), echo=lambda _: None)
    run = RunDir.open(str(tmp_path / "run"))
    log = run.dataset("train", "log").read_table().to_pylist()
    losses = [r["value"] for r in sorted(log, key=lambda r: r["step"]) if r["metric"] == "loss"]
    assert len(losses) == 20 and sum(losses[-5:]) / 5 < losses[0]
    record = json.loads((tmp_path / "run" / "train" / "_stage.json").read_text())
    devices = {p["role"]: p["device"] for p in record["report"]["placements"] if p["gpu_ids"]}
    assert devices == {"training.scaling:aligned": "cuda"}, record["report"]["placements"]


def test_bf16_qlora_with_paged_8bit_adamw_on_one_gpu_starts_at_its_base_and_learns(
    tmp_path: Path, preference_json: Path, tiny_dir: str
) -> None:
    """bitsandbytes' CUDA kernels: the 4-bit base, paged 8-bit AdamW; checkpointed shared prefix."""
    raw = training_spec(
        tmp_path / "run", preference_json, tiny_dir, max_steps=20, precision="bf16",
        reference="in_loop", gradient_checkpointing=True, forward="shared_prefix",
        lora={"r": 8, "alpha": 16, "dropout": 0.0, "quantize_base": "nf4"},
        optimizer={"name": "paged_adamw_8bit", "lr": 1e-2},
        scaling={"num_workers": 1, "gpus_per_worker": 1, "cpus_per_worker": 1},
    )  # fmt: skip
    raw["stages"] = ["data", "train"]
    run_job(validate_spec(raw), echo=lambda _: None)
    log = RunDir.open(str(tmp_path / "run")).dataset("train", "log").read_table().to_pylist()
    losses = [r["value"] for r in sorted(log, key=lambda r: r["step"]) if r["metric"] == "loss"]
    assert losses[0] == pytest.approx(0.693147, abs=1e-4)  # the reference is its own base
    assert len(losses) == 20 and sum(losses[-5:]) / 5 < losses[0]


def test_bf16_zero3_with_parameters_and_optimizer_offloaded_trains_on_one_gpu(
    tmp_path: Path, preference_json: Path, tiny_dir: str
) -> None:
    raw = training_spec(
        tmp_path / "run", preference_json, tiny_dir, max_steps=6, precision="bf16",
        deepspeed={"zero_stage": 3, "offload_params": True, "offload_optimizer": True},
        scaling={"num_workers": 1, "gpus_per_worker": 1, "cpus_per_worker": 1},
    )  # fmt: skip
    raw["reference"]["actors"] = {"num_actors": 1, "num_cpus": 1, "num_gpus": 1, "batch_size": 16}
    run_job(validate_spec(raw), echo=lambda _: None)
    log = RunDir.open(str(tmp_path / "run")).dataset("train", "log").read_table().to_pylist()
    assert sorted({r["step"] for r in log}) == [1, 2, 3, 4, 5, 6]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_nccl_workers_train_together(
    tmp_path: Path, preference_json: Path, tiny_dir: str
) -> None:
    from amp_ray.spec.blocks import ScalingSpec
    from amp_ray.training.launch import cuda_on

    scaling = {"num_workers": 2, "gpus_per_worker": 1, "cpus_per_worker": 1}
    assert cuda_on(ScalingSpec(**scaling))  # so the run's backend is NCCL
    raw = training_spec(tmp_path / "run", preference_json, tiny_dir, scaling=scaling)
    run_job(validate_spec(raw), echo=lambda _: None)
    log = RunDir.open(str(tmp_path / "run")).dataset("train", "log").read_table().to_pylist()
    assert sorted({r["step"] for r in log}) == [1, 2, 3, 4]
