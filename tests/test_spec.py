"""Job specs: shipped specs validate; bad specs fail with the field path and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from amp_ray.errors import SpecError
from amp_ray.spec import JobSpec, apply_override, load_spec, validate_spec

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "jobs").glob("*.yaml"))
MINIMAL = {"name": "t", "stages": ["data"], "storage": {"run_dir": "runs/t"}}


def problems(raw: dict) -> str:
    with pytest.raises(SpecError) as info:
        validate_spec(raw, "t.yaml")
    assert info.value.exit_code == 2
    return str(info.value)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_specs_validate_and_say_how_to_run(path: Path) -> None:
    spec = load_spec(path)
    assert isinstance(spec, JobSpec)
    header = path.read_text().splitlines()[:6]
    assert any(f"amp-ray run jobs/{path.name}" in line for line in header)
    assert any("ray job submit" in line for line in header)


def test_defaults_follow_the_papers() -> None:
    spec = validate_spec(MINIMAL)
    assert spec.training.beta == 0.1 and spec.training.num_levels == 4
    assert spec.training.penalty.weight == 1.0
    assert spec.ranking.tau == 0.85
    assert spec.generation.bdhs.rho_th == [0.99] and spec.generation.bdhs.max_tries == 5
    assert spec.generation.bdhs.similarity_threshold == 0.97
    assert (
        spec.evaluation.decoding.num_beams == 4
        and spec.evaluation.decoding.no_repeat_ngram_size == 5
    )
    # a spec that sets one decoding key keeps MRHal-Bench's greedy decoding for the others
    shorter = validate_spec({**MINIMAL, "evaluation": {"decoding": {"max_new_tokens": 32}}})
    decoding = shorter.evaluation.decoding
    assert decoding.max_new_tokens == 32 and not decoding.do_sample
    assert (decoding.num_beams, decoding.no_repeat_ngram_size, decoding.repetition_penalty) == (
        4,
        5,
        1.0,
    )


def test_unknown_key_names_path_allowed_keys_and_closest_match() -> None:
    message = problems({**MINIMAL, "training": {"betaa": 0.2}})
    assert "training.betaa: unknown key" in message
    assert "allowed: policy, loss, beta," in message
    assert "did you mean 'beta'?" in message


def test_unknown_key_inside_a_named_model_and_a_list_element() -> None:
    message = problems({**MINIMAL, "models": {"m": {"path": "x", "dtyp": "auto"}}})
    assert "models.m.dtyp: unknown key; allowed: path, tiny, dtype, trust_remote_code" in message
    message = problems({**MINIMAL, "training": {"lora": {"rank": 8}}})
    assert "training.lora.rank: unknown key; allowed: r, alpha" in message


def test_wrong_types_and_ranges_name_the_field_and_the_value() -> None:
    message = problems({**MINIMAL, "training": {"beta": "big", "num_levels": 9, "loss": "ppo"}})
    assert "training.beta: Input should be a valid number" in message and "(got 'big')" in message
    assert "training.num_levels: Input should be less than or equal to 8 (got 9)" in message
    assert "training.loss: Input should be 'mdpo', 'mdpo_naive', 'dpo'" in message
    assert "3 problem(s)" in message


def test_missing_required_fields_and_bad_blocks() -> None:
    message = problems({"stages": ["data"], "storage": "s3://x"})
    assert "name: required field is missing" in message
    assert "storage: must be a mapping of keys, got 's3://x'" in message


def test_cross_field_rules() -> None:
    assert "stages must follow the pipeline order" in problems(
        {**MINIMAL, "stages": ["train", "data"]}
    )
    message = problems({**MINIMAL, "generation": {"meg": {"experts": ["ghost"]}}})
    assert "generation.meg.experts[0] refers to model 'ghost'" in message
    message = problems({**MINIMAL, "data": {"source": "parquet"}})
    assert "data: `path` is required when `source` is 'parquet'" in message
    message = problems({**MINIMAL, "data": {"world": {"bias": {"trigger": "square"}}}})
    assert "bias.trigger and bias.partner must differ" in message
    trains = {**MINIMAL, "stages": ["data", "rank", "train"]}
    message = problems({**trains, "training": {"num_levels": 5}})
    assert "training.num_levels (5) must equal ranking.num_levels (4)" in message
    # without a train or sweep stage the training block is not read
    validate_spec({**MINIMAL, "training": {"num_levels": 5}})


def test_every_sweep_trial_is_validated_up_front() -> None:
    raw = {
        **MINIMAL,
        "sweep": {"parameters": {"training.beta": [0.1, -1.0], "training.num_levels": [2, 4]}},
    }
    message = problems(raw)
    assert (
        "the sweep trial training.beta=-1.0, training.num_levels=2 is not a valid spec" in message
    )
    assert "training.beta: Input should be greater than 0" in message
    assert "cannot be swept" in problems(
        {**MINIMAL, "sweep": {"parameters": {"storage.run_dir": ["a"]}}}
    )


def test_overrides_parse_yaml_values_and_reject_bad_forms() -> None:
    raw = apply_override(MINIMAL, "training.beta=0.2")
    raw = apply_override(raw, "generation.bdhs.rho_th=[0.5, 0.8]")
    spec = validate_spec(raw)
    assert spec.training.beta == 0.2 and spec.generation.bdhs.rho_th == [0.5, 0.8]
    assert MINIMAL.get("training") is None  # the input is not modified
    with pytest.raises(SpecError, match=r"not of the form dotted\.key=value"):
        apply_override(MINIMAL, "training.beta")
    with pytest.raises(SpecError, match="name is a value, not a block"):
        apply_override(MINIMAL, "name.x=1")


def test_yaml_errors_give_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nstages: [data\nstorage: {}\n")
    with pytest.raises(SpecError, match=r"bad\.yaml:\d+:\d+: invalid YAML"):
        load_spec(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="a spec is a YAML mapping"):
        load_spec(path)
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")


def test_spec_is_immutable() -> None:
    spec = validate_spec(MINIMAL)
    with pytest.raises(Exception, match="frozen"):
        spec.training.beta = 1.0  # type: ignore[misc]


def test_spec_round_trips_through_yaml() -> None:
    spec = validate_spec(MINIMAL)
    again = validate_spec(yaml.safe_load(yaml.safe_dump(spec.model_dump(mode="json"))))
    assert again == spec
