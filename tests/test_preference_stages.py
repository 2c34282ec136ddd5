"""generate → rank → reference on a tiny world with all three generators, and a generation run
killed part-way that finishes on re-run with every item exactly once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_world_spec

from amp_ray.pipeline import run_job
from amp_ray.spec import validate_spec
from amp_ray.storage import RunDir

pytestmark = pytest.mark.usefixtures("ray_session")
TINY = {"vision_hidden": 32, "text_hidden": 64, "text_layers": 1, "mlp": 128}


def preference_spec(run_dir: Path, stages: list[str]) -> dict:
    raw = tiny_world_spec(str(run_dir))
    raw["data"]["world"]["splits"] = {
        "sft": 120,
        "preference": 16,
        "eval_iid": 2,
        "eval_bias_probe": 2,
        "eval_control": 2,
    }
    raw["stages"] = stages
    raw["models"] = {"small": {"tiny": TINY}, "large": {"tiny": {**TINY, "text_hidden": 96}}}
    raw["sft"] = {
        "runs": {
            "expert_s": {"init": "small", "steps": 4},
            "expert_l": {"init": "large", "steps": 4},
        },
        "micro_batch_size": 8,
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5},
        "encode_actors": {"num_actors": 1, "num_cpus": 0.5, "batch_size": 64},
        "eval": {"max_new_tokens": 4, "items_per_split": 2, "actors": {"num_cpus": 0.25}},
    }
    raw["generation"] = {
        "methods": ["meg", "ig", "bdhs"],
        "meg": {"experts": ["expert_l", "expert_s"]},
        "ig": {"checkpoints": ["expert_s", "small"]},  # 100% of the data, and untuned
        "bdhs": {"model": "expert_s", "rho_th": [0.5, 0.99], "max_tries": 2},
        "sampling": {
            "max_new_tokens": 10,
            "do_sample": True,
            "temperature": 1.5,
            "num_beams": 1,
            "num_samples": 2,
        },
        "actors": {"num_actors": 1, "num_cpus": 0.15, "batch_size": 4},
    }
    raw["ranking"] = {"checker": "ground_truth", "num_levels": 4, "actors": {"num_cpus": 0.5}}
    raw["training"] = {"policy": "expert_s", "num_levels": 4}
    raw["reference"] = {"actors": {"num_cpus": 0.5, "batch_size": 4}}
    return raw


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with the world's items and three tiny SFT models (a few steps each)."""
    run_dir = tmp_path_factory.mktemp("preference") / "run"
    run_job(validate_spec(preference_spec(run_dir, ["data", "sft"])), echo=lambda _: None)
    return run_dir


def test_all_three_generators_make_a_k4_dataset_with_reference_logprobs(
    trained_run: Path,
) -> None:
    lines: list[str] = []
    spec = validate_spec(preference_spec(trained_run, ["generate", "rank", "reference"]))
    run_job(spec, echo=lines.append)
    run = RunDir.open(str(trained_run))
    candidates = run.dataset("generate", "candidates").read_table().to_pylist()
    assert len(candidates) == 16
    ranks = {
        (c["generator"], c["source"], c["initial_rank"])
        for row in candidates
        for c in row["candidates"]
    }
    assert ranks == {
        ("meg", "expert_l", 1),
        ("meg", "expert_s", 2),
        ("ig", "expert_s", 3),
        ("ig", "small", 4),
        ("bdhs", "expert_s@0.5", 5),
        ("bdhs", "expert_s@0.99", 6),
    }
    preferences = run.dataset("rank", "preferences").read_table().to_pylist()
    dropped = run.dataset("rank", "quarantine").read_table().to_pylist()
    assert len(preferences) + len(dropped) == 16 and preferences
    for row in preferences:
        levels = row["levels"]
        assert len(levels) == 4 and levels[0]["generator"] == "reference"
        assert levels[0]["answers"] == [turn["answer"] for turn in row["rounds"]]
        keys = [(level["accuracy"], level["score"]) for level in levels[1:]]
        assert keys == sorted(keys, reverse=True) and len(set(keys)) == 3
        assert len(row["candidates"]) == 1 + len(candidates[0]["candidates"])
    assert all("distinct levels" in row["reason"] for row in dropped)
    scored = run.dataset("reference", "preferences").read_table().to_pylist()
    assert {row["item_id"] for row in scored} == {row["item_id"] for row in preferences}
    for row in scored:
        assert row["ref_model"] == "expert_s" and len(row["ref_logps"]) == 4
        # one log-prob per round of every level
        assert all(len(level) == len(row["rounds"]) for level in row["ref_logps"])
        assert all(value < 0 for level in row["ref_logps"] for value in level)
    assert any(line.startswith("    items with 4 distinct levels") for line in lines)


