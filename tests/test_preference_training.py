"""Preference training on Ray Train + DeepSpeed: the train stage end to end, its checks on the
data, invariance to the worker layout, and resume after a worker is killed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from amp_ray.errors import SpecError
from amp_ray.pipeline import run_job
from amp_ray.spec import validate_spec
from amp_ray.storage import RunDir
from amp_ray.storage.quarantine import QUARANTINE_REASON, ROW_JSON

pytestmark = pytest.mark.usefixtures("ray_session")


def corrupted(answer: str, k: int) -> str:
    """Level k of an answer: the reference (k=0), then more and more of its words replaced by
    "square"; a short answer gets the rest appended, so that the K levels stay distinct."""
    words = answer.split()
    replaced = [i for i, w in enumerate(words) if i < 2 * k and w.isalpha()]
    words = ["square" if i in replaced else w for i, w in enumerate(words)]
    return " ".join(words + ["square"] * (2 * k - len(replaced)))


def amp_json_from_world(folder: Path, world_items: list[dict], num_levels: int = 4) -> Path:
    """A K-level AMP JSON preference set over the world's caption and dialogue items."""
    (folder / "images").mkdir(parents=True)
    records = []
    for item in world_items:
        if item["task"] not in ("caption", "dialogue"):
            continue
        image = f"images/{item['item_id'].replace('/', '-')}.png"
        (folder / image).write_bytes(item["image"])
        questions = [turn["question"] for turn in item["rounds"]]
        record: dict = {"id": item["item_id"], "image": image}
        for k in range(num_levels):
            turns = []
            for t, turn in enumerate(item["rounds"]):
                prompt = f"<image>\n{questions[t]}" if t == 0 else questions[t]
                turns += [
                    {"from": "human", "value": prompt},
                    {"from": "gpt", "value": corrupted(turn["answer"], k)},
                ]
            record[f"output_{k + 1}"] = turns
        records.append(record)
    path = folder / "amp.json"
    path.write_text(json.dumps(records))
    return path


def training_spec(run_dir: Path, data: Path, tiny_dir: str, **training: object) -> dict:
    settings = {
        "policy": "policy",
        "num_levels": 4,
        "max_steps": 4,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "optimizer": {"lr": 1e-3},
        "schedule": {"name": "constant", "warmup_steps": 0},
        "max_grad_norm": 1.0,
        "log_every": 1,
        "checkpoint_every": 2,
        "penalty": {"weight": 0.1},
        "deepspeed": {"zero_stage": 2},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
        "encode_actors": {"num_actors": 1, "num_cpus": 0.5, "batch_size": 32},
    }
    settings.update(training)
    return {
        "name": "train-test",
        "stages": ["data", "reference", "train"],
        "storage": {"run_dir": str(run_dir)},
        "data": {"source": "amp_json", "path": str(data)},
        "models": {"policy": {"path": tiny_dir}},
        "reference": {"actors": {"num_actors": 1, "num_cpus": 0.5, "batch_size": 16}},
        "training": settings,
    }


@pytest.fixture(scope="module")
def preference_json(tmp_path_factory: pytest.TempPathFactory, world_items: list[dict]) -> Path:
    return amp_json_from_world(tmp_path_factory.mktemp("amp"), world_items)


def test_the_train_stage_aligns_on_two_workers_and_exports_hf(
    tmp_path: Path, preference_json: Path, tiny_dir: str
) -> None:
    from transformers import AutoModelForImageTextToText

    lines: list[str] = []
    spec = validate_spec(training_spec(tmp_path / "run", preference_json, tiny_dir))
    run_job(spec, echo=lines.append)
    train_line = next(line for line in lines if line.startswith("[train]"))
    assert train_line.startswith("[train] rows in ")
    run = RunDir.open(str(tmp_path / "run"))
    log = run.dataset("train", "log").read_table().to_pylist()
    steps = sorted({row["step"] for row in log})
    assert steps == [1, 2, 3, 4]
    metrics = {row["metric"] for row in log}
    pairs = {f"accuracy/{i}-{j}" for i in range(4) for j in range(i + 1, 4)}
    assert pairs | {"loss", "penalty", "grad_norm", "items_per_s"} <= metrics
    first_loss = next(r["value"] for r in log if r["step"] == 1 and r["metric"] == "loss")
    # at step 1 the policy is the reference: every pair term is log 2, the penalty 0
    assert first_loss == pytest.approx(math.log(2), abs=1e-4)
    model_dir = tmp_path / "run" / "train" / "models" / "aligned"
    committed = json.loads((model_dir / "_model.json").read_text())
    exported = model_dir / committed["attempt"]
    model = AutoModelForImageTextToText.from_pretrained(exported)
    original = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    trained = dict(model.named_parameters())
    changed = [n for n, p in original.named_parameters() if not torch.equal(p, trained[n])]
    assert changed and not any("vision_tower" in name for name in changed)


