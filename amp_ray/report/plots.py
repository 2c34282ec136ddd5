"""The report's figures, as PNG bytes: training loss, per-pair reward accuracy, the headline
metrics (one panel per metric, every recipe on it, over seeds), score by question type, and a
sweep's objective per point.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot): no display is needed and no
global backend or figure state is touched, so the driver process and the tests can draw safely.
`figures` picks each figure's data out of document.py's ReportData; the drawing functions take plain
Python data and return a `Plot`, drawn or skipped with the reason the report prints.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:  # document.py imports this module: no import back at run time
    from amp_ray.report.document import ReportData

# More lines (or bars per group) than this and a figure stops being readable: models are then
# averaged over the seeds of their arm (train/runs' arm column).
MAX_SERIES = 8
PAIR = re.compile(r"^accuracy/(\d+)-(\d+)$")

# model label -> its step -> value, per metric
Curves = dict[str, dict[str, dict[int, float]]]


@dataclass(frozen=True)
class Plot:
    name: str  # file stem: <name>.png
    title: str
    png: bytes | None = None
    skipped: str | None = None  # why it was not drawn
    note: str = ""


def index_log(rows: Iterable[dict]) -> Curves:
    """train/log rows (model already labelled by run) as model -> metric -> step -> value."""
    curves: Curves = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        if row["value"] is not None and row["metric"]:
            curves[row["model"]][row["metric"]][int(row["step"])] = float(row["value"])
    return curves


def group_models(models: list[str], arms: dict[str, str]) -> tuple[dict[str, list[str]], str]:
    """Series to draw: one per model, or, past MAX_SERIES models, one per arm (models that
    train/runs does not name stay alone). Returns the groups and a note saying which."""
    if len(models) <= MAX_SERIES or not any(model in arms for model in models):
        return {model: [model] for model in models}, ""
    groups: dict[str, list[str]] = {}
    for model in models:
        groups.setdefault(arms.get(model, model), []).append(model)
    note = (
        f"{len(models)} models are too many to draw one by one: each line or bar is the mean "
        "over the seeds of one arm (train/runs' arm column); models outside train/runs are "
        "drawn alone."
    )
    return groups, note


def mean_curve(curves: Curves, members: list[str], metric: str) -> tuple[list[int], list[float]]:
    """The metric at every step any member logged it, averaged over the members that did."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for model in members:
        for step, value in curves.get(model, {}).get(metric, {}).items():
            by_step[step].append(value)
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[step]) for step in steps]


def loss_plot(curves: Curves, arms: dict[str, str], why_empty: str) -> Plot:
    name, title = "training_loss", "Training loss"
    models = [model for model in curves if "loss" in curves[model]]
    if not models:
        return Plot(name, title, skipped=why_empty if not curves else "train/log has no loss rows")
    groups, note = group_models(models, arms)
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    for (label, members), color in zip(groups.items(), _colors(len(groups)), strict=True):
        ax.plot(*mean_curve(curves, members, "loss"), label=label, color=color, linewidth=1.2)
    ax.set(xlabel="optimizer step", ylabel="loss", title=title)
    _legend(ax, len(groups))
    return Plot(name, title, _png(fig), note=note)


def pair_key(metric: str) -> tuple[int, int]:
    match = PAIR.match(metric)
    return (int(match.group(1)), int(match.group(2))) if match else (-1, -1)


