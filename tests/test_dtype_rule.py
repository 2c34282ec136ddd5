"""One dtype per model wherever it loads, and training refuses reference log-probs scored in
another dtype than the policy trains in."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from amp_ray.errors import SpecError
from amp_ray.generation.reference_scorer import scorer_kwargs
from amp_ray.models.registry import LoadOptions, load_options
from amp_ray.spec import validate_spec
from amp_ray.spec.alignment import TrainingSpec
from amp_ray.stages.preference_runs import check_reference_dtype, scored_dtypes
from amp_ray.storage import RunDir, open_location
from amp_ray.storage.dataset import Dataset, DatasetWriter


def spec(tmp_path: Path) -> object:
    return validate_spec(
        {
            "name": "dtypes",
            "stages": ["sft"],
            "storage": {"run_dir": str(tmp_path)},
            "models": {
                "base": {
                    "path": "llava-hf/llava-1.5-7b-hf",
                    "dtype": "bfloat16",
                    "trust_remote_code": True,
                    "attn_implementation": "eager",
                },
                "other": {"path": "llava-hf/llava-1.5-13b-hf"},
            },
            "sft": {"runs": {"tuned": {"init": "base"}, "tuned2": {"init": "tuned"}}},
            "training": {"policy": "tuned2"},
        }
    )


def test_a_model_loads_with_its_spec_settings_and_an_sft_run_with_its_root_models(
    tmp_path: Path,
) -> None:
    job = spec(tmp_path)
    assert load_options(job, "base").dtype == "bfloat16"
    assert load_options(job, "tuned2").dtype == "bfloat16"  # an SFT chain from base
    assert load_options(job, "other").dtype == "auto"  # the checkpoint's own
    # a model this run trained: its checkpoint's dtype, its policy's root's other settings
    assert load_options(job, "aligned") == LoadOptions("auto", True, "eager")
    scorer = scorer_kwargs(job, RunDir.open(str(tmp_path)), "tuned2")["model"]
    assert scorer.load == LoadOptions("bfloat16", True, "eager")
    assert scorer.uri == str(tmp_path / "sft" / "models" / "tuned2")


def scored(tmp_path: Path, dtypes: list[str | None]) -> Dataset:
    location = open_location(str(tmp_path / "reference"))
    schema = pa.schema([("item_id", pa.string()), ("ref_dtype", pa.string())])
    writer = DatasetWriter(location, schema, "scored")
    ids = [f"i{n}" for n in range(len(dtypes))]
    writer.write_table(pa.table({"item_id": ids, "ref_dtype": dtypes}, schema=schema))
    writer.commit()
    return Dataset(location)


def test_a_reference_in_another_dtype_is_refused_with_the_fixes(tmp_path: Path) -> None:
    training = TrainingSpec(policy="base", precision="bf16")

    def check(dtypes: list[str | None], training: TrainingSpec) -> None:
        dataset = scored(tmp_path / "-".join(str(d) for d in dtypes), dtypes)
        check_reference_dtype(scored_dtypes(dataset), training, "reference/preferences", "base")

    check(["bfloat16"] * 3, training)
    with pytest.raises(SpecError) as refused:
        check(["bfloat16", "float32"], training)
    message = str(refused.value)
    assert "reference/preferences is scored in bfloat16, float32" in message
    assert "trains the policy in bfloat16" in message
    assert "models.base.dtype: bfloat16" in refused.value.hint
    assert "reference_dtype_mismatch: allow" in refused.value.hint
    allowed = TrainingSpec(policy="base", precision="bf16", reference_dtype_mismatch="allow")
    check(["bfloat16", "float32"], allowed)
    # fp32 training keeps float32 weights: a float32 reference fits, an unrecorded one does not
    check(["float32"], TrainingSpec(policy="base"))
    with pytest.raises(SpecError, match="an unrecorded dtype"):
        check([None], TrainingSpec(policy="base"))


def test_online_rounds_refuse_a_reference_dtype_when_the_spec_is_read(tmp_path: Path) -> None:
    """The rounds score their reference in the spec's dtype: refused before any stage runs,
    even where the offline recipe (here the SFT control) reads no reference."""
    raw = {
        "name": "online-dtypes",
        "stages": ["train"],
        "storage": {"run_dir": str(tmp_path)},
        "models": {"base": {"path": "llava-hf/llava-1.5-7b-hf", "dtype": "float32"}},
        "data": {"source": "parquet", "path": str(tmp_path / "items")},
        "training": {
            "policy": "base",
            "loss": "sft",
            "precision": "bf16",
            "online": {"rounds": 1, "generator": "bdhs"},
        },
    }
    with pytest.raises(SpecError, match=r"models\.base\.dtype float32 scores the reference"):
        validate_spec(raw)
    raw["training"]["online"]["rounds"] = 0  # no rounds: no reference is read
    validate_spec(raw)
