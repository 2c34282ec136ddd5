"""A sweep's results: the objective of a trial, the sweep/results rows, and their summary over
seeds (mean ± sd per point and recipe) with the best point.

The objective is `sweep.metric` of the trial's own recipe (training.name): `benchmark/metric`
is the item-weighted mean over the benchmark's splits, `benchmark/split/metric` one split.
"""

from __future__ import annotations

import json
import math
import statistics
import textwrap
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from amp_ray.evaluation.scores import weighted_mean
from amp_ray.storage.run import RunDir
from amp_ray.sweep.trials import TrialPlan
from amp_ray.training.tables import mean_sd
from amp_ray.world.generate import is_reported

# (label, benchmark, metric, splits): the columns of the summary after the objective; splits as
# in the report's headline (the first that a trial has), none: the mean over every split
COLUMNS = (
    ("MRHal", "mrhal", "score_cumulative", ()),
    ("MRHal_hal", "mrhal", "hallucination_rate_cumulative", ()),
    ("POPE_F1", "pope", "f1", ("eval_iid",)),
    ("CHAIR_i", "chair", "chair_i", ("eval_iid",)),
    ("recall", "chair", "recall", ("eval_iid",)),
    ("cooccur", "bias", "partner_rate", ("eval_bias_probe",)),
)
OK = "ok"


def _usable(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def weighted(rows: Iterable[dict[str, Any]]) -> float | None:
    """The item-count-weighted mean of the rows' values that are numbers (not None or NaN)."""
    return weighted_mean([(r["value"], r.get("count")) for r in rows if _usable(r["value"])])


def parse_metric(metric: str) -> tuple[str, str | None, str]:
    """sweep.metric as (benchmark, split or None for every reported split, metric)."""
    parts = metric.split("/")
    return parts[0], parts[1] if len(parts) == 3 else None, parts[-1]


def objective(metrics: list[dict[str, Any]], model: str, metric: str) -> float | None:
    """`metric` (benchmark/metric or benchmark/split/metric) of `model` in metrics rows."""
    benchmark, split, name = parse_metric(metric)
    return weighted(
        r
        for r in metrics
        if r["model"] == model
        and r["benchmark"] == benchmark
        and r["metric"] == name
        and (r["split"] == split if split else is_reported(r["split"]))
    )


def result_rows(plan: TrialPlan, error: str | None) -> list[dict[str, Any]]:
    """The SWEEP_RESULTS rows of one trial: every evaluate metric of its models, or one row
    with its error."""
    common = {
        "trial": plan.name,
        "setting": plan.setting,
        "parameters": json.dumps(plan.overrides, sort_keys=True),
        "seed": plan.seed,
    }
    if error is not None:
        return [{**common, "status": error}]
    run: RunDir = plan.open_run_dir()
    arms = {}
    for row in run.dataset("train", "runs").read_table(["model", "arm", "budget"]).to_pylist():
        arms[row["model"]] = row["arm"] + (" (equal time)" if row["budget"] == "time" else "")
    metrics = run.dataset("evaluate", "metrics").read_table().to_pylist()
    return [
        {**common, "status": OK, "arm": arms.get(row["model"], row["model"]), **row}
        for row in metrics
    ]


@dataclass(frozen=True)
class Summary:
    """Per (point, recipe): each column's values over the seeds."""

    setting: str
    arm: str
    values: dict[str, list[float]]  # column label -> one value per seed that has it

    def cell(self, label: str) -> str:
        return mean_sd(self.values.get(label, []))


def column_value(rows: list[dict[str, Any]], benchmark: str, metric: str, splits: tuple) -> Any:
    chosen = [r for r in rows if r["benchmark"] == benchmark and r["metric"] == metric]
    for split in splits:
        picked = [r for r in chosen if r["split"] == split]
        if picked:
            return weighted(picked)
    return weighted(r for r in chosen if is_reported(r["split"]))


def summarise(rows: list[dict[str, Any]], metric: str) -> list[Summary]:
    """One Summary per point and recipe, in the order the rows first name them."""
    per_trial: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = defaultdict(dict)
    for row in rows:
        if row["status"] == OK:
            per_trial[(row["setting"], row["arm"])].setdefault(row["trial"], []).append(row)
    benchmark, split, name = parse_metric(metric)
    target = (benchmark, name, (split,) if split else ())
    out = []
    for (setting, arm), trials in per_trial.items():
        values: dict[str, list[float]] = defaultdict(list)
        for trial_rows in trials.values():
            for label, benchmark, name, splits in (("objective", *target), *COLUMNS):
                value = column_value(trial_rows, benchmark, name, splits)
                if value is not None:
                    values[label].append(value)
        out.append(Summary(setting, arm, dict(values)))
    return out


def best(summaries: list[Summary], own_arm: str, mode: str) -> Summary | None:
    """The point whose own recipe has the best mean objective over its seeds."""
    scored = [s for s in summaries if s.arm == own_arm and s.values.get("objective")]
    if not scored:
        return None
    key = lambda s: statistics.fmean(s.values["objective"])  # noqa: E731
    return min(scored, key=key) if mode == "min" else max(scored, key=key)


def summary_table(summaries: list[Summary]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: point, recipe, seeds, the objective and the COLUMNS (mean ± sd)."""
    labels = ["objective", *(c[0] for c in COLUMNS)]
    used = [label for label in labels if any(s.values.get(label) for s in summaries)]
    header = ["setting", "recipe", "seeds", *used]
    rows = [
        [
            s.setting or "-",
            s.arm,
            str(max((len(v) for v in s.values.values()), default=0)),
            *(s.cell(label) for label in used),
        ]
        for s in summaries
    ]
    return header, rows


def summary_lines(rows: list[dict[str, Any]], metric: str, mode: str, own_arm: str) -> list[str]:
    """The sweep's table for the terminal, the best point, and the failed trials."""
    summaries = summarise(rows, metric)
    header, body = summary_table(summaries)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = [
        f"sweep of {metric} ({mode}), mean ± sd over seeds:",
        *(
            "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *body]
        ),
    ]
    chosen = best(summaries, own_arm, mode)
    if chosen is not None:
        lines.append(f"  best for {own_arm}: {chosen.setting or '-'} ({chosen.cell('objective')})")
    failed = {r["trial"]: r for r in rows if r["status"] != OK}
    for row in failed.values():
        lines.append(f"  failed: {row['setting'] or '-'} seed {row['seed']}: {row['status']}")
    legend = "; ".join(f"{label} = {b}/{m}" for label, b, m, _ in COLUMNS)
    text = f"objective = {metric} of {own_arm}; {legend}"
    return lines + textwrap.wrap(text, 100, initial_indent="  ", subsequent_indent="  ")