def test_the_policy_trains_on_them_and_is_checked_before_and_after(trained_run: Path) -> None:
    raw = preference_spec(trained_run, ["generate", "rank", "reference", "train"])
    raw["training"].update(
        max_steps=2,
        micro_batch_size=2,
        gradient_accumulation_steps=1,
        log_every=1,
        checkpoint_every=2,
        penalty={"weight": 0.1},
        scaling={"num_workers": 1, "cpus_per_worker": 0.5},
        encode_actors={"num_actors": 1, "num_cpus": 0.5, "batch_size": 8},
        eval={"max_new_tokens": 4, "items_per_split": 2, "actors": {"num_cpus": 0.25}},
        compare={"arms": {"control": {"loss": "sft"}}, "control": "control", "equal_time": False},
    )
    lines: list[str] = []
    run_job(validate_spec(raw), echo=lines.append)
    run = RunDir.open(str(trained_run))
    runs = run.dataset("train", "runs").read_table().to_pylist()
    assert [(r["model"], r["arm"], r["steps"]) for r in runs] == [
        ("aligned", "aligned", 2),
        ("control-seed0", "control", 2),
    ]
    metrics = run.dataset("train", "metrics").read_table().to_pylist()
    checked = {(r["model"], r["benchmark"]) for r in metrics}
    for model in ("expert_s", "aligned", "control-seed0"):
        assert {(model, "chair"), (model, "bias"), (model, "pope")} <= checked
    log = run.dataset("train", "log").read_table().to_pylist()
    assert {r["metric"] for r in log if r["model"] == "control-seed0"} >= {"nll", "loss"}
    assert "accuracy/0-3" in {r["metric"] for r in log if r["model"] == "aligned"}
    shown = [line.strip() for line in lines]
    # each run shows its progress while it runs, and leaves TensorBoard files in the run dir
    assert "[train] aligned: step 2/2 (100%)" in {line.split(",")[0] for line in shown}
    for model in ("aligned", "control-seed0"):
        board = trained_run / "train" / "tensorboard" / model
        assert any(path.name.startswith("events.out.tfevents") for path in board.iterdir())
    table = shown.index("world check before and after training (mean ± sd over seeds):")
    assert shown[table + 2].startswith("expert_s (before)")
    assert any(line.startswith("difference to control, paired by seed") for line in shown)


def test_a_killed_generation_resumes_with_every_item_exactly_once(
    trained_run: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    shutil.rmtree(run_dir / "generate", ignore_errors=True)
    raw = preference_spec(run_dir, ["generate"])
    raw["generation"]["methods"] = ["meg"]
    raw["generation"]["actors"]["batch_size"] = 1
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    journal = run_dir / "generate" / "_journal" / "entries"
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "amp-ray"), "run", str(spec_file)],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300  # Ray, two actor pools and their models start first
        while len(list(journal.glob("*.json"))) < 2:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no journal entries appeared"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (run_dir / "generate" / "candidates" / "_manifest.json").exists()
    before = [json.loads(path.read_text()) for path in journal.glob("*.json")]
    finished = {key for entry in before for key in entry["keys"]}
    assert 2 <= len(finished) < 16

    run_job(validate_spec(raw), echo=lambda _: None)
    run = RunDir.open(str(run_dir))
    ids = run.dataset("generate", "candidates").read_table(["item_id"]).column("item_id")
    quarantined = run.dataset("generate", "quarantine").read_table(["item_id"])
    everything = ids.to_pylist() + quarantined.column("item_id").to_pylist()
    assert len(everything) == len(set(everything)) == 16  # none twice, none lost
    committed = {entry.path for entry in run.dataset("generate", "candidates").manifest.files}
    reused = {f["path"] for entry in before for f in entry["files"].get("candidates", [])}
    assert reused and reused <= committed  # the killed run's parts were kept, not redone
    assert not (run_dir / "generate" / "_journal").exists()
