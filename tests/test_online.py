"""Online and mixed alignment rounds of the train stage (training.online) on a tiny world: each
round's data and model in the run directory, each round generating with the last round's model,
Mixed-DPO on [y+, offline y−, online ỹ−], and a killed job resuming at the round it was in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import tiny_world_spec
from pydantic import ValidationError

from amp_ray.pipeline import run_job
from amp_ray.spec import validate_spec
from amp_ray.stages.online import round_items, with_offline_level
from amp_ray.storage import RunDir
from amp_ray.storage.quarantine import QUARANTINE_REASON
from amp_ray.storage.schemas import PREFERENCES

# The module's runs share one local Ray. The first test's setup makes the offline data and two
# rounds (three Ray Train runs and a world check of four models): minutes on 2 CPUs, more when
# the machine is shared, hence the longer limit.
pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(1500)]
CHEAP = {"num_actors": 1, "num_cpus": 0.25, "batch_size": 4}


def online_spec(run_dir: Path, tiny_dir: str, stages: list[str], **online: object) -> dict:
    """The untrained tiny LLaVA as the policy; offline data from multi-level BDHS (K = 3)."""
    raw = tiny_world_spec(str(run_dir))
    raw["stages"] = stages
    raw["data"]["world"]["splits"] = {
        "sft": 0,
        "preference": 8,
        "eval_iid": 2,
        "eval_bias_probe": 2,
        "eval_control": 2,
    }
    raw["models"] = {"policy": {"path": tiny_dir}}
    raw["generation"] = {
        "methods": ["bdhs"],
        "bdhs": {"rho_th": [0.5, 0.99], "max_tries": 2},
        "sampling": {
            "max_new_tokens": 8,
            "do_sample": True,
            "temperature": 1.5,
            "num_beams": 1,
            "num_samples": 2,
        },
        "actors": CHEAP,
    }
    raw["ranking"] = {"checker": "ground_truth", "num_levels": 3, "actors": CHEAP}
    raw["reference"] = {"actors": CHEAP}
    raw["training"] = {
        "policy": "policy",
        "num_levels": 3,
        "max_steps": 1,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "optimizer": {"lr": 1e-3},
        "schedule": {"name": "constant", "warmup_steps": 0},
        "log_every": 1,
        "checkpoint_every": 1,
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5},
        "encode_actors": {"num_actors": 1, "num_cpus": 0.25, "batch_size": 8},
        "eval": {"max_new_tokens": 4, "items_per_split": 1, "actors": {"num_cpus": 0.25}},
        "compare": {"equal_time": False},
        "online": {"steps_per_round": 1, **online},
    }
    return raw


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory, tiny_dir: str) -> Path:
    """A run directory with K = 3 offline preference data scored by the reference."""
    run_dir = tmp_path_factory.mktemp("online") / "run"
    stages = ["data", "generate", "rank", "reference"]
    run_job(validate_spec(online_spec(run_dir, tiny_dir, stages)), echo=lambda _: None)
    assert RunDir.open(str(run_dir)).dataset("reference", "preferences").num_rows >= 2
    return run_dir


def copy_of(offline_run: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(offline_run, run_dir)
    return run_dir


def model_record(run_dir: Path, model: str) -> dict:
    return json.loads((run_dir / "train" / "models" / model / "_model.json").read_text())


def rows_of(run_dir: Path, dataset: str) -> list[dict]:
    return RunDir.open(str(run_dir)).dataset("train", dataset).read_table().to_pylist()


# --- online DPO with BDHS from the current policy ------------------------------------------


@pytest.fixture(scope="module")
def two_rounds(offline_run: Path, tmp_path_factory: pytest.TempPathFactory, tiny_dir: str):
    run_dir = copy_of(offline_run, tmp_path_factory.mktemp("two-rounds"))
    raw = online_spec(run_dir, tiny_dir, ["train"], rounds=2)
    lines: list[str] = []
    run_job(validate_spec(raw), echo=lines.append)
    return run_dir, raw, lines


@pytest.mark.slow  # the three end-to-end tests: ~8 min on 2 cores; .ci/run runs the first two
def test_each_round_keeps_its_data_and_model_and_generates_with_the_last_model(
    two_rounds: tuple[Path, dict, list[str]], tiny_dir: str
) -> None:
    run_dir, _, lines = two_rounds
    offline = RunDir.open(str(run_dir)).dataset("reference", "preferences").read_table()
    offline_ids = set(offline.column("item_id").to_pylist())
    for number, generated_by in ((1, "policy"), (2, "aligned-online-r1")):
        rows = rows_of(run_dir, f"round{number}_preferences")
        aside = rows_of(run_dir, f"round{number}_quarantine")
        assert rows and {r["item_id"] for r in rows} | {r["item_id"] for r in aside} == offline_ids
        for row in rows:
            reference, rejected = row["levels"]
            assert reference["answers"] == [turn["answer"] for turn in row["rounds"]]
            assert rejected["generator"] == "bdhs" and rejected["answers"] != reference["answers"]
            assert row["ref_model"] == "policy" and len(row["ref_logps"]) == 2
            # every candidate is the round's policy's, at each hiding threshold
            made = {c["source"] for c in row["candidates"] if c["generator"] == "bdhs"}
            assert made == {f"{generated_by}@0.5", f"{generated_by}@0.99"}
        assert (run_dir / "train" / "models" / f"aligned-online-r{number}" / "_model.json").exists()
    # round 1 trained from the policy's weights, round 2 from round 1's committed ones
    first, second = (model_record(run_dir, f"aligned-online-r{n}") for n in (1, 2))
    assert first["metadata"]["settings"]["policy"] == tiny_dir
    assert second["metadata"]["settings"]["policy"] == f"aligned-online-r1@{first['attempt']}"
    runs = rows_of(run_dir, "runs")
    assert [(r["model"], r["arm"], r["steps"], r["budget"]) for r in runs] == [
        ("aligned", "aligned", 1, "steps"),
        ("aligned-online-r1", "aligned-online", 1, "steps"),
        ("aligned-online-r2", "aligned-online", 2, "steps"),
    ]
    log = rows_of(run_dir, "log")
    for model in ("aligned-online-r1", "aligned-online-r2"):
        metrics = {r["metric"] for r in log if r["model"] == model}
        assert {"loss", "accuracy/0-1"} <= metrics and "accuracy/0-2" not in metrics
    checked = {r["model"] for r in rows_of(run_dir, "metrics")}
    assert {"policy", "aligned", "aligned-online-r1", "aligned-online-r2"} <= checked
    shown = [line.strip() for line in lines]
    assert "online rounds (bdhs candidates, DPO, 1 steps):" in shown


@pytest.mark.slow
def test_a_killed_job_resumes_at_the_round_it_was_in(
    two_rounds: tuple[Path, dict, list[str]], tmp_path: Path
) -> None:
    done, raw, _ = two_rounds
    run_dir = copy_of(done, tmp_path)
    # killed while training round 2: its data is committed, its model and the record are not
    (run_dir / "train" / "_stage.json").unlink()
    (run_dir / "train" / "models" / "aligned-online-r2" / "_model.json").unlink()
    before = {
        model: model_record(run_dir, model)["attempt"] for model in ("aligned", "aligned-online-r1")
    }
    data = RunDir.open(str(run_dir)).dataset("train", "round2_preferences").manifest.attempt
    raw["storage"]["run_dir"] = str(run_dir)
    run_job(validate_spec(raw), echo=lambda _: None)
    after = {model: model_record(run_dir, model)["attempt"] for model in before}
    assert after == before  # the offline run and round 1 were not trained again
    run = RunDir.open(str(run_dir))
    assert run.dataset("train", "round2_preferences").manifest.attempt == data
    retrained = model_record(run_dir, "aligned-online-r2")
    assert retrained["metadata"]["settings"]["data"] == data
    assert [r["model"] for r in rows_of(run_dir, "runs")][-1] == "aligned-online-r2"


# --- Mixed-DPO with sampled candidates --------------------------------------------------------


@pytest.mark.slow
def test_mixed_dpo_trains_on_the_offline_and_the_online_rejected_answer(
    two_rounds: tuple[Path, dict, list[str]], tmp_path: Path, tiny_dir: str
) -> None:
    # the online settings change in a job killed before the stage finished
    run_dir = copy_of(two_rounds[0], tmp_path)
    (run_dir / "train" / "_stage.json").unlink()
    offline_model = model_record(run_dir, "aligned")["attempt"]
    raw = online_spec(run_dir, tiny_dir, ["train"], rounds=1, generator="sampled", mix_offline=True)
    raw["training"]["online"]["items_per_round"] = 3
    run_job(validate_spec(raw), echo=lambda _: None)
    assert model_record(run_dir, "aligned")["attempt"] == offline_model  # offline: not redone
    offline = {
        row["item_id"]: row
        for row in RunDir.open(str(run_dir))
        .dataset("reference", "preferences")
        .read_table()
        .to_pylist()
    }
    rows = rows_of(run_dir, "round1_preferences")
    aside = rows_of(run_dir, "round1_quarantine")
    assert rows and len(rows) + len(aside) == 3
    for row in rows:
        reference, offline_rejected, online_rejected = row["levels"]
        stored = offline[row["item_id"]]
        assert reference["answers"] == stored["levels"][0]["answers"]
        assert offline_rejected == stored["levels"][-1]  # the worst offline level
        assert online_rejected["generator"] == "sampled"
        assert online_rejected["source"] == "policy"
        sampled = [c for c in row["candidates"] if c["generator"] == "sampled"]
        assert len(sampled) == 2  # generation.sampling.num_samples
        # the fixed reference scores the offline level as the reference stage did
        assert row["ref_logps"][1] == pytest.approx(stored["ref_logps"][-1], rel=1e-4)
    log = rows_of(run_dir, "log")
    metrics = {r["metric"] for r in log if r["model"] == "aligned-online-r1"}
    assert {"accuracy/0-1", "accuracy/0-2"} <= metrics  # three levels trained
    settings = model_record(run_dir, "aligned-online-r1")["metadata"]["settings"]
    assert settings["recipe"]["loss"] == "mixed_dpo" and settings["recipe"]["num_levels"] == 3


# --- the parts without Ray ---------------------------------------------------------------


def test_round_items_are_stable_and_differ_between_rounds() -> None:
    ids = [f"item{i}" for i in range(40)]
    first = round_items(ids, 10, 0, 1)
    assert len(first) == 10 and first == round_items(list(reversed(ids)), 10, 0, 1)
    assert first != round_items(ids, 10, 0, 2)
    assert round_items(ids, None, 0, 1) == round_items(ids, 50, 0, 3) == frozenset(ids)


def test_the_offline_level_goes_between_the_reference_and_the_online_answer() -> None:
    def level(answer: str) -> dict:
        return {"candidate_id": answer, "answers": [answer], "initial_rank": 1}

    schema = pa.schema([("item_id", pa.string()), PREFERENCES.field("levels")]).append(
        pa.field(QUARANTINE_REASON, pa.string())
    )
    ranked = pa.Table.from_pylist(
        [
            {"item_id": "a", "levels": [level("y+"), level("online a")]},
            {"item_id": "b", "levels": [], QUARANTINE_REASON: "only 0 distinct levels"},
            {"item_id": "c", "levels": [level("y+"), level("online c")]},
        ],
        schema=schema,
    )
    offline = pa.Table.from_pylist(
        [{"item_id": "a", "level": level("offline a")}],
        schema=pa.schema(
            [("item_id", pa.string()), ("level", schema.field("levels").type.value_type)]
        ),
    )
    out = with_offline_level(ranked, offline).to_pylist()
    assert [lv["candidate_id"] for lv in out[0]["levels"]] == ["y+", "offline a", "online a"]
    assert out[1][QUARANTINE_REASON] == "only 0 distinct levels"
    assert out[2][QUARANTINE_REASON] == "no offline levels for this item to mix with"


def test_the_online_block_is_checked() -> None:
    from amp_ray.spec.alignment import TrainingSpec

    with pytest.raises(ValidationError, match="mix_offline mixes offline and online pairs"):
        TrainingSpec(online={"mix_offline": True})
    with pytest.raises(ValidationError, match="compare, name, policy, eval and online"):
        TrainingSpec(compare={"arms": {"other": {"online": {"rounds": 1}}}})
    with pytest.raises(ValidationError, match="the online rounds' arm has this name"):
        TrainingSpec(compare={"arms": {"aligned-online": {"loss": "dpo", "levels": [0, 3]}}})
    recipe = TrainingSpec(beta=0.3, online={"rounds": 2, "steps_per_round": 7}).online_recipe()
    assert (recipe.loss, recipe.trained_levels, recipe.max_steps, recipe.beta) == (
        "dpo",
        [0, 1],
        7,
        0.3,
    )


def test_rounds_that_cannot_run_are_refused(tmp_path: Path) -> None:
    from amp_ray.errors import SpecError

    raw = online_spec(tmp_path, "unused", ["train"], rounds=1)
    raw["generation"].update(methods=[], bdhs={"rho_th": []})  # the generate stage needs none
    with pytest.raises(SpecError, match=r"needs at least one generation\.bdhs\.rho_th"):
        validate_spec(raw)
    raw = online_spec(tmp_path, "unused", ["train"], rounds=1)
    raw["training"]["lora"] = {"r": 4, "export": "adapter"}
    with pytest.raises(SpecError, match=r"set training\.lora\.export: merged"):
        validate_spec(raw)


def test_the_reference_scorer_keeps_a_reason_set_upstream(
    tiny_dir: str, world_items: list[dict]
) -> None:
    from amp_ray.generation.reference_scorer import ReferenceScorer
    from amp_ray.models.registry import ActorModel

    caption = next(item for item in world_items if item["task"] == "caption")
    answers = [turn["answer"] for turn in caption["rounds"]]
    good = {**caption, "levels": [{"answers": answers}, {"answers": ["a square."]}]}
    dropped = {**caption, "item_id": "dropped", "levels": [], QUARANTINE_REASON: "no pair"}
    scorer = ReferenceScorer(ActorModel("policy", tiny_dir), 512, 8)
    rows = scorer(pa.Table.from_pylist([{**good, QUARANTINE_REASON: None}, dropped])).to_pylist()
    assert rows[0][QUARANTINE_REASON] is None and len(rows[0]["ref_logps"]) == 2
    assert [len(level) for level in rows[0]["ref_logps"]] == [1, 1]  # a caption: one round
    assert rows[1][QUARANTINE_REASON] == "no pair" and rows[1]["ref_logps"] == []
