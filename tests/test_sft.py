"""SFT on Ray Train + DeepSpeed: two workers, the loss falls, a checkpoint resumes, HF export."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from amp_ray.data.encode import EncodeSettings, ItemEncoder
from amp_ray.models.decoding import generate
from amp_ray.models.loading import load_model, load_processor
from amp_ray.models.registry import ActorModel
from amp_ray.models.store import commit_model, local_model_path, new_model_attempt
from amp_ray.spec.alignment import SamplingSpec
from amp_ray.spec.blocks import OptimizerSpec, ScalingSpec, ScheduleSpec
from amp_ray.storage import open_location
from amp_ray.training.inputs import BatchLayout, PlannedInputs
from amp_ray.training.launch import fit
from amp_ray.training.optim import EngineConfig
from amp_ray.training.sft import SftLoopConfig, sft_loop

pytestmark = pytest.mark.usefixtures("ray_session")


def loop_config(tiny_dir: str, output: Path, steps: int, zero_stage: int = 2) -> SftLoopConfig:
    return SftLoopConfig(
        init_path=tiny_dir,
        output_uri=str(output),
        attempt=new_model_attempt(),
        storage=None,
        engine=EngineConfig(
            steps=steps,
            micro_batch_size=8,
            gradient_accumulation_steps=2,
            optimizer=OptimizerSpec(lr=1e-2).model_dump(),
            schedule=ScheduleSpec(name="constant", warmup_steps=0).model_dump(),
            max_grad_norm=1.0,
            zero_stage=zero_stage,
            precision="fp32",
            checkpoint_every=4,
            log_every=2,
            seed=0,
            threads=1,
        ),
    )


@pytest.fixture(scope="module")
def encoded(tiny_dir: str, world_items: list[dict], tmp_path_factory: pytest.TempPathFactory):
    """60 world items encoded and committed as sft/encoded-* is (one row per row group)."""
    from amp_ray.storage.dataset import Dataset, DatasetWriter
    from amp_ray.storage.quarantine import split_batch
    from amp_ray.storage.schemas import ENCODED_ITEMS, ITEMS

    table = ItemEncoder(EncodeSettings(tiny_dir, max_length=512))(
        pa.Table.from_pylist(world_items[:60], schema=ITEMS)
    )
    location = open_location(str(tmp_path_factory.mktemp("encoded")))
    writer = DatasetWriter(location, ENCODED_ITEMS, "encoded_items")
    writer.write_table(split_batch(table, "sft")[0])
    writer.commit()
    return Dataset(location)


def planned(encoded, tiny_dir: str, steps: int) -> PlannedInputs:
    layout = BatchLayout(micro_batch_size=8, accumulation=2, num_workers=2, mode="buckets")
    return PlannedInputs.plan(encoded, layout, ActorModel("tiny", tiny_dir), seed=0, steps=steps)


def test_two_worker_deepspeed_sft_learns_and_resumes_from_its_checkpoint(
    tiny_dir: str, encoded, tmp_path: Path
) -> None:
    storage = open_location(str(tmp_path / "ray"))
    scaling = ScalingSpec(num_workers=2, cpus_per_worker=0.5)
    first = loop_config(tiny_dir, tmp_path / "model", steps=8)
    inputs = planned(encoded, tiny_dir, 8)
    result = fit(sft_loop, first, scaling, "sft-test", storage, inputs)
    history = result.return_value["history"]
    assert [m["step"] for m in history] == [2, 4, 6, 8]
    later = (history[-1]["loss"] + history[-2]["loss"]) / 2
    assert later < history[0]["loss"] - 0.3  # it learns
    assert result.return_value["start_step"] == 0

    again = loop_config(tiny_dir, tmp_path / "model", steps=12)  # same run name and storage
    inputs = planned(encoded, tiny_dir, 12)
    # the resumed workers' plan starts at the checkpoint: no rows of steps 1-8 are read again
    assert sorted(inputs.dataset_for(storage.join("sft-test"))().unique("step")) == [8, 9, 10, 11]
    assert len(inputs.dataset_for(storage.join("no-such-run"))().unique("step")) == 12
    resumed = fit(sft_loop, again, scaling, "sft-test", storage, inputs)
    assert resumed.return_value["start_step"] == 8
    assert [m["step"] for m in resumed.return_value["history"]] == [10, 12]
    assert resumed.return_value["history"][0]["loss"] < history[0]["loss"]

    location = open_location(str(tmp_path / "model"))
    commit_model(location, again.attempt)
    path = local_model_path(str(tmp_path / "model"))
    model, processor = load_model(path), load_processor(path)
    from PIL import Image

    from amp_ray.models.conversation import collate, encode_conversation

    prompt = encode_conversation(
        processor, Image.new("RGB", (32, 32)), ["describe the image ."], []
    )
    batch = collate([prompt], processor.tokenizer.pad_token_id, "left")
    (answer,) = generate(
        model, processor, batch, SamplingSpec(max_new_tokens=4, do_sample=False, num_beams=1)
    )
    assert answer.num_tokens >= 1


def test_zero3_exports_a_complete_model(tiny_dir: str, encoded, tmp_path: Path) -> None:
    config = loop_config(tiny_dir, tmp_path / "model", steps=2, zero_stage=3)
    scaling = ScalingSpec(num_workers=2, cpus_per_worker=0.5)
    storage = open_location(str(tmp_path / "ray"))
    fit(sft_loop, config, scaling, "sft-zero3", storage, planned(encoded, tiny_dir, 2))
    commit_model(open_location(str(tmp_path / "model")), config.attempt)
    trained = load_model(local_model_path(str(tmp_path / "model")))
    initial = load_model(tiny_dir)
    changed = [
        name
        for (name, p), (_, q) in zip(
            trained.named_parameters(), initial.named_parameters(), strict=True
        )
        if p.shape == q.shape and not p.equal(q)
    ]
    assert len(changed) > 10 and all(p.numel() for p in trained.parameters())


def test_runs_from_hub_ids_share_an_encoding_by_id_without_a_download(tmp_path: Path) -> None:
    from amp_ray.spec import validate_spec
    from amp_ray.stages.sft import SftStage
    from amp_ray.storage import RunDir

    spec = validate_spec(
        {
            "name": "hub",
            "stages": ["sft"],
            "storage": {"run_dir": str(tmp_path)},
            "models": {
                "a": {"path": "llava-hf/llava-1.5-7b-hf"},
                "b": {"path": "llava-hf/llava-1.5-13b-hf"},
            },
            "sft": {"runs": {"a1": {"init": "a"}, "a2": {"init": "a1"}, "b1": {"init": "b"}}},
        }
    )
    stage = SftStage(spec, RunDir.open(str(tmp_path)))
    keys = {name: stage._processor_key(name) for name in ("a1", "a2", "b1")}
    assert keys["a1"] == keys["a2"] != keys["b1"]
