"""Recipes over seeds: the headline columns as mean ± sd over each recipe's training seeds, and
every two recipes' difference paired by seed with its 95% interval.

A recipe is a train-stage arm (train/runs names each model's arm and seed); a model that is no
arm (the policy before alignment) is a recipe of its own, with one value. Two recipes compare on
the seeds both have: the mean of the per-seed differences, and Student's t interval over them
(two-sided 95%). A difference whose interval holds 0 is within the noise of training seeds, and
is marked `~`; one outside it is not. At one seed there is no interval to give.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING

from scipy import stats

from amp_ray.report.blocks import Block, Heading, Para, Table
from amp_ray.report.terminal import (
    TERMINAL,
    TerminalColumn,
    fixed_width,
    rows_shown,
    terminal_columns,
    value,
    wrapped,
)
from amp_ray.training.tables import mean_sd
from amp_ray.world.generate import VALIDATION_SPLIT

if TYPE_CHECKING:  # document.py imports this module
    from amp_ray.report.document import ReportData

NOISE_MARK = "~"
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Recipe:
    name: str
    models: dict[int | None, tuple[str, str]]  # training seed -> (run, model); None: no seed

    @property
    def seeds(self) -> int:
        return len(self.models)


def recipes(data: ReportData) -> list[Recipe]:
    """The shown models grouped by train-stage arm, in the order the models are shown."""
    groups: dict[str, dict[int | None, tuple[str, str]]] = {}
    for run, model in rows_shown(data):
        label = data.label(run, model)
        groups.setdefault(data.arms.get(label, label), {})[data.seeds.get(label)] = (run, model)
    return [Recipe(name, models) for name, models in groups.items()]


def over_seeds(data: ReportData) -> bool:
    """Whether some recipe was trained and evaluated at more than one seed."""
    return any(recipe.seeds > 1 for recipe in recipes(data))


def recipe_values(
    data: ReportData, recipe: Recipe, column: TerminalColumn
) -> dict[int | None, float]:
    found = {seed: value(data, run, model, column) for seed, (run, model) in recipe.models.items()}
    return {seed: v for seed, v in found.items() if v is not None and not math.isnan(v)}


def summary_table(
    data: ReportData, columns: list[TerminalColumn]
) -> tuple[list[str], list[list[str]]]:
    """One row per recipe: its seed count and each column's mean ± sd over the seeds."""
    header = ["recipe", "seeds", *(c.label for c in columns)]
    rows = []
    for recipe in recipes(data):
        cells = [mean_sd(list(recipe_values(data, recipe, c).values())) for c in columns]
        rows.append([recipe.name, str(recipe.seeds), *cells])
    return header, rows


def paired_difference(a: dict[int | None, float], b: dict[int | None, float]) -> str:
    """a − b over the seeds both have: mean, and ± the 95% interval's half-width, `~` when the
    interval holds 0; the mean alone at one shared seed."""
    shared = sorted(seed for seed in a.keys() & b.keys() if seed is not None)
    differences = [a[seed] - b[seed] for seed in shared]
    if not differences:
        return "-"
    mean = statistics.fmean(differences)
    if len(differences) == 1:
        return f"{mean:+.3f}"
    quantile = stats.t.ppf(0.5 + CONFIDENCE / 2, len(differences) - 1)
    half = quantile * statistics.stdev(differences) / math.sqrt(len(differences))
    mark = NOISE_MARK if abs(mean) <= half else ""
    return f"{mean:+.3f}±{half:.3f}{mark}"


def paired_table(
    data: ReportData, columns: list[TerminalColumn]
) -> tuple[list[str], list[list[str]]]:
    """Every two recipes trained at the same seeds, later minus earlier (the control and the
    other arms come after the training block's own recipe, so rows read `mdpo − sft_control`)."""
    order = list(dict.fromkeys(data.arms.values()))  # the train stage's: its own recipe first
    trained = sorted(
        (r for r in recipes(data) if r.seeds > 1),
        key=lambda r: order.index(r.name) if r.name in order else len(order),
    )
    header = ["difference", *(c.label for c in columns)]
    rows = []
    for first, second in combinations(trained, 2):
        cells = [
            paired_difference(recipe_values(data, first, c), recipe_values(data, second, c))
            for c in columns
        ]
        rows.append([f"{first.name} − {second.name}", *cells])
    return header, rows


LEGEND = (
    "mean±sd over the training seeds; differences paired by seed, ± the half-width of their "
    f"{CONFIDENCE:.0%} interval (Student's t), {NOISE_MARK} = within noise (the interval holds 0)"
)


def seed_lines(data: ReportData) -> list[str]:
    """The terminal's headline over seeds: the recipes' table, then their paired differences."""
    columns = terminal_columns(data)
    lines = fixed_width(*summary_table(data, columns))
    header, rows = paired_table(data, columns)
    if rows:
        lines += ["", *fixed_width(header, rows)]
    legend = "; ".join(c.legend for c in columns)
    return lines + wrapped(f"{LEGEND}. {legend}") + validation_lines(data)


# -- the validation split: where recipes are chosen ------------------------------------------------

CHOICE = "MRHal_hal"  # the column a recipe is chosen by, lowest mean over seeds


def validation_columns(data: ReportData) -> list[TerminalColumn]:
    """The headline's columns on the world's validation split, where it was evaluated."""
    present = {
        (m.benchmark, m.metric) for m in data.metrics.values() if m.split == VALIDATION_SPLIT
    }
    return [
        TerminalColumn(label, benchmark, metric, (VALIDATION_SPLIT,))
        for label, benchmark, metric, _ in TERMINAL
        if (benchmark, metric) in present
    ]


def chosen_on_validation(data: ReportData) -> tuple[list[TerminalColumn], str | None]:
    """The validation columns, and the trained recipe (several seeds) with the lowest mean
    CHOICE on the validation split (None where the split or the seeds are missing)."""
    columns = validation_columns(data)
    column = next((c for c in columns if c.label == CHOICE), None)
    if column is None or not over_seeds(data):
        return columns, None
    means = {
        recipe.name: statistics.fmean(found)
        for recipe in recipes(data)
        if recipe.seeds > 1 and (found := list(recipe_values(data, recipe, column).values()))
    }
    return columns, min(means, key=lambda name: means[name]) if means else None


def validation_blocks(data: ReportData) -> list[Block]:
    """The recipes on the validation split, and the one chosen there: the eval splits above
    estimate how good the chosen recipe is; the validation split chose it."""
    columns, chosen = chosen_on_validation(data)
    if chosen is None:
        return []
    header, rows = paired_table(data, columns)
    return [
        Heading(2, "Chosen on validation"),
        Para(
            f"Chosen: {chosen}, the lowest mean {CHOICE} on the world's validation split "
            "(unbiased images that no headline number reads)."
        ),
        Table(*summary_table(data, columns)),
        Para("Differences on the validation split, paired by training seed:"),
        Table(header, rows),
    ]


def validation_lines(data: ReportData) -> list[str]:
    """The terminal's line on the validation choice, if the split was evaluated."""
    _, chosen = chosen_on_validation(data)
    return [] if chosen is None else [f"chosen on validation (lowest mean {CHOICE}): {chosen}"]