def test_qlora_trains_adapters_on_a_4bit_base_against_that_base_and_exports_merged(
    tmp_path: Path, preference_json: Path, tiny_dir: str
) -> None:
    """QLoRA as AMP trained: a 4-bit NF4 base, LoRA, 8-bit AdamW, gradient checkpointing with
    the shared-prefix forward, the reference being the quantized base under the adapters."""
    from transformers import AutoModelForImageTextToText

    spec = training_spec(
        tmp_path / "run", preference_json, tiny_dir, max_steps=3, checkpoint_every=3,
        reference="in_loop", forward="shared_prefix", gradient_checkpointing=True,
        lora={"r": 4, "alpha": 8, "dropout": 0.0, "quantize_base": "nf4"},
        optimizer={"name": "adamw_8bit", "lr": 1e-2},
        scaling={"num_workers": 1, "cpus_per_worker": 1},
    )  # fmt: skip
    spec["stages"] = ["data", "train"]
    run_job(validate_spec(spec), echo=lambda _: None)
    log = RunDir.open(str(tmp_path / "run")).dataset("train", "log").read_table().to_pylist()
    losses = [r["value"] for r in sorted(log, key=lambda r: r["step"]) if r["metric"] == "loss"]
    # the reference is the policy's own 4-bit base: at step 1 every pair term is exactly log 2
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert losses[-1] != pytest.approx(losses[0], abs=1e-4)
    model_dir = tmp_path / "run" / "train" / "models" / "aligned"
    exported = model_dir / json.loads((model_dir / "_model.json").read_text())["attempt"]
    assert "quantization_config" not in json.loads((exported / "config.json").read_text())
    model = AutoModelForImageTextToText.from_pretrained(exported)
    original = dict(AutoModelForImageTextToText.from_pretrained(tiny_dir).named_parameters())
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, original[n])]
    assert changed and all("language_model" in name for name in changed)


def test_another_family_runs_the_reference_and_train_stages(
    tmp_path: Path, preference_json: Path
) -> None:
    """The stages run any family the adapters know (tests/test_families.py checks the model
    layer of all six against HF): here Qwen2-VL, the most unlike LLaVA (packed patches, M-RoPE,
    its own chat template), ~1 min."""
    from vlm_families import build_tiny

    build_tiny("qwen2_vl", tmp_path / "model", seed=0)
    spec = training_spec(
        tmp_path / "run", preference_json, str(tmp_path / "model"), max_steps=2,
        checkpoint_every=2, scaling={"num_workers": 1, "cpus_per_worker": 1},
    )  # fmt: skip
    run_job(validate_spec(spec), echo=lambda _: None)
    run = RunDir.open(str(tmp_path / "run"))
    log = run.dataset("train", "log").read_table().to_pylist()
    first_loss = next(r["value"] for r in log if r["step"] == 1 and r["metric"] == "loss")
    # the reference stage's log-probs and the training forward agree: the policy starts there
    assert first_loss == pytest.approx(math.log(2), abs=1e-4)
    model_dir = tmp_path / "run" / "train" / "models" / "aligned"
    assert json.loads((model_dir / "_model.json").read_text())["attempt"]


# --- what training refuses ---------------------------------------------------------------------


def preference_row(item: dict, levels: int, ref_logps: list | None) -> dict:
    answers = [[corrupted(turn["answer"], k) for turn in item["rounds"]] for k in range(levels)]
    return {
        **item,
        "levels": [{"answers": a} for a in answers],
        "ref_logps": ref_logps,
    }


