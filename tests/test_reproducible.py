"""Same spec and seed, same machine: the same datasets and metrics from every stage, whatever the
actor pool sizes (and so the order in which Ray Data's blocks finish)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from test_preference_stages import preference_spec

from amp_ray.pipeline import run_job
from amp_ray.spec import validate_spec
from amp_ray.storage import RunDir

pytestmark = pytest.mark.usefixtures("ray_session")

STAGES = ["data", "sft", "generate", "rank", "reference", "train", "evaluate"]
# what each stage makes, sorted by its key columns (rows are written in the order blocks finish)
OUTPUTS = {
    ("sft", "metrics"): ["model", "benchmark", "split", "metric"],
    ("generate", "candidates"): ["item_id"],
    ("rank", "preferences"): ["item_id"],
    ("reference", "preferences"): ["item_id"],
    ("train", "log"): ["model", "step", "metric"],
    ("evaluate", "answers"): ["model", "split", "task", "item_id"],
    ("evaluate", "metrics"): ["model", "benchmark", "split", "metric"],
}
# timing, never reproducible
TIMING = {"step_seconds", "items_per_s", "response_tokens_per_s", "tokens_per_s", "seconds"}


def pipeline_spec(run_dir: Path, actors: int) -> dict:
    raw = preference_spec(run_dir, STAGES)
    # one SFT run: MEG's second expert is the untuned model (a Ray Train run less, per run)
    del raw["models"]["large"], raw["sft"]["runs"]["expert_l"]
    raw["generation"]["meg"]["experts"] = ["expert_s", "small"]
    raw["sft"]["encode_actors"]["num_actors"] = actors
    # five generation pools of 2 actors beside the read tasks' CPU: 0.09 CPU each in both runs
    # (ten times 0.1 adds up to more than 1.0)
    raw["generation"]["actors"].update(num_actors=actors, num_cpus=0.09)
    raw["reference"]["actors"]["num_actors"] = actors
    raw["training"].update(
        max_steps=3, micro_batch_size=4, log_every=1, checkpoint_every=3,
        scaling={"num_workers": 1, "cpus_per_worker": 0.5},
        encode_actors={"num_actors": actors, "num_cpus": 0.25, "batch_size": 8},
        eval={"enabled": False},
    )  # fmt: skip
    raw["evaluation"] = {
        "benchmarks": ["chair", "pope", "mrhal"],
        "decoding": {"max_new_tokens": 6},
        "items_per_split": 2,
        "judge": {"kind": "ground_truth"},
        "actors": {"num_actors": actors, "num_cpus": 0.25, "batch_size": 4},
    }
    return raw


def table(run_dir: Path, stage: str, name: str) -> pa.Table:
    data = RunDir.open(str(run_dir)).dataset(stage, name).read_table()
    if stage == "train":  # the log: drop timing and memory metrics
        measured = pa.compute.is_in(data["metric"], pa.array(TIMING))
        measured = pa.compute.or_(measured, pa.compute.ends_with(data["metric"], "peak_rss_mb"))
        data = data.filter(pa.compute.invert(measured))
    keep = [c for c in data.column_names if c not in TIMING and c != "attempt"]
    return data.select(keep).sort_by([(key, "ascending") for key in OUTPUTS[(stage, name)]])


# 7-10 min on 2 cores (the tiny pipeline twice), by the machine's load: .ci/run runs it after the
# default suite
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_two_runs_with_other_pool_sizes_make_identical_datasets(tmp_path: Path) -> None:
    for actors, name in ((1, "one"), (2, "two")):
        run_job(validate_spec(pipeline_spec(tmp_path / name, actors)), echo=lambda _: None)
    for stage, name in OUTPUTS:
        first, second = table(tmp_path / "one", stage, name), table(tmp_path / "two", stage, name)
        assert first.num_rows > 0, (stage, name)
        assert first.equals(second), (stage, name)
