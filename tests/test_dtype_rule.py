"""One dtype per model wherever it loads, and training refuses reference log-probs scored in
another dtype than the policy trains in."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from amp_ray.errors import SpecError
from amp_ray.generation.reference import scorer_kwargs
from amp_ray.models.registry import model_dtype
from amp_ray.spec import validate_spec
from amp_ray.spec.alignment import TrainingSpec
from amp_ray.stages.train import check_reference_dtype
from amp_ray.storage import open_location
from amp_ray.storage.dataset import Dataset, DatasetWriter


def spec(tmp_path: Path) -> object:
    return validate_spec(
        {
            "name": "dtypes",
            "stages": ["sft"],
            "storage": {"run_dir": str(tmp_path)},
            "models": {
                "base": {"path": "llava-hf/llava-1.5-7b-hf", "dtype": "bfloat16"},
                "other": {"path": "llava-hf/llava-1.5-13b-hf"},
            },
            "sft": {"runs": {"tuned": {"init": "base"}, "tuned2": {"init": "tuned"}}},
            "training": {"policy": "tuned2"},
        }
    )


def test_a_model_loads_in_its_spec_dtype_and_an_sft_run_in_its_root_models(
    tmp_path: Path,
) -> None:
    job = spec(tmp_path)
    assert model_dtype(job, "base") == "bfloat16"
    assert model_dtype(job, "tuned2") == "bfloat16"  # an SFT chain from base
    assert model_dtype(job, "other") == "auto"  # the checkpoint's own
    assert model_dtype(job, "aligned") == "auto"  # a model this run trained
    assert scorer_kwargs(job, "tuned2", "uri")["dtype"] == "bfloat16"


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
    check_reference_dtype(scored(tmp_path / "same", ["bfloat16"] * 3), training)
    mixed = scored(tmp_path / "mixed", ["bfloat16", "float32"])
    with pytest.raises(SpecError) as refused:
        check_reference_dtype(mixed, training)
    message = str(refused.value)
    assert "scored in bfloat16, float32" in message and "trains the policy in bfloat16" in message
    assert "models.base.dtype: bfloat16" in refused.value.hint
    assert "reference_dtype_mismatch: allow" in refused.value.hint
    allowed = TrainingSpec(policy="base", precision="bf16", reference_dtype_mismatch="allow")
    check_reference_dtype(mixed, allowed)
    # fp32 training keeps float32 weights: a float32 reference fits, an unrecorded one does not
    check_reference_dtype(scored(tmp_path / "fp32", ["float32"]), TrainingSpec(policy="base"))
    with pytest.raises(SpecError, match="an unrecorded dtype"):
        check_reference_dtype(scored(tmp_path / "old", [None]), TrainingSpec(policy="base"))