def test_the_level_encoder_sets_aside_what_training_must_not_see(
    tiny_dir: str, world_items: list[dict]
) -> None:
    import pyarrow as pa

    from amp_ray.data.encode import EncodeSettings
    from amp_ray.data.level_encoding import LevelEncoder, level_items
    from amp_ray.training.inputs import image_inputs_of

    caption = next(item for item in world_items if item["task"] == "caption")
    rows = [
        preference_row(caption, 4, [[-1.0], [-2.0], [-3.0], [-4.0]]),
        preference_row(caption, 1, [[-1.0]]),
        preference_row(caption, 4, [[-1.0], [-2.0], [-3.0], [float("nan")]]),
        preference_row(caption, 4, None),
        preference_row(caption, 3, [[-1.0], [-2.0], [-3.0]]),
        preference_row(caption, 4, [[-1.0], [-2.0]]),
        # a value count that is not the item's round count
        preference_row(caption, 4, [[-1.0], [-2.0], [-3.0], [-4.0, -1.0]]),
    ]
    for n, row in enumerate(rows):
        row["item_id"] = f"row{n}"
    encoder = LevelEncoder(EncodeSettings(tiny_dir, 512), 4, [0, 3], True)
    out = encoder(pa.Table.from_pylist(rows)).to_pylist()
    reasons = [row[QUARANTINE_REASON] for row in out]
    assert reasons[0] is None
    assert reasons[1] == "only 1 level(s); preference training needs at least 2"
    assert reasons[2] == "a reference log-prob is missing or not finite"
    assert reasons[3].startswith("no ref_logps: run the reference stage")
    assert reasons[4] == "3 levels where training.num_levels is 4"
    assert reasons[5] == "2 ref_logps for 4 levels"
    assert reasons[6] == "ref_logps need one value per round (1) of every level"
    assert all(row[ROW_JSON] for row in out[1:])
    assert "vision" not in out[0] and out[0]["image"] == caption["image"]
    stored = pa.Table.from_pylist([out[0]]).drop_columns([QUARANTINE_REASON, ROW_JSON])
    [good] = level_items(image_inputs_of(stored, tiny_dir))
    assert good.ref_logps == [[-1.0], [-4.0]] and len(good.levels) == 2
    assert good.answer_ids == [[0], [1]]
    assert good.levels[0].vision["pixel_values"].shape[0] == 1
    too_long = LevelEncoder(EncodeSettings(tiny_dir, 20), 4, [0, 1, 2, 3], True)
    [row] = too_long(pa.Table.from_pylist(rows[:1])).to_pylist()
    assert "exceed training.max_length 20" in row[QUARANTINE_REASON]


def test_answer_ids_mark_the_rounds_two_levels_answer_alike() -> None:
    from amp_ray.data.level_encoding import answer_ids

    row = {
        "levels": [
            {"answers": ["a circle.", "yes.", "two."]},
            {"answers": ["a circle.", "no.", "two."]},  # alike in rounds 0 and 2
            {"answers": ["a square.", "no.", "one."]},  # round 1 as level 1's
        ]
    }
    assert answer_ids(row, [0, 1, 2]) == [[0, 0, 0], [0, 1, 0], [2, 1, 2]]
    assert answer_ids(row, [0, 2]) == [[0, 0, 0], [1, 1, 1]]


def test_a_spec_whose_k_differs_from_the_data_fails_before_training(
    tmp_path: Path, preference_json: Path, tiny_dir: str
) -> None:
    spec = training_spec(tmp_path / "run", preference_json, tiny_dir, num_levels=3)
    with pytest.raises(
        SpecError,
        match=r"training.num_levels is 3 but the items in reference/preferences have 4 levels",
    ):
        run_job(validate_spec(spec), echo=lambda _: None)
    assert not (tmp_path / "run" / "train" / "ray").exists()


# --- invariance and resume ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory: pytest.TempPathFactory, preference_json: Path, tiny_dir: str):
    """A run directory with the preference data imported and scored by the reference."""
    run_dir = tmp_path_factory.mktemp("scored") / "run"
    spec = training_spec(run_dir, preference_json, tiny_dir)
    spec["stages"] = ["data", "reference"]
    run_job(validate_spec(spec), echo=lambda _: None)
    return run_dir


