"""The train stage's plan (which models, how many steps) and its before/after table."""

from __future__ import annotations

import pyarrow as pa
import pytest

from amp_ray.spec.alignment import TrainingSpec
from amp_ray.storage.schemas import METRICS
from amp_ray.training.runs import equal_step_runs, equal_time_runs
from amp_ray.training.tables import comparison_table


def compared(**compare: object) -> TrainingSpec:
    return TrainingSpec(
        policy="p",
        max_steps=300,
        compare={
            "arms": {"dpo": {"loss": "dpo", "levels": [0, 3]}, "control": {"loss": "sft"}},
            "control": "control",
            **compare,
        },
    )


def test_every_arm_trains_at_every_seed_and_the_own_recipe_keeps_its_name() -> None:
    runs = equal_step_runs(compared(seeds=[3, 4]))
    assert [(r.model, r.arm, r.seed, r.steps) for r in runs] == [
        ("aligned", "aligned", 3, 300),
        ("dpo-seed3", "dpo", 3, 300),
        ("control-seed3", "control", 3, 300),
        ("aligned-seed4", "aligned", 4, 300),
        ("dpo-seed4", "dpo", 4, 300),
        ("control-seed4", "control", 4, 300),
    ]
    assert [r.model for r in equal_step_runs(TrainingSpec(policy="p"))] == ["aligned"]


def test_equal_time_runs_take_the_own_recipes_wall_time() -> None:
    # MDPO steps cost 0.3 s (median of 0.2, 0.3, 0.9), DPO 0.2 s, the control 0.1 s: in 300 MDPO
    # steps' time DPO makes 300·0.3/0.2 = 450 steps and the control 900.
    training = compared(seeds=[0])
    seconds = {"aligned": [0.2, 0.3, 0.9], "dpo": [0.2], "control": [0.1]}
    runs = equal_time_runs(training, seconds)
    assert [(r.model, r.steps, r.budget) for r in runs] == [
        ("dpo-time-seed0", 450, "time"),
        ("control-time-seed0", 900, "time"),
    ]
    assert runs[0].label == "dpo (equal time)"
    assert equal_time_runs(compared(equal_time=False), seconds) == []


def test_arms_are_checked_as_training_blocks() -> None:
    with pytest.raises(ValueError, match=r"compare.arms.dpo: .*loss dpo takes 2 levels"):
        TrainingSpec(policy="p", compare={"arms": {"dpo": {"loss": "dpo"}}})
    with pytest.raises(ValueError, match=r"compare.control 'sft' is not one of"):
        TrainingSpec(
            policy="p",
            compare={"arms": {"dpo": {"loss": "dpo", "levels": [0, 1]}}, "control": "sft"},
        )
    with pytest.raises(ValueError, match=r"compare.arms.x: compare, name, policy, eval and online"):
        TrainingSpec(policy="p", compare={"arms": {"x": {"policy": "q"}}})
    # nested keys merge: the arm keeps the block's penalty weight and changes the rest
    spec = TrainingSpec(
        policy="p",
        penalty={"weight": 0.1},
        compare={"arms": {"spread": {"penalty": {"spread_over_pairs": True}}}},
    )
    assert spec.arm("spread").penalty.weight == 0.1 and spec.arm("spread").penalty.spread_over_pairs


def metric_rows(model: str, cooccur: float, recall: float) -> list[dict]:
    return [
        {
            "model": model,
            "benchmark": "bias",
            "split": "eval_bias_probe",
            "metric": "partner_rate",
            "value": cooccur,
            "count": 10,
        },
        {
            "model": model,
            "benchmark": "chair",
            "split": "eval_iid",
            "metric": "recall",
            "value": recall,
            "count": 10,
        },
    ]


def test_the_comparison_table_gives_mean_sd_and_paired_differences() -> None:
    runs = [
        {"model": m, "arm": a, "seed": s, "steps": 300, "budget": "steps"}
        for m, a, s in [
            ("aligned", "aligned", 0),
            ("aligned-seed1", "aligned", 1),
            ("control-seed0", "control", 0),
            ("control-seed1", "control", 1),
        ]
    ]
    rows = metric_rows("base", 0.70, 0.60)
    rows += metric_rows("aligned", 0.20, 0.70) + metric_rows("aligned-seed1", 0.30, 0.74)
    rows += metric_rows("control-seed0", 0.30, 0.70) + metric_rows("control-seed1", 0.50, 0.70)
    lines = comparison_table(pa.Table.from_pylist(rows, schema=METRICS), runs, "base", "control")
    split = next(i for i, line in enumerate(lines) if line.startswith("difference to control"))
    means = {line.split()[0]: line for line in lines[:split]}
    differences = {line.split()[0]: line for line in lines[split + 1 :]}
    assert means["base"].split()[4] == "0.700"  # "base (before) - 0 0.700 ..."
    # aligned over seeds: cooccur (0.2, 0.3) -> 0.250±0.071; iid recall (0.70, 0.74) -> 0.720±0.028
    assert means["aligned"].split()[3] == "0.250±0.071"
    assert "0.720±0.028" in means["aligned"]
    # paired with the control at the same seed: cooccur (0.2−0.3, 0.3−0.5) -> −0.150±0.071,
    # iid recall (0.70−0.70, 0.74−0.70) -> 0.020±0.028
    assert differences["aligned"].split()[3] == "-0.150±0.071"
    assert "0.020±0.028" in differences["aligned"]
    assert "control" not in differences
