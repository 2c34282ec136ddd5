"""The sft stage end to end on a tiny world: build, train, commit, check, and reuse on re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_world_spec

from amp_ray.errors import SpecError
from amp_ray.models.loading import load_model, load_processor
from amp_ray.models.store import local_model_path
from amp_ray.pipeline import run_job
from amp_ray.spec import validate_spec
from amp_ray.storage import RunDir

pytestmark = pytest.mark.usefixtures("ray_session")


def sft_spec(run_dir: Path) -> dict:
    raw = tiny_world_spec(str(run_dir))
    raw["data"]["world"]["splits"] = {
        "sft": 200,
        "preference": 0,
        "eval_iid": 6,
        "eval_bias_probe": 6,
        "eval_control": 6,
    }
    raw["stages"] = ["data", "sft"]
    raw["models"] = {
        "tiny": {"tiny": {"vision_hidden": 32, "text_hidden": 64, "text_layers": 1, "mlp": 128}}
    }
    raw["sft"] = {
        "runs": {
            "small": {"init": "tiny", "data_fraction": 0.5, "steps": 3},
            "more": {"init": "tiny", "steps": 3},
        },
        "max_concurrent_runs": 2,
        "micro_batch_size": 8,
        "checkpoint_every": 2,
        "log_every": 1,
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5},
        "encode_actors": {"num_actors": 1, "num_cpus": 0.5, "batch_size": 64},
        "eval": {
            "max_new_tokens": 8,
            "items_per_split": 10,
            "actors": {"num_cpus": 0.5, "batch_size": 64},
        },
    }
    return raw


def attempts(run_dir: Path) -> dict[str, str]:
    return {
        name: json.loads((run_dir / "sft" / "models" / name / "_model.json").read_text())["attempt"]
        for name in ("small", "more")
    }


# ~6 min on 2 cores; the default run covers the stage through tests/test_preference_stages.py
@pytest.mark.slow
def test_sft_stage_trains_checks_and_reuses_committed_models(tmp_path: Path) -> None:
    raw = sft_spec(tmp_path / "run")
    lines: list[str] = []
    run_job(validate_spec(raw), echo=lines.append)
    sft_line = next(i for i, line in enumerate(lines) if line.startswith("[sft]"))
    assert lines[sft_line].startswith("[sft] rows in 200, out 200, quarantined 0")
    table = [line.split() for line in lines[sft_line + 1 :]]
    assert table[0][:5] == ["model", "params", "data", "steps", "loss"]
    assert [row[0] for row in table[1:]] == ["small", "more"]
    assert table[1][2:4] == ["50%", "3"]

    run = RunDir.open(str(tmp_path / "run"))
    metrics = run.dataset("sft", "metrics").read_table().to_pylist()
    for model in ("small", "more"):
        names = {(m["benchmark"], m["split"], m["metric"]) for m in metrics if m["model"] == model}
        assert ("chair", "eval_iid", "chair_i") in names and ("pope", "eval_iid", "f1") in names
        assert ("bias", "eval_bias_probe", "partner_rate") in names
    answers = run.dataset("sft", "answers").read_table()
    assert set(answers.column("model").to_pylist()) == {"small", "more"}

    path = local_model_path(str(tmp_path / "run" / "sft" / "models" / "more"))
    assert type(load_model(path)).__name__ == "LlavaForConditionalGeneration"
    assert load_processor(path).tokenizer.padding_side == "left"

    # A job killed after training but before the stage was recorded: the models are reused.
    first = attempts(tmp_path / "run")
    (tmp_path / "run" / "sft" / "_stage.json").unlink()
    run_job(validate_spec(raw), echo=lambda _: None)
    assert attempts(tmp_path / "run") == first
    # --force trains again.
    run_job(validate_spec(raw), only=["sft"], force=True, echo=lambda _: None)
    assert all(attempts(tmp_path / "run")[n] != first[n] for n in first)


def test_runs_start_after_the_run_they_start_from() -> None:
    import threading
    import time

    from amp_ray.models.registry import run_in_dependency_order

    raw = sft_spec(Path("unused"))
    raw["sft"]["runs"] = {
        "a": {"init": "tiny"},
        "b": {"init": "a"},
        "c": {"init": "tiny"},
        "d": {"init": "b"},
    }
    spec = validate_spec(raw)
    finished: list[str] = []
    lock = threading.Lock()

    def train(name: str) -> str:
        init = spec.sft.runs[name].init
        assert init == "tiny" or init in finished, f"{name} started before {init} finished"
        time.sleep(0.05)
        with lock:
            finished.append(name)
        return name.upper()

    assert run_in_dependency_order(spec, train, concurrency=2) == {n: n.upper() for n in "abcd"}
    assert finished.index("a") < finished.index("b") < finished.index("d")


def test_sft_needs_runs(tmp_path: Path) -> None:
    raw = sft_spec(tmp_path / "run")
    raw["sft"]["runs"] = {}
    with pytest.raises(SpecError, match=r"sft\.runs is empty"):
        run_job(validate_spec(raw), echo=lambda _: None)