def train_losses(run_dir: Path, preference_json: Path, tiny_dir: str, **training) -> list[float]:
    spec = training_spec(run_dir, preference_json, tiny_dir, max_steps=3, **training)
    spec["stages"] = ["train"]
    run_job(validate_spec(spec), force=True, echo=lambda _: None)
    log = RunDir.open(str(run_dir)).dataset("train", "log").read_table().to_pylist()
    return [row["value"] for row in sorted(log, key=lambda r: r["step"]) if row["metric"] == "loss"]


# ~4.5 min on 2 cores (five training runs): make test-slow (CI leaves it out to fit its hour)
@pytest.mark.slow
def test_losses_do_not_depend_on_workers_zero_stage_or_accumulation(
    scored_run: Path, preference_json: Path, tiny_dir: str
) -> None:
    one = {"num_workers": 1, "cpus_per_worker": 1}
    layouts = {
        "2 workers x 4, ZeRO 2": {},
        "1 worker x 4 x 2 accumulation": {
            "scaling": one,
            "gradient_accumulation_steps": 2,
        },
        "1 worker x 8": {"scaling": one, "micro_batch_size": 8},
        "2 workers x 4, ZeRO 3": {"deepspeed": {"zero_stage": 3}},
        "2 workers x 4, ZeRO 3, parameters and optimizer offloaded": {
            "deepspeed": {"zero_stage": 3, "offload_params": True, "offload_optimizer": True}
        },
    }
    losses = {
        name: train_losses(scored_run, preference_json, tiny_dir, **settings)
        for name, settings in layouts.items()
    }
    baseline = losses["2 workers x 4, ZeRO 2"]
    assert len(baseline) == 3 and baseline[2] != pytest.approx(baseline[0], abs=1e-3)
    for name, values in losses.items():
        # float32 sums in another order (gloo all-reduce, accumulation): 1e-5 relative
        assert values == pytest.approx(baseline, rel=1e-5, abs=1e-6), name


def test_images_that_break_are_set_aside_and_training_goes_on(
    tmp_path: Path, world_items: list[dict], tiny_dir: str
) -> None:
    """Every third image file is truncated after the reference stage read it. The train stage's
    encoding sets those items aside (train/quarantine) and trains on the rest; and where an
    image breaks after encoding, the workers set the item aside at training time, train on the
    rest of each batch and count it."""
    from amp_ray.stages.preference_runs import RunResult, set_aside_table
    from amp_ray.stages.train import TrainStage
    from amp_ray.training.inputs import set_aside_rows
    from amp_ray.training.launch import fit
    from amp_ray.training.preference import preference_loop
    from amp_ray.training.runs import PlannedRun

    data = amp_json_from_world(tmp_path / "amp", world_items)
    one = {"num_workers": 1, "cpus_per_worker": 1}
    spec = training_spec(tmp_path / "run", data, tiny_dir, max_steps=4, scaling=one)
    spec["stages"] = ["data", "reference"]
    run_job(validate_spec(spec), echo=lambda _: None)
    images = sorted((tmp_path / "amp" / "images").iterdir())
    broken = {image.name for image in images[::3]}

    def break_images() -> None:
        for image in images[::3]:
            image.write_bytes(image.read_bytes()[:40])

    # broken before encoding: set aside by the encoder, the stage trains on the rest
    originals = {image: image.read_bytes() for image in images}
    break_images()
    spec["stages"] = ["train"]
    run_job(validate_spec(spec), echo=lambda _: None)
    run = RunDir.open(str(tmp_path / "run"))
    quarantined = run.dataset("train", "quarantine").read_table().to_pylist()
    assert len(quarantined) == len(broken)
    assert all(row["reason"].startswith("image cannot be read") for row in quarantined)
    # a re-run from the same source with the same settings (a resumed job) does not encode
    # again, and the rows its encoding set aside still reach the stage's quarantine
    first = run.dataset("train", "encoded").manifest.attempt
    again = run.writer("train", "quarantine_again", "quarantine")
    stage = TrainStage(validate_spec(spec), run, force=False)
    assert (
        stage.runs.encode(run.dataset("reference", "preferences"), again).manifest.attempt == first
    )
    assert again.commit().num_rows == len(broken)

    # broken after encoding: the workers set the items aside as their batches reach them
    for image, content in originals.items():
        image.write_bytes(content)
    stage = TrainStage(validate_spec(spec), run, force=True)
    encoded = stage.runs.encode(
        run.dataset("reference", "preferences"),
        stage.run_dir.writer("train", "quarantine", "quarantine"),
    )
    assert encoded.manifest.attempt != first  # --force encodes again
    break_images()
    recipe = stage.spec.training
    config = stage.runs.loop_config(
        recipe, PlannedRun("late", "own", 0, 4, "steps"), str(tmp_path / "late"), "a"
    )
    result = fit(
        preference_loop,
        config,
        recipe.scaling,
        "late",
        run.location.join("train", "ray"),
        stage.runs.inputs(encoded, recipe, config.engine),
    )
    set_aside = set_aside_rows(result.checkpoint)
    assert set_aside, "the plan's first 16 items held no broken image"
    table = set_aside_table("train", [RunResult(None, [], set_aside)]).to_pylist()
    for row in table:
        assert row["reason"].startswith("at training time: image cannot be read"), row
        assert Path(json.loads(row["row_json"])["image_uri"]).name in broken
    history = result.return_value["history"]
    assert history[-1]["step"] == 4 and history[-1]["set_aside"] == len(table)