def accuracy_plot(curves: Curves, arms: dict[str, str], why_empty: str) -> Plot:
    """One panel per model (or arm), one line per level pair i-j: the share of items whose
    implicit reward ranks level i above level j."""
    name, title = "pair_accuracy", "Reward accuracy per level pair"
    models = [m for m in curves if any(PAIR.match(metric) for metric in curves[m])]
    if not models:
        reason = why_empty if not curves else "train/log has no accuracy/<i>-<j> rows"
        return Plot(name, title, skipped=reason)
    groups, note = group_models(models, arms)
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = _figure(4.4 * ncols, 3.3 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for ax, (label, members) in zip(axes.flat, groups.items(), strict=False):
        pairs = sorted(
            {m for model in members for m in curves[model] if PAIR.match(m)}, key=pair_key
        )
        for metric, color in zip(pairs, _colors(len(pairs)), strict=True):
            ax.plot(
                *mean_curve(curves, members, metric),
                label=metric.removeprefix("accuracy/"),
                color=color,
                linewidth=1.2,
            )
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(title="pair", fontsize=7, title_fontsize=7, loc="lower right")
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy", fontsize=8)
    fig.suptitle(title)
    return Plot(name, title, _png(fig), note=note)


def headline_plot(panels: list[tuple[str, list[tuple[str, list[float]]]]]) -> Plot:
    """One panel per headline metric, every recipe on it: the mean over its seeds as a bar, the
    sd as a whisker where there are several seeds, each seed's value as a dot.
    panels: (metric legend, [(recipe, values over its seeds)])."""
    name, title = "headline_metrics", "Headline metrics: every model on the same metric"
    panels = [(legend, bars) for legend, bars in panels if bars]
    if not panels:
        return Plot(name, title, skipped="no headline metric in these runs")
    columns = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / columns)
    recipes_at_most = max(len(bars) for _, bars in panels)
    fig = _figure(min(30.0, max(6.0, 0.6 * recipes_at_most + 2) * columns), 3.4 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    names = list(dict.fromkeys(label for _, bars in panels for label, _ in bars))
    color_of = dict(zip(names, _colors(len(names)), strict=True))  # a recipe's colour everywhere
    for ax, (legend, bars) in zip(axes, panels, strict=False):
        labels = [label for label, _ in bars]
        means = [statistics.fmean(values) for _, values in bars]
        errors = [statistics.stdev(values) if len(values) > 1 else 0.0 for _, values in bars]
        colors = [color_of[label] for label in labels]
        container = ax.bar(range(len(bars)), means, yerr=errors, capsize=3, color=colors)
        ax.bar_label(container, fmt="%.3f", fontsize=7)
        for x, (_, values) in enumerate(bars):
            ax.plot([x] * len(values), values, "k.", markersize=4)
        ax.set_xticks(range(len(bars)), labels)
        _rotate_ticks(ax, len(bars) if max(map(len, labels)) < 12 else 6)
        ax.set_title(legend, fontsize=9)
        ax.margins(y=0.15)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    note = "Bars: mean over a recipe's training seeds; whiskers: sd; dots: each seed."
    return Plot(name, title, _png(fig), note=note)


def score_type_plot(panels: dict[str, dict[str, dict[str, float]]], arms: dict[str, str]) -> Plot:
    """Grouped bars: per panel (benchmark and split), question types on x, one bar per model."""
    name, title = "score_by_type", "Score by question type"
    if not panels:
        return Plot(name, title, skipped="no mrhal or mmhal score@<type> metrics")
    fig = _figure(10, 3.8 * len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    notes = []
    for ax, (panel, scores) in zip(axes, panels.items(), strict=True):
        groups, note = group_models(list(scores), arms)
        notes.append(note)
        types = sorted({kind for values in scores.values() for kind in values})
        width = min(0.25, 0.8 / len(groups))  # a lone bar stays a bar, not a wall
        for g, ((label, members), color) in enumerate(
            zip(groups.items(), _colors(len(groups)), strict=True)
        ):
            heights = [_mean([scores[m].get(kind) for m in members]) for kind in types]
            xs = [t + width * (g + 0.5 - len(groups) / 2) for t in range(len(types))]
            ax.bar(xs, heights, width=width, label=label, color=color)
        ax.set_xticks(range(len(types)), types)
        ax.set_xlim(-0.6, len(types) - 0.4)  # else one lone bar is stretched across the panel
        _rotate_ticks(ax, len(types))
        ax.set(ylabel="score (0-6)", title=panel, ylim=(0, 6.2))  # the judges' rubric range
        _legend(ax, len(groups))
    fig.suptitle(title)
    return Plot(name, title, _png(fig), note=next((n for n in notes if n), ""))


def grouped_bars(
    name: str, title: str, bars: list[tuple[str, str, float, float]], ylabel: str
) -> Plot:
    """Bars grouped on x by their first field, one colour per second field, with sd whiskers:
    (group, series, mean, sd)."""
    groups = list(dict.fromkeys(g for g, *_ in bars))
    series = list(dict.fromkeys(s for _, s, *_ in bars))
    fig = _figure(min(30.0, max(6.0, 0.9 * len(groups) * max(1, len(series)) + 2)), 4.5)
    ax = fig.add_subplot()
    width = min(0.25, 0.8 / len(series))
    for i, (label, color) in enumerate(zip(series, _colors(len(series)), strict=True)):
        chosen = [(groups.index(g), m, sd) for g, s, m, sd in bars if s == label]
        xs = [x + width * (i + 0.5 - len(series) / 2) for x, *_ in chosen]
        container = ax.bar(
            xs, [m for _, m, _ in chosen], width=width, yerr=[sd for *_, sd in chosen],
            capsize=3, color=color, label=label,
        )  # fmt: skip
        ax.bar_label(container, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    # points are long labels (beta=0.1 levels=[0, 3]): tilt them before they run into each other
    _rotate_ticks(ax, len(groups) if max(map(len, groups)) < 12 else 6)
    ax.set(ylabel=ylabel, title=title)
    ax.margins(y=0.12)
    _legend(ax, len(series))
    return Plot(name, title, _png(fig))


def figures(data: ReportData) -> list[Plot]:
    without_log = [label for label, read in data.read.items() if "train/log" not in read]
    why = f"no train/log in {', '.join(without_log)} (the train stage has not run there)"
    curves = index_log(data.log)
    training = [
        loss_plot(curves, data.arms, why),
        accuracy_plot(curves, data.arms, why),
    ]
    if data.log and without_log:  # drawn from the runs that have it; say which lack it
        note = f"Runs without train/log, not drawn: {', '.join(without_log)}."
        training = [
            dataclasses.replace(p, note=f"{p.note} {note}".strip()) if p.png else p
            for p in training
        ]
    drawn = [*training, headline_plot(headline_panels(data)), score_plot(data)]
    if data.sweeps:
        from amp_ray.report.sweep import sweep_plot

        drawn.append(sweep_plot(data.sweeps))
    return drawn


def headline_panels(data: ReportData) -> list[tuple[str, list[tuple[str, list[float]]]]]:
    """Per headline column (the terminal's): every recipe's values over its seeds."""
    from amp_ray.report.seeds import recipe_values, recipes
    from amp_ray.report.terminal import terminal_columns

    panels = []
    for column in terminal_columns(data):
        bars = []
        for recipe in recipes(data):
            values = list(recipe_values(data, recipe, column).values())
            if values:
                bars.append((recipe.name, values))
        panels.append((column.legend, bars))
    return panels


def score_plot(data: ReportData) -> Plot:
    panels: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for m in data.metrics.values():
        if (
            m.benchmark in ("mrhal", "mmhal")
            and m.metric.startswith("score@")
            and m.value is not None
        ):
            kind = m.metric.removeprefix("score@")
            panels[f"{m.benchmark} ({m.split})"][data.label(m.run, m.model)][kind] = m.value
    return score_type_plot({k: dict(v) for k, v in panels.items()}, data.arms)


def _mean(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else math.nan


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _colors(n: int) -> list[tuple[float, ...]]:
    # tab10 while it lasts; tab20 keeps arms of one figure apart up to 20
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _legend(ax: Axes, entries: int) -> None:
    if entries > 4:  # beside the plot, so it never hides the lines
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8)


def _rotate_ticks(ax: Axes, count: int) -> None:
    if count > 5:
        for tick in ax.get_xticklabels():
            tick.set_rotation(40)
            tick.set_horizontalalignment("right")
