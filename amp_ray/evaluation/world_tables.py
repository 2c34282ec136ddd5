"""Tables of world metrics for the terminal: one row per model, the numbers that matter most."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from amp_ray.spec import JobSpec

# (header, benchmark, split, metric)
SFT_COLUMNS = (
    ("CHAIR_i", "chair", "eval_iid", "chair_i"),
    ("recall", "chair", "eval_iid", "recall"),
    ("POPE_F1", "pope", "eval_iid", "f1"),
    ("adv_F1", "pope_adversarial", "eval_bias_probe", "f1"),
    ("cooccur", "bias", "eval_bias_probe", "partner_rate"),
    ("control", "bias", "eval_control", "partner_rate"),
    ("MRHal", "mrhal", "eval_bias_probe", "score_cumulative"),
    ("MRHal_hal", "mrhal", "eval_bias_probe", "hallucination_rate_cumulative"),
    ("exact", "chair", "eval_iid", "exact_match"),
    ("no_eos", "chair", "eval_iid", "no_eos_rate"),
)


def lookup(metrics: pa.Table) -> dict[tuple[str, str, str, str], float]:
    return {
        (r["model"], r["benchmark"], r["split"], r["metric"]): r["value"]
        for r in metrics.to_pylist()
    }


def sft_table(metrics: pa.Table, spec: JobSpec, details: dict[str, dict[str, Any]]) -> list[str]:
    """The world check: size, data and steps of each SFT model beside its hallucination metrics.

    cooccur = share of captions naming the partner on images with the trigger and without the
    partner (the planted bias); control = the same share on images with neither.
    """
    values = lookup(metrics)
    head = f"{'model':<12} {'params':>8} {'data':>5} {'steps':>6} {'loss':>6}"
    head += "".join(f" {name:>8}" for name, *_ in SFT_COLUMNS)
    lines = [head]
    for name, run in spec.sft.runs.items():
        final = details.get(name, {})
        params = f"{final['params'] / 1e6:.2f}M" if "params" in final else "-"
        loss = f"{final['loss']:.3f}" if "loss" in final else "-"
        row = f"{name:<12} {params:>8} {run.data_fraction:>5.0%} {run.steps:>6} {loss:>6}"
        for _, benchmark, split, metric in SFT_COLUMNS:
            value = values.get((name, benchmark, split, metric))
            row += f" {value:>8.3f}" if value is not None else f" {'-':>8}"
        lines.append(row)
    if not values:
        lines.append(
            "(no world ground truth for this data: metrics are computed on the world only)"
        )
    return lines