def kill_a_worker_at_a_new_checkpoint(storage: Path, killed: list[int]) -> None:
    """Wait for the second checkpoint under `storage` that was not there at the start, then
    SIGKILL one Ray Train worker process. (The second: a worker reaches it only after the report
    of the first has returned, so the restart has a registered checkpoint to resume from.)"""
    import os
    import signal
    import time

    import psutil

    def checkpoints() -> set[str]:
        return {str(p) for p in storage.rglob("checkpoint_*")} if storage.exists() else set()

    before = checkpoints()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(checkpoints() - before) < 2:
        time.sleep(0.05)
    for process in psutil.process_iter(["cmdline"]):
        if "RayTrainWorker" in " ".join(process.info["cmdline"] or []):
            os.kill(process.pid, signal.SIGKILL)
            killed.append(process.pid)
            return


def final_state(run_dir: Path) -> tuple[list[dict], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    log = RunDir.open(str(run_dir)).dataset("train", "log").read_table().to_pylist()
    model_dir = run_dir / "train" / "models" / "aligned"
    attempt = json.loads((model_dir / "_model.json").read_text())["attempt"]
    return log, load_file(model_dir / attempt / "model.safetensors")


# ~5.5 min on 2 cores: .ci/run runs it after the default suite
@pytest.mark.slow
def test_a_killed_worker_resumes_and_ends_where_an_unbroken_run_ends(
    scored_run: Path, preference_json: Path, tiny_dir: str
) -> None:
    import threading

    # ~0.1 s a step: 60 steps leave the killer seconds to strike after the first checkpoint
    spec = training_spec(scored_run, preference_json, tiny_dir, max_steps=60, checkpoint_every=5)
    spec["stages"] = ["train"]
    run_job(validate_spec(spec), force=True, echo=lambda _: None)
    unbroken_log, unbroken = final_state(scored_run)

    killed: list[int] = []
    storage = scored_run / "train" / "ray"
    killer = threading.Thread(target=kill_a_worker_at_a_new_checkpoint, args=(storage, killed))
    killer.start()
    run_job(validate_spec(spec), force=True, echo=lambda _: None)
    killer.join()
    resumed_log, resumed = final_state(scored_run)
    assert killed, "no Ray Train worker was found to kill"
    starts = {row["value"] for row in resumed_log if row["metric"] == "start_step"}
    assert 5 <= max(starts) < 60  # windows logged after a restart from a checkpoint

    def last(log: list[dict], metric: str) -> float:
        return max((r for r in log if r["metric"] == metric), key=lambda r: r["step"])["value"]

    assert last(resumed_log, "loss") == pytest.approx(last(unbroken_log, "loss"), rel=1e-5)
    assert resumed.keys() == unbroken.keys()
    for name, tensor in unbroken.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
