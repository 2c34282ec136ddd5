"""The report's sweep section: the summary over seeds, the best point, every trial, and a plot
of the objective per point and recipe (mean ± sd over seeds).

It reads sweep/results and the sweep stage's record (its metric, mode and training.name).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from amp_ray.report import plots
from amp_ray.report.blocks import Block, Heading, Image, Para, Table
from amp_ray.storage.run import RunDir
from amp_ray.sweep.results import OK, Summary, best, summarise, summary_table

PLOT = "sweep"


@dataclass(frozen=True)
class SweepData:
    rows: list[dict[str, Any]]  # sweep/results
    metric: str
    mode: str
    own_arm: str

    def summaries(self) -> list[Summary]:
        return summarise(self.rows, self.metric)


def read_sweep(run: RunDir) -> SweepData | None:
    """The run's sweep results, or None when it has none."""
    results, record = run.dataset("sweep", "results"), run.record("sweep")
    if not results.exists or record is None:
        return None
    config = record.config
    return SweepData(
        results.read_table().to_pylist(),
        config["sweep"]["metric"],
        config["sweep"]["mode"],
        config["training"]["name"],
    )


def sweep_blocks(sweeps: dict[str, SweepData], drawn: bool) -> list[Block]:
    """One subsection per run that has a sweep; `drawn`: the plot's PNG exists."""
    blocks: list[Block] = []
    for label, sweep in sweeps.items():
        summaries = sweep.summaries()
        title = "Sweep" if len(sweeps) == 1 else f"Sweep of {label}"
        blocks += [Heading(2, title)]
        text = (
            f"Objective: {sweep.metric} of {sweep.own_arm} ({sweep.mode}); every cell is the "
            "mean ± sd over the trials' seeds (a single value: one seed)."
        )
        chosen = best(summaries, sweep.own_arm, sweep.mode)
        if chosen is not None:
            text += f" Best point: {chosen.setting or '-'} ({chosen.cell('objective')})."
        blocks += [Para(text), Table(*summary_table(summaries))]
        if drawn:
            blocks.append(Image(f"{PLOT}.png", "objective per point and recipe"))
        blocks += [Heading(3, "Trials"), Table(*trial_table(sweep))]
    return blocks


def trial_table(sweep: SweepData) -> tuple[list[str], list[list[str]]]:
    """One row per trial: its point, seed, status and its own recipe's objective."""
    rows = []
    for trial in dict.fromkeys(r["trial"] for r in sweep.rows):
        mine = [r for r in sweep.rows if r["trial"] == trial]
        own = [r for r in mine if r.get("arm") == sweep.own_arm]
        summary = summarise(own, sweep.metric) if mine[0]["status"] == OK else []
        value = summary[0].cell("objective") if summary else "-"
        first = mine[0]
        rows.append([trial, first["setting"] or "-", str(first["seed"]), first["status"], value])
    return ["trial", "setting", "seed", "status", "objective"], rows


def sweep_plot(sweeps: dict[str, SweepData]) -> plots.Plot:
    """Grouped bars: a group per point, a bar per recipe, the objective's mean and sd."""
    name, title = PLOT, "Sweep: objective per point and recipe"
    bars: list[tuple[str, str, float, float]] = []  # point, recipe, mean, sd
    metric = ""
    for label, sweep in sweeps.items():
        metric = sweep.metric
        for s in sweep.summaries():
            values = s.values.get("objective", [])
            if values:
                point = s.setting or "-"
                point = point if len(sweeps) == 1 else f"{label}: {point}"
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                bars.append((point, s.arm, statistics.fmean(values), sd))
    if not bars:
        return plots.Plot(name, title, skipped="no trial has its objective")
    return plots.grouped_bars(name, title, bars, f"{metric} (mean ± sd over seeds)")
