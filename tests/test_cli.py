"""The amp-ray command as a user meets it: exit codes, one clear message, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_world_spec

from amp_ray.cli import main
from amp_ray.storage.schemas import SCHEMAS

REPO = Path(__file__).resolve().parents[1]


def amp_ray(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console script, as a user would."""
    script = Path(sys.executable).parent / "amp-ray"
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )


def write_spec(path: Path, raw: dict) -> str:
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_validate_accepts_the_demo_spec() -> None:
    result = amp_ray("validate", "jobs/demo.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: jobs/demo.yaml: job 'demo', stages data")


def test_a_bad_spec_exits_2_with_field_paths_and_no_traceback(tmp_path: Path) -> None:
    raw = tiny_world_spec("runs/x")
    raw["training"] = {"beta": -1, "optimiser": {}}
    result = amp_ray("validate", write_spec(tmp_path / "bad.yaml", raw))
    assert result.returncode == 2
    assert "training.beta: Input should be greater than 0 (got -1)" in result.stderr
    assert (
        "training.optimiser: unknown key" in result.stderr
        and "did you mean 'optimizer'?" in result.stderr
    )
    assert "Traceback" not in result.stderr and result.stdout == ""


# Every rule a later stage enforces on an earlier stage's output fails validate (and so the start
# of `amp-ray run`, which validates first) with the key to change named.
CROSS_STAGE_RULES = {
    "training K = ranking K": (
        ["training.num_levels=3", "training.compare.arms.dpo.levels=[0,2]"],
        "training.num_levels (3) must equal ranking.num_levels (4)",
    ),
    "every arm reads the same K": (
        ["training.compare.arms.dpo.num_levels=3", "training.compare.arms.dpo.levels=[0,2]"],
        "compare.arms.dpo.num_levels differs from training.num_levels",
    ),
    "an arm's levels are in the data": (
        ["training.compare.arms.dpo.levels=[0,4]"],
        "compare.arms.dpo: training: Value error, levels [0, 4] must name at least 2",
    ),
    "reference dtype = the policy's training dtype": (
        ["models.tiny_m.dtype=bfloat16"],
        "models.tiny_m.dtype bfloat16 scores the reference log-probs, but training.precision "
        "fp32 trains the policy in float32",
    ),
    "models named exist": (
        ["training.policy=expert_xl"],
        "training.policy refers to model 'expert_xl'",
    ),
}


@pytest.mark.parametrize("rule", CROSS_STAGE_RULES)
def test_validate_checks_each_cross_stage_rule_before_any_stage(rule: str) -> None:
    overrides, message = CROSS_STAGE_RULES[rule]
    result = amp_ray("validate", "jobs/demo.yaml", *overrides)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr


def test_run_refuses_a_bad_override_before_starting_anything(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", tiny_world_spec(str(tmp_path / "run")))
    result = amp_ray("run", spec, "data.world.splits.sft=many")
    assert (
        result.returncode == 2
        and "data.world.splits.sft: Input should be a valid integer" in result.stderr
    )
    assert not (tmp_path / "run").exists()


def test_debug_adds_the_traceback(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", {"name": "x"})
    assert "Traceback" not in amp_ray("validate", spec).stderr
    assert "Traceback" in amp_ray("validate", spec, "--debug").stderr


def test_a_missing_bucket_ends_with_one_message(tmp_path: Path, s3_endpoint: str) -> None:
    raw = tiny_world_spec("s3://bucket-that-is-not-there/run")
    raw["storage"]["endpoint_url"] = s3_endpoint
    result = amp_ray("run", write_spec(tmp_path / "s.yaml", raw))
    assert result.returncode == 1
    assert "amp-ray: error: bucket 'bucket-that-is-not-there' does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_credentials_end_with_one_message(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    raw = tiny_world_spec(f"s3://{s3_bucket}/run")
    raw["storage"]["endpoint_url"] = s3_endpoint
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_ACCESS") and k != "AWS_SECRET_ACCESS_KEY"
    }
    result = amp_ray("run", write_spec(tmp_path / "s.yaml", raw), env=env)
    assert result.returncode == 1 and "error: no credentials to write under s3://" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_data_path_ends_with_one_message(tmp_path: Path) -> None:
    raw = {
        "name": "imp",
        "stages": ["data"],
        "storage": {"run_dir": str(tmp_path / "run")},
        "data": {"source": "parquet", "path": str(tmp_path / "absent")},
    }
    result = amp_ray("run", write_spec(tmp_path / "s.yaml", raw))
    assert result.returncode == 1 and "absent does not exist" in result.stderr
    assert "hint: fix data.path" in result.stderr and "Traceback" not in result.stderr


def test_an_unavailable_stage_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path / "s.yaml", tiny_world_spec(str(tmp_path / "run")))
    assert main(["run", spec, "--stage", "nope"]) == 2
    assert "unknown stage 'nope'" in capsys.readouterr().err


def test_schemas_prints_every_dataset_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemas"]) == 0
    out = capsys.readouterr().out
    for name in SCHEMAS:
        assert f"### `{name}`" in out
