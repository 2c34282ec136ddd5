"""The train stage's summary tables: the first and last logged windows of train/log side by side,
and the world check of every recipe before and after training."""

from __future__ import annotations

import statistics
from typing import Any

import pyarrow as pa

SHOWN = ("loss", "rewards/chosen", "rewards/rejected", "penalty", "grad_norm", "items_per_s")


def training_table(log: pa.Table) -> list[str]:
    """Lines: each metric at the first and the last logged step, pair accuracies and margins
    (level i against level j) included."""
    rows = log.to_pylist()
    if not rows:
        return []
    steps = sorted({row["step"] for row in rows})
    first, last = steps[0], steps[-1]
    values = {(row["step"], row["metric"]): row["value"] for row in rows}
    metrics = sorted({row["metric"] for row in rows})
    pairs = [m for m in metrics if m.startswith(("accuracy/", "margin/"))]
    shown = [m for m in SHOWN if m in metrics] + pairs + (["nll"] if "nll" in metrics else [])
    lines = [f"    {'metric':<20} {'step ' + str(first):>12} {'step ' + str(last):>12}"]
    for metric in shown:
        lines.append(
            f"    {metric:<20} {values.get((first, metric), float('nan')):>12.4f} "
            f"{values.get((last, metric), float('nan')):>12.4f}"
        )
    return lines


# (header, benchmark, split, metric): the bias probe shows the trigger and never the partner
COMPARED = (
    ("cooccur", "bias", "eval_bias_probe", "partner_rate"),
    ("MRHal", "mrhal", "eval_bias_probe", "score_cumulative"),
    ("MRHal_hal", "mrhal", "eval_bias_probe", "hallucination_rate_cumulative"),
    ("probe_CHi", "chair", "eval_bias_probe", "chair_i"),
    ("probe_rec", "chair", "eval_bias_probe", "recall"),
    ("iid_CHi", "chair", "eval_iid", "chair_i"),
    ("iid_rec", "chair", "eval_iid", "recall"),
    ("POPE_F1", "pope", "eval_iid", "f1"),
    ("adv_F1", "pope_adversarial", "eval_bias_probe", "f1"),
    ("repeat", "chair", "eval_iid", "duplicate_rate"),
    ("no_eos", "chair", "eval_iid", "no_eos_rate"),
)


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f}±{statistics.stdev(values):.3f}"


def comparison_table(
    metrics: pa.Table, runs: list[dict[str, Any]], before: str, control: str | None
) -> list[str]:
    """The world check before and after training: the starting policy, then each recipe (mean
    ± sd over its seeds), then each recipe minus `control` (its equal-step run) at the same
    seed (mean ± sd of the per-seed differences). cooccur: share of captions naming the
    partner on images with the trigger and without the partner; repeat: captions naming an
    object twice; no_eos: answers cut at the token limit."""
    values = {
        (r["model"], r["benchmark"], r["split"], r["metric"]): r["value"]
        for r in metrics.to_pylist()
    }

    def column(model: str) -> list[float | None]:
        return [values.get((model, b, s, m)) for _, b, s, m in COMPARED]

    labels: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        label = run["arm"] if run["budget"] == "steps" else f"{run['arm']} (equal time)"
        labels.setdefault(label, []).append(run)
    width = max([len(before) + 9, *(len(label) + 2 for label in labels), 20])
    head = f"{'model':<{width}} {'seeds':>5} {'steps':>5}" + "".join(
        f" {name:>11}" for name, *_ in COMPARED
    )
    lines = ["world check before and after training (mean ± sd over seeds):", head]
    start = column(before)
    lines.append(
        f"{before + ' (before)':<{width}} {'-':>5} {0:>5}"
        + "".join(f" {mean_sd([v] if v is not None else []):>11}" for v in start)
    )
    for label, group in labels.items():
        per_seed = [column(run["model"]) for run in group]
        cells = [[row[i] for row in per_seed if row[i] is not None] for i in range(len(COMPARED))]
        lines.append(
            f"{label:<{width}} {len(group):>5} {group[0]['steps']:>5}"
            + "".join(f" {mean_sd(c):>11}" for c in cells)
        )
    if control is None:
        return lines
    controls = {
        r["seed"]: r["model"] for r in runs if r["arm"] == control and r["budget"] == "steps"
    }
    lines.append(f"difference to {control}, paired by seed (mean ± sd):")
    for label, group in labels.items():
        if label == control:
            continue
        pairs = [
            (column(r["model"]), column(controls[r["seed"]]))
            for r in group
            if r["seed"] in controls
        ]
        cells = [
            [a[i] - b[i] for a, b in pairs if a[i] is not None and b[i] is not None]
            for i in range(len(COMPARED))
        ]
        lines.append(
            f"{label:<{width}} {len(pairs):>5} {group[0]['steps']:>5}"
            + "".join(f" {mean_sd(c):>11}" for c in cells)
        )
    return lines
