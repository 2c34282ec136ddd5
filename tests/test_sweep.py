"""The sweep stage: the grid and its trials, what a trial shares with its run, the results and
their summary, and a 2x2 sweep on Ray Tune end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_preference_training import amp_json_from_world, training_spec

from amp_ray.errors import SpecError
from amp_ray.pipeline import run_job
from amp_ray.spec import validate_spec
from amp_ray.storage import RunDir
from amp_ray.storage.location import LinkedLocation, open_location
from amp_ray.sweep.results import best, objective, summarise, summary_lines
from amp_ray.sweep.trials import Trial, shared_cpu_overrides, trials

MINIMAL = {"name": "s", "stages": ["train"], "storage": {"run_dir": "/tmp/x"}}


def test_joined_paths_move_together_and_seeds_multiply_the_grid() -> None:
    spec = validate_spec(
        {
            **MINIMAL,
            "training": {"compare": {"seeds": [3]}},
            "sweep": {
                "parameters": {
                    "training.beta": [0.05, 0.1],
                    "training.loss,training.levels": [["mdpo", [0, 1, 2, 3]], ["dpo", [0, 3]]],
                },
                "num_seeds": 2,
            },
        }
    )
    grid = trials(spec)
    assert len(grid) == 2 * 2 * 2
    assert grid[0] == Trial(
        {"training.beta": 0.05, "training.loss": "mdpo", "training.levels": [0, 1, 2, 3]}, 3
    )
    assert [t.seed for t in grid[:2]] == [3, 4]  # point-major, seeds from compare.seeds[0]
    assert grid[0].overrides["training.compare.seeds"] == [3]
    assert grid[0].setting == "beta=0.05 loss=mdpo levels=[0, 1, 2, 3]"
    assert len({t.name for t in grid}) == 8 and grid[0].name == trials(spec)[0].name
    # a DPO point without its two levels would be an invalid trial: refused up front
    with pytest.raises(SpecError, match=r"the sweep trial training\.loss='dpo'"):
        validate_spec({**MINIMAL, "sweep": {"parameters": {"training.loss": ["mdpo", "dpo"]}}})
    with pytest.raises(SpecError, match="each value must be a list of 2 values"):
        validate_spec({**MINIMAL, "sweep": {"parameters": {"training.loss,training.beta": [1]}}})


def test_shared_cpus_divide_every_cpu_request_and_keep_gpus() -> None:
    spec = validate_spec(
        {
            **MINIMAL,
            "training": {"scaling": {"num_workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 1}},
            "evaluation": {"actors": {"num_cpus": 0.5, "num_gpus": 1}},
        }
    )
    shared = shared_cpu_overrides(spec, 2)
    assert shared["training.scaling.cpus_per_worker"] == 0.5
    assert shared["evaluation.actors.num_cpus"] == 0.25
    assert shared["training.encode_actors.num_cpus"] == spec.training.encode_actors.num_cpus / 2
    assert not any("gpu" in key for key in shared)


def test_a_linked_location_redirects_only_its_linked_stages(tmp_path: Path) -> None:
    run, trial = open_location(str(tmp_path / "run")), open_location(str(tmp_path / "trial"))
    view = LinkedLocation(trial.fs, trial.path, (("reference", run),))
    assert view.join("reference", "preferences").path == str(tmp_path / "run/reference/preferences")
    assert view.join("reference/preferences").path == str(tmp_path / "run/reference/preferences")
    assert view.join("train", "models").path == str(tmp_path / "trial/train/models")
    assert view.join("referenced").path == str(tmp_path / "trial/referenced")


def test_a_trial_runs_again_from_the_first_stage_its_point_changes(tmp_path: Path) -> None:
    from amp_ray.stages import STAGES
    from amp_ray.storage.run import StageRecord
    from amp_ray.sweep.trials import plan

    raw = {
        "name": "link",
        "stages": ["data", "reference", "sweep"],
        "storage": {"run_dir": str(tmp_path / "run")},
        "data": {"source": "amp_json", "path": str(tmp_path / "amp.json")},
        "models": {"policy": {"path": str(tmp_path / "policy")}},
        "training": {"policy": "policy", "scaling": {"num_workers": 2, "cpus_per_worker": 1}},
        "evaluation": {"benchmarks": ["pope"], "files": {"pope": {"path": "pope.jsonl"}}},
        # max_length is part of the reference stage's settings, beta only of training's
        "sweep": {"parameters": {"training.max_length": [2048, 512], "training.beta": [0.2]}},
    }
    spec = validate_spec(raw)
    run = RunDir.open(raw["storage"]["run_dir"])
    run.writer("data", "preferences", "preferences").commit()
    for name in ("data", "reference"):
        stage = STAGES[name](spec, run)
        run.commit_record(StageRecord(name, stage.config(), stage.input_versions(), {}, {}))
    same, shorter = (plan(spec, run, trial, concurrent=2) for trial in trials(spec))
    assert same.links == {"data": run.uri, "reference": run.uri}
    assert same.spec["stages"] == ["train", "evaluate"]
    assert shorter.links == {"data": run.uri}
    assert shorter.spec["stages"] == ["reference", "train", "evaluate"]
    assert shorter.spec["training"]["max_length"] == 512
    assert same.spec["training"]["beta"] == 0.2 and same.spec["training"]["compare"]["seeds"] == [0]
    # two trials at once: each asks for half of the CPUs; the trial rates its own model
    assert same.spec["training"]["scaling"]["cpus_per_worker"] == 0.5
    assert same.spec["evaluation"]["models"] == ["aligned"]
    assert same.spec["training"]["eval"]["enabled"] is False
    assert same.run_dir == run.location.join("sweep", "trials", trials(spec)[0].name).uri


def metric(model: str, split: str, value: float, count: int, name: str = "f1") -> dict:
    return {"model": model, "benchmark": "pope", "split": split, "metric": name, "value": value,
            "count": count}  # fmt: skip


def test_the_objective_is_the_item_weighted_mean_over_splits() -> None:
    rows = [metric("m", "a", 0.5, 1), metric("m", "b", 0.8, 3), metric("x", "a", 0.0, 9)]
    assert objective(rows, "m", "pope/f1") == pytest.approx((0.5 + 3 * 0.8) / 4)
    assert objective(rows, "m", "pope/a/f1") == pytest.approx(0.5)
    assert objective(rows, "m", "pope/recall") is None
    assert objective([metric("m", "a", math.nan, 2)], "m", "pope/f1") is None


def result(trial: str, setting: str, seed: int, arm: str, value: float) -> dict:
    return {"trial": trial, "setting": setting, "seed": seed, "status": "ok", "arm": arm,
            **metric(arm, "eval_iid", value, 10)}  # fmt: skip


def test_summary_is_mean_and_sd_over_seeds_and_the_best_point_by_its_own_recipe() -> None:
    rows = [
        result("t1", "beta=0.1", 0, "mdpo", 0.60),
        result("t2", "beta=0.1", 1, "mdpo", 0.70),
        result("t1", "beta=0.1", 0, "dpo", 0.95),
        result("t3", "beta=0.5", 0, "mdpo", 0.62),
        result("t4", "beta=0.5", 1, "mdpo", 0.66),
        {"trial": "t5", "setting": "beta=1", "seed": 0, "status": "RuntimeError: boom"},
    ]
    summaries = summarise(rows, "pope/f1")
    by = {(s.setting, s.arm): s for s in summaries}
    assert by[("beta=0.1", "mdpo")].values["objective"] == [0.60, 0.70]
    assert by[("beta=0.1", "mdpo")].cell("objective") == "0.650±0.071"
    assert by[("beta=0.1", "dpo")].cell("POPE_F1") == "0.950"
    assert best(summaries, "mdpo", "max").setting == "beta=0.1"  # 0.65 over 0.64
    lines = summary_lines(rows, "pope/f1", "min", "mdpo")
    assert "  best for mdpo: beta=0.5 (0.640±0.028)" in lines
    assert any("failed: beta=1 seed 0: RuntimeError: boom" in line for line in lines)


@pytest.mark.slow  # about 4 minutes on 2 cores: make test-slow
@pytest.mark.usefixtures("ray_session")
def test_a_two_by_two_sweep_on_ray_tune_trains_and_evaluates_every_trial(
    tmp_path: Path, world_items: list[dict], tiny_dir: str
) -> None:
    data = amp_json_from_world(tmp_path / "amp", world_items)
    images = tmp_path / "amp" / "images"
    pope = tmp_path / "pope"
    pope.mkdir()
    questions = [
        {"question_id": i, "image": image.name, "text": f"is there a {shape} ?", "label": label}
        for i, (image, (shape, label)) in enumerate(
            zip(
                sorted(images.iterdir())[:4], [("circle", "yes"), ("square", "no")] * 2, strict=True
            )
        )
    ]
    (pope / "coco_pope_random.json").write_text("\n".join(json.dumps(q) for q in questions))
    raw = training_spec(tmp_path / "run", data, tiny_dir, max_steps=2, log_every=1)
    raw["training"]["scaling"] = {"num_workers": 1, "cpus_per_worker": 0.5}
    # the demo's pool: two trials' pools then hold 1 of the 2 CPUs, the most that still leaves
    # Ray Data's whole-CPU tasks theirs (a trial actor that held any CPU hung here)
    raw["training"]["encode_actors"] = {"num_actors": 2, "num_cpus": 0.5, "batch_size": 16}
    raw["stages"] = ["data", "reference", "sweep", "report"]
    raw["evaluation"] = {
        "benchmarks": ["pope"],
        "files": {"pope": {"path": str(pope), "image_root": str(images)}},
        "decoding": {"max_new_tokens": 4, "num_beams": 1},
        "actors": {"num_actors": 1, "num_cpus": 0.5, "batch_size": 16},
    }
    raw["sweep"] = {
        "parameters": {"training.beta": [0.05, 0.5], "training.levels": [[0, 3], [0, 1, 2, 3]]},
        "metric": "pope/f1",
        "mode": "max",
    }
    lines: list[str] = []
    run_job(validate_spec(raw), echo=lines.append)
    run = RunDir.open(str(tmp_path / "run"))
    results = run.dataset("sweep", "results").read_table().to_pylist()
    assert {r["status"] for r in results} == {"ok"}
    assert len({r["trial"] for r in results}) == 4
    assert {r["setting"] for r in results} == {
        f"beta={b} levels={lv}" for b in (0.05, 0.5) for lv in ("[0, 3]", "[0, 1, 2, 3]")
    }
    for trial in {r["trial"] for r in results}:
        folder = RunDir.open(str(tmp_path / "run" / "sweep" / "trials" / trial))
        # the trial read the run's reference stage and ran train and evaluate itself
        assert folder.record("reference") is None and folder.record("train") is not None
        model = tmp_path / "run/sweep/trials" / trial / "train/models/aligned/_model.json"
        settings = json.loads(model.read_text())["metadata"]["settings"]
        mine = [r for r in results if r["trial"] == trial]
        overrides = json.loads(mine[0]["parameters"])
        assert settings["recipe"]["beta"] == overrides["training.beta"]
        assert settings["recipe"]["levels"] == overrides["training.levels"]
        own = folder.dataset("evaluate", "metrics").read_table().to_pylist()
        assert {r["value"] for r in mine if r["metric"] == "f1"} == {
            r["value"] for r in own if r["metric"] == "f1"
        }
    assert any(line.startswith("[sweep] rows in 4, out 4, quarantined 0") for line in lines)
    assert any(line.strip().startswith("best for aligned: beta=") for line in lines)
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "## Sweep" in report and "sweep.png" in report

    # a sweep killed after one trial's training: the next run redoes only what is missing
    trials_dir = tmp_path / "run" / "sweep" / "trials"
    killed = sorted(trials_dir.iterdir())[0]
    (killed / "evaluate" / "_stage.json").unlink()
    (tmp_path / "run" / "sweep" / "_stage.json").unlink()
    run_job(validate_spec(raw), echo=[].append)
    again = run.dataset("sweep", "results").read_table().to_pylist()

    def keyed(rows: list[dict], keep: set[str] | None = None) -> list[str]:
        return sorted(str({k: v for k, v in r.items() if keep is None or k in keep}) for r in rows)

    others = [r for r in results if r["trial"] != killed.name]
    assert keyed([r for r in again if r["trial"] != killed.name]) == keyed(others)
    # the killed trial answered again: the same metrics (a 2-step model's near-tied greedy
    # answers may flip with the batch they land in, so its values are not compared)
    names = {"trial", "model", "arm", "benchmark", "split", "metric", "count"}
    mine = [r for r in results if r["trial"] == killed.name]
    assert keyed([r for r in again if r["trial"] == killed.name], names) == keyed(mine, names)
    for folder in trials_dir.iterdir():
        log = (folder / "trial.log").read_text()
        assert "[train] complete already" in log
        assert ("[evaluate] rows in" in log) == (folder == killed)
