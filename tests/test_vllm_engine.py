"""generation.engine: vllm (amp_ray/generation/vllm_engine.py).

What vLLM cannot do is refused before any generation, naming the setting or the model and the
fix. The slow test runs the real generate and evaluate stages twice on the tiny LLaVA, with
engine hf and with engine vllm from the vLLM environment (make vllm-env), and finds the same
greedy candidates and benchmark answers item for item.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import REPO, tiny_world_spec
from pydantic import ValidationError

from amp_ray.errors import AmpRayError, SpecError
from amp_ray.generation.vllm_engine import check_vllm_environment, check_vllm_model
from amp_ray.spec import validate_spec
from amp_ray.spec.alignment import GenerationSpec
from amp_ray.spec.engines import VllmSpec

GREEDY = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "max_new_tokens": 12}


def test_settings_vllm_lacks_are_refused_when_the_spec_is_read() -> None:
    with pytest.raises(ValidationError, match=r"generation.sampling.num_beams 4: .*num_beams: 1"):
        GenerationSpec(engine="vllm")
    with pytest.raises(ValidationError, match="no_repeat_ngram_size 5: vLLM has no n-gram"):
        GenerationSpec(engine="vllm", sampling={**GREEDY, "no_repeat_ngram_size": 5})
    with pytest.raises(ValidationError, match=r"num_gpus 2.0 differs from .*parallel_size 1"):
        GenerationSpec(engine="vllm", sampling=GREEDY, actors={"num_gpus": 2})
    with pytest.raises(ValidationError, match="BDHS hides image tokens through the attention"):
        GenerationSpec(bdhs={"engine": "vllm"})
    assert GenerationSpec(engine="vllm", sampling={**GREEDY, "do_sample": True}).engine == "vllm"


def test_an_environment_without_vllm_is_refused_with_the_fix() -> None:
    with pytest.raises(SpecError, match="cannot import vLLM") as raised:
        check_vllm_environment(VllmSpec(python=sys.executable), "generation")
    assert "make vllm-env" in raised.value.hint
    with pytest.raises(SpecError, match="does not run"):
        check_vllm_environment(VllmSpec(python="/no/such/python"), "generation")


def test_models_vllm_cannot_load_are_refused(tmp_path: Path, tiny_dir: str) -> None:
    check_vllm_model("tiny", tiny_dir)  # amp-ray's save_model writes the published layout
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "paligemma"}))
    with pytest.raises(AmpRayError, match="'paligemma' checkpoint, which amp-ray does not run"):
        check_vllm_model("other", str(other))
    from safetensors.torch import load_file, save_file

    own = tmp_path / "own_layout"
    own.mkdir()
    (own / "config.json").write_text((Path(tiny_dir) / "config.json").read_text())
    weights = load_file(str(Path(tiny_dir) / "model.safetensors"))
    renamed = {
        name.replace("vision_tower.vision_model.", "model.vision_tower."): value
        for name, value in weights.items()
    }
    save_file(renamed, str(own / "model.safetensors"))
    with pytest.raises(AmpRayError, match="transformers 5's own layout") as raised:
        check_vllm_model("own", str(own))
    assert "save_model" in raised.value.hint


@pytest.fixture(scope="module")
def vllm_python() -> str:
    python = os.environ.get("AMP_RAY_VLLM_PYTHON", str(REPO / ".venv-vllm" / "bin" / "python"))
    # skipped on a developer's machine without it; with CI set, a missing environment fails
    if not Path(python).exists() and not os.environ.get("CI"):
        pytest.skip(f"no vLLM environment at {python}: make vllm-env")
    return python


def generation_spec(run_dir: Path, tiny_dir: str, engine: str, python: str) -> dict:
    raw = tiny_world_spec(str(run_dir))
    raw["stages"] = ["data", "generate", "evaluate"]
    raw["models"] = {"expert": {"path": tiny_dir, "dtype": "float32"}}
    actors = {"num_actors": 1, "num_cpus": 0.5, "batch_size": 4}
    # on the CPU backend gpu_memory_utilization is the share of the node's memory for KV cache
    vllm = {"python": python, "gpu_memory_utilization": 0.05}
    raw["generation"] = {
        "methods": ["meg"],
        "meg": {"experts": ["expert"]},
        "sampling": GREEDY,
        "actors": actors,
        "engine": engine,
        "vllm": vllm,
    }
    raw["evaluation"] = {
        "models": ["expert"],
        "benchmarks": ["pope", "mrhal"],
        "decoding": {**GREEDY, "no_repeat_ngram_size": 0},
        "items_per_split": 2,
        "actors": actors,
        "engine": engine,
        "vllm": vllm,
    }
    return raw


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_generate_and_evaluate_give_the_same_greedy_answers_on_vllm_as_on_hf(
    tmp_path: Path, tiny_dir: str, vllm_python: str
) -> None:
    from amp_ray.pipeline import run_job
    from amp_ray.storage import RunDir

    answers, evaluated = {}, {}
    for engine in ("hf", "vllm"):
        run_dir = tmp_path / engine
        spec = validate_spec(generation_spec(run_dir, tiny_dir, engine, vllm_python))
        reports = run_job(spec, echo=lambda _: None)
        assert [report.status for report in reports] == ["done"] * 3
        run = RunDir.open(str(run_dir))
        evaluated[engine] = {
            (row["item_id"], row["model"]): row["answers"]
            for row in run.dataset("evaluate", "answers").read_table().to_pylist()
        }
        table = run.dataset("generate", "candidates").read_table()
        rows = table.to_pylist()
        answers[engine] = {
            row["item_id"]: [(c["candidate_id"], c["answers"]) for c in row["candidates"]]
            for row in rows
        }
        made_by = {json.loads(c["info"]).get("engine", "hf") for r in rows for c in r["candidates"]}
        assert made_by == {engine}
        quarantine = RunDir.open(str(run_dir)).dataset("generate", "quarantine").read_table()
        assert quarantine.num_rows == 0
    assert len(answers["hf"]) == 10  # every preference item of the tiny world
    assert answers["vllm"] == answers["hf"]
    assert len(evaluated["hf"]) >= 6 and evaluated["vllm"] == evaluated["hf"]
    texts = {a for candidates in answers["hf"].values() for _, rounds in candidates for a in rounds}
    assert len(texts) > 3  # the tiny model says different things about different images
