"""The report of one or more runs: every metric of every model, and the training curves.

    paths = write_report(["runs/demo"], "runs/demo/report")   # report.md, report.html, *.png
    amp-ray report runs/demo [runs/other ...] [--out DIR]

It reads, in each run directory, whichever of sft/metrics, train/metrics, evaluate/metrics,
train/log, train/runs and sweep/results exist. When a model has the same (benchmark, split,
metric) in several stages' metrics, the evaluate stage's value is shown over train's over sft's:
the evaluate stage runs the full benchmarks, the world check of sft and train is the quick look
on the way. The report says which values were shadowed so.
"""

from __future__ import annotations

import html
import math
import posixpath
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from amp_ray.errors import DataError, StorageError
from amp_ray.report import plots
from amp_ray.report.blocks import (
    FAILED,
    Block,
    Heading,
    Image,
    Items,
    Para,
    Table,
    fmt,
    split_matches,
)
from amp_ray.report.seeds import (
    LEGEND,
    over_seeds,
    paired_table,
    seed_lines,
    summary_table,
    validation_blocks,
)
from amp_ray.report.sweep import PLOT, SweepData, read_sweep, sweep_blocks
from amp_ray.report.terminal import model_table, terminal_columns, terminal_lines
from amp_ray.storage.location import Location, open_location
from amp_ray.storage.run import RunDir
from amp_ray.world.generate import reported

STAGES = ("sft", "train", "evaluate")  # metrics sources, a later stage's value wins
Key = tuple[str, str, str, str, str]  # run, model, benchmark, split, metric

# (short label, benchmark, metric, splits): the headline columns, in order. Splits: which to
# show ("name*" is a prefix); () shows every split; when none matches, every split is shown.
HEADLINE = (
    ("MRHal", "mrhal", "score_cumulative", ()),
    ("MRHal_hal", "mrhal", "hallucination_rate_cumulative", ()),
    ("MMHal", "mmhal", "score", ()),
    ("MMHal_hal", "mmhal", "hallucination_rate", ()),
    ("POPE_F1", "pope", "f1", ("eval_iid", "pope_*")),
    ("CHAIR_i", "chair", "chair_i", ("eval_iid",)),
    ("CHAIR_s", "chair", "chair_s", ("eval_iid",)),
    ("recall", "chair", "recall", ("eval_iid",)),
    ("cooccur", "bias", "partner_rate", ("eval_bias_probe",)),
)
PRECEDENCE_NOTE = (
    "When a model has the same benchmark, split and metric in several stages' metrics, the "
    "value of evaluate/metrics is shown over train/metrics over sft/metrics."
)


@dataclass(frozen=True)
class Metric:
    run: str
    model: str
    benchmark: str
    split: str
    metric: str
    value: float | None
    count: int | None
    stage: str

    @property
    def key(self) -> Key:
        return (self.run, self.model, self.benchmark, self.split, self.metric)


@dataclass
class ReportData:
    runs: dict[str, str]  # run label -> its URI
    metrics: dict[Key, Metric] = field(default_factory=dict)  # after precedence
    shadowed: list[tuple[Metric, Metric]] = field(default_factory=list)  # (shown, hidden)
    log: list[dict[str, Any]] = field(default_factory=list)  # train/log rows, models labelled
    arms: dict[str, str] = field(default_factory=dict)  # model label -> arm, from train/runs
    seeds: dict[str, int] = field(default_factory=dict)  # model label -> its training seed
    read: dict[str, list[str]] = field(default_factory=dict)  # run label -> datasets read
    sweeps: dict[str, SweepData] = field(default_factory=dict)  # run label -> its sweep
    judges: dict[str, list[str]] = field(default_factory=dict)  # run label -> judge and prompts

    def label(self, run: str, model: str) -> str:
        return model if len(self.runs) == 1 else f"{run}/{model}"

    def models(self) -> list[tuple[str, str]]:
        """(run, model) in reading order: sft's models first, then train's, then evaluate's."""
        return list(dict.fromkeys((m.run, m.model) for m in self.metrics.values()))

    def value(self, run: str, model: str, benchmark: str, split: str, metric: str) -> float | None:
        found = self.metrics.get((run, model, benchmark, split, metric))
        return found.value if found is not None else None


@dataclass(frozen=True)
class Column:
    label: str  # short, for the terminal
    benchmark: str
    split: str
    metric: str

    @property
    def title(self) -> str:
        return f"{self.benchmark}/{self.split}/{self.metric}"


@dataclass(frozen=True)
class ReportPaths:
    markdown: str
    html: str
    images: dict[str, str]  # plot name -> path of its PNG
    skipped: dict[str, str]  # plot name -> why it was not drawn
    headline: list[str] = field(default_factory=list)  # headline_lines of the same data

    def all(self) -> list[str]:
        return [self.markdown, self.html, *self.images.values()]


# -- reading ----------------------------------------------------------------------------------


def load(runs: Sequence[str], storage: Any = None) -> ReportData:
    """Every metrics dataset, train/log and train/runs of `runs` that exists."""
    if not runs:
        raise DataError("no run directory given", hint="name at least one RUN")
    opened = [_open_run(uri, storage) for uri in runs]
    labels = run_labels([run.location for run in opened])
    data = ReportData(runs={label: run.uri for label, run in zip(labels, opened, strict=True)})
    for label, run in zip(labels, opened, strict=True):
        data.read[label] = []
        _read_metrics(data, label, run)
        _read_training(data, label, run)
        _read_judges(data, label, run)
        sweep = read_sweep(run)
        if sweep is not None:
            data.read[label].append("sweep/results")
            data.sweeps[label] = sweep
    if not data.metrics and not data.log and not data.sweeps:
        raise DataError(
            f"{', '.join(runs)}: no sft/, train/ or evaluate/metrics and no train/log",
            hint="run the sft, train or evaluate stage first",
        )
    return data


def _open_run(uri: str, storage: Any) -> RunDir:
    run = RunDir.open(uri, storage, check=False)  # a report only reads the runs
    if not run.location.exists():
        raise StorageError(f"run directory {uri} does not exist", hint="check RUN")
    return run


def run_labels(locations: list[Location]) -> list[str]:
    """Each run's folder name; the full URI where two runs share a folder name."""
    names = [posixpath.basename(loc.path.rstrip("/")) or loc.uri for loc in locations]
    return [
        name if names.count(name) == 1 else loc.uri
        for name, loc in zip(names, locations, strict=True)
    ]


def _read_metrics(data: ReportData, label: str, run: RunDir) -> None:
    for stage in STAGES:
        dataset = run.dataset(stage, "metrics")
        if not dataset.exists:
            continue
        data.read[label].append(f"{stage}/metrics")
        for row in dataset.read_table().to_pylist():
            metric = Metric(
                label,
                row["model"],
                row["benchmark"] or "-",
                row["split"] or "-",
                row["metric"] or "-",
                row["value"],
                row["count"],
                stage,
            )
            earlier = data.metrics.get(metric.key)
            if earlier is not None and earlier.stage != stage:
                data.shadowed.append((metric, earlier))
            data.metrics[metric.key] = metric


def _read_judges(data: ReportData, label: str, run: RunDir) -> None:
    """Who rated the open answers, with the prompt it was sent (evaluate/judgments' judge)."""
    judgments = run.dataset("evaluate", "judgments")
    if judgments.exists:
        judges = judgments.read_table(["judge"]).column("judge").to_pylist()
        data.judges[label] = sorted(set(judges))


def _read_training(data: ReportData, label: str, run: RunDir) -> None:
    # data.runs already names every run, so data.label gives each model its final label
    log = run.dataset("train", "log")
    if log.exists:
        data.read[label].append("train/log")
        for row in log.read_table(["model", "step", "metric", "value"]).to_pylist():
            data.log.append({**row, "model": data.label(label, row["model"])})
    runs = run.dataset("train", "runs")
    if runs.exists:
        data.read[label].append("train/runs")
        for row in runs.read_table(["model", "arm", "seed", "budget"]).to_pylist():
            arm = row["arm"] or row["model"]
            if row["budget"] == "time":  # the equal-time runs of an arm are a recipe apart
                arm = f"{arm} (equal time)"
            data.arms[data.label(label, row["model"])] = data.label(label, arm)
            if row["seed"] is not None:
                data.seeds[data.label(label, row["model"])] = row["seed"]


# -- tables -----------------------------------------------------------------------------------


def _matches(split: str, wanted: tuple[str, ...]) -> int | None:
    """The rank of the first pattern `split` matches, or None."""
    for rank, pattern in enumerate(wanted):
        if split_matches(split, pattern):
            return rank
    return None


def headline_columns(data: ReportData) -> list[Column]:
    """The HEADLINE columns the data has, each benchmark's failed count right after it."""
    present: dict[tuple[str, str], set[str]] = defaultdict(set)
    for m in data.metrics.values():
        present[(m.benchmark, m.metric)].add(m.split)
    columns: list[Column] = []
    for label, benchmark, metric, wanted in HEADLINE:
        splits = present.get((benchmark, metric), set())
        chosen = [s for s in splits if _matches(s, wanted) is not None] if wanted else []
        chosen = sorted(chosen, key=lambda s: (_matches(s, wanted), s)) or reported(sorted(splits))
        for split in chosen:
            short = label if len(chosen) == 1 else f"{label}@{split}"
            columns.append(Column(short, benchmark, split, metric))
    out: list[Column] = []
    for i, column in enumerate(columns):
        out.append(column)
        last_of_benchmark = i + 1 == len(columns) or columns[i + 1].benchmark != column.benchmark
        if last_of_benchmark:
            splits = dict.fromkeys(c.split for c in columns if c.benchmark == column.benchmark)
            for split in splits:
                if split in present.get((column.benchmark, FAILED), ()):
                    label = f"{column.benchmark}_failed" + (f"@{split}" if len(splits) > 1 else "")
                    out.append(Column(label, column.benchmark, split, FAILED))
    return out


def headline_table(data: ReportData, columns: list[Column]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "model", *(c.title for c in columns)]
    rows = [
        [
            run,
            model,
            *(
                fmt(c.metric, data.value(run, model, c.benchmark, c.split, c.metric))
                for c in columns
            ),
        ]
        for run, model in data.models()
    ]
    return header, rows


def failed_counts(data: ReportData) -> dict[tuple[str, str, str, str], int]:
    """(run, model, benchmark, split) -> items that failed, where any did."""
    return {
        (m.run, m.model, m.benchmark, m.split): round(m.value)
        for m in data.metrics.values()
        if m.metric == FAILED and m.value is not None and not math.isnan(m.value) and m.value > 0
    }


def benchmark_order(data: ReportData) -> list[str]:
    """The headline benchmarks first, in headline order, then the rest alphabetically."""
    present = {m.benchmark for m in data.metrics.values()}
    first = [b for b in dict.fromkeys(spec[1] for spec in HEADLINE) if b in present]
    return first + sorted(present - set(first))


def metric_rank(benchmark: str, metric: str) -> tuple[int, str]:
    """A benchmark's headline metrics first, then its failed count, then the rest by name."""
    first = [m for _, b, m, _ in HEADLINE if b == benchmark] + [FAILED]
    return (first.index(metric) if metric in first else len(first), metric)


def benchmark_tables(data: ReportData) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per benchmark: rows run/model, one column per split/metric, every metric it has."""
    failed = failed_counts(data)
    out = []
    for benchmark in benchmark_order(data):
        chosen = [m for m in data.metrics.values() if m.benchmark == benchmark]
        keys = sorted(
            {(m.split, m.metric) for m in chosen},
            key=lambda k: (k[0], *metric_rank(benchmark, k[1])),
        )
        models = list(dict.fromkeys((m.run, m.model) for m in chosen))
        rows = [
            [
                run,
                model,
                *(fmt(metric, data.value(run, model, benchmark, s, metric)) for s, metric in keys),
            ]
            for run, model in models
        ]
        total = sum(n for (_, _, b, _), n in failed.items() if b == benchmark)
        title = f"{benchmark} ({total} failed)" if total else benchmark
        out.append((title, ["run", "model", *(f"{s}/{metric}" for s, metric in keys)], rows))
    return out


def long_table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """Every metric, one row each, with its item count and the stage it came from."""
    failed = failed_counts(data)
    order = {pair: i for i, pair in enumerate(data.models())}
    benchmarks = {b: i for i, b in enumerate(benchmark_order(data))}
    header = ["run", "model", "benchmark", "split", "metric", "value", "count", "stage"]
    rows = []
    for m in sorted(
        data.metrics.values(),
        key=lambda m: (
            order[(m.run, m.model)],
            benchmarks[m.benchmark],
            m.split,
            *metric_rank(m.benchmark, m.metric),
        ),
    ):
        n = failed.get((m.run, m.model, m.benchmark, m.split))
        benchmark = f"{m.benchmark} ({n} failed)" if n else m.benchmark
        count = "-" if m.count is None else str(m.count)
        rows.append(
            [m.run, m.model, benchmark, m.split, m.metric, fmt(m.metric, m.value), count, m.stage]
        )
    return header, rows


def headline_lines(runs: Sequence[str], storage: Any = None) -> list[str]:
    """The headline table as fixed-width lines for the terminal."""
    return terminal_headline(load(runs, storage))


def terminal_headline(data: ReportData) -> list[str]:
    """Per recipe over its seeds where some recipe has several, else per model."""
    return seed_lines(data) if over_seeds(data) else terminal_lines(data)


def compact_headline(data: ReportData) -> list[Block]:
    """What a reader sees first: the terminal's headline (terminal.py, seeds.py)."""
    if not terminal_columns(data):
        return [Para("No headline metric in these runs.")]
    if not over_seeds(data):
        header, rows, legend = model_table(data)
        return [Table(header, rows), Para(legend)]
    columns = terminal_columns(data)
    legend = "; ".join(c.legend for c in columns)
    blocks: list[Block] = [Table(*summary_table(data, columns))]
    header, rows = paired_table(data, columns)
    if rows:
        blocks += [
            Para("Differences between recipes, paired by training seed:"),
            Table(header, rows),
        ]
    return [*blocks, Para(f"{LEGEND}. {legend}")]


# -- the document -----------------------------------------------------------------------------


def document(data: ReportData, figures: list[plots.Plot]) -> list[Block]:
    blocks: list[Block] = [Heading(1, "amp-ray report"), Heading(2, "Headline")]
    blocks += compact_headline(data)
    blocks += validation_blocks(data)
    blocks += [Heading(2, "Runs")]
    blocks.append(
        Items(
            [
                f"{label}: {uri} (read: {', '.join(data.read[label]) or 'nothing'})"
                + (f"; judged by {'; '.join(data.judges[label])}" if data.judges.get(label) else "")
                for label, uri in data.runs.items()
            ]
        )
    )
    sweep_drawn = any(f.name == PLOT and f.png is not None for f in figures)
    blocks += sweep_blocks(data.sweeps, sweep_drawn)
    blocks += plot_blocks([f for f in figures if f.name != PLOT])
    columns = headline_columns(data)
    if columns:
        blocks += [Heading(2, "Every headline metric, by model"), Para(PRECEDENCE_NOTE)]
        blocks.append(Table(*headline_table(data, columns)))
        blocks.append(Para("Columns: " + "; ".join(f"{c.label} = {c.title}" for c in columns)))
    tables = benchmark_tables(data)
    if tables:
        blocks.append(Heading(2, "Every metric, by benchmark"))
        for title, header, rows in tables:
            blocks += [Heading(3, title), Table(header, rows)]
        blocks += [Heading(2, "All metrics with counts"), Table(*long_table(data))]
    blocks += shadowed_blocks(data)
    return blocks


def plot_blocks(figures: list[plots.Plot]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Plots")]
    for figure in figures:
        if figure.png is None:
            continue
        blocks.append(Heading(3, figure.title))
        if figure.note:
            blocks.append(Para(figure.note))
        blocks.append(Image(f"{figure.name}.png", figure.title))
    skipped = [f"{f.title}: skipped, {f.skipped}" for f in figures if f.png is None]
    if skipped:
        blocks += [Para("Plots not drawn:"), Items(skipped)]
    return blocks


def shadowed_blocks(data: ReportData, shown: int = 30) -> list[Block]:
    """The values a later stage replaced. The train stage's world check re-scores its starting
    policy, so most repeats agree; only those that differ (at 3 decimals) are listed."""
    if not data.shadowed:
        return []
    differ = [(a, b) for a, b in data.shadowed if fmt(a.metric, a.value) != fmt(b.metric, b.value)]
    items = [
        f"{a.run}/{a.model} {a.benchmark}/{a.split}/{a.metric}: {a.stage} {fmt(a.metric, a.value)} "
        f"shown over {b.stage} {fmt(b.metric, b.value)}"
        for a, b in differ[:shown]
    ]
    if len(differ) > shown:
        items.append(f"... and {len(differ) - shown} more that differ")
    same = len(data.shadowed) - len(differ)
    text = f"{len(data.shadowed)} values were in more than one stage's metrics"
    text += f"; {same} of them agree to 3 decimals." if same else "."
    return [
        Heading(2, "Values shadowed by a later stage"),
        Para(f"{PRECEDENCE_NOTE} {text}"),
        *([Items(items)] if items else []),
    ]


def markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Para):
            out += [block.text, ""]
        elif isinstance(block, Items):
            out += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            out.append(_md_row(block.header))
            out.append(_md_row(["---"] * len(block.header)))
            out += [_md_row(row) for row in block.rows] + [""]
        else:
            out += [f"![{block.alt}]({block.src})", ""]
    return "\n".join(out)


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em}"
    "table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:2px 6px;white-space:nowrap}"
    "th{background:#f2f2f2}td{text-align:right}td:nth-child(-n+2){text-align:left}"
    ".wide{overflow-x:auto}img{max-width:100%}"
)


def to_html(blocks: list[Block], title: str = "amp-ray report") -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        f'<html><head><meta charset="utf-8"><title>{e(title)}</title><style>{CSS}</style></head>',
        "<body>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{e(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            out.append(f"<p>{e(block.text)}</p>")
        elif isinstance(block, Items):
            out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{e(cell)}</th>" for cell in block.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>"
                for row in block.rows
            )
            out.append(f'<div class="wide"><table><tr>{head}</tr>{body}</table></div>')
        else:
            out.append(f'<p><img src="{e(block.src)}" alt="{e(block.alt)}"></p>')
    out.append("</body></html>")
    return "\n".join(out)


# -- the figures and the files ----------------------------------------------------------------


def write_report(runs: list[str], out: str, storage: Any = None) -> ReportPaths:
    """Write report.md, report.html and the plots' PNGs under `out` (a path or URI)."""
    data = load(runs, storage)
    target = open_location(out, storage)
    drawn = plots.figures(data)
    images = {}
    for figure in drawn:
        if figure.png is not None:
            where = target.join(f"{figure.name}.png")
            where.write_bytes_atomic(figure.png)
            images[figure.name] = where.uri
    blocks = document(data, drawn)
    md, page = target.join("report.md"), target.join("report.html")
    md.write_bytes_atomic(markdown(blocks).encode())
    page.write_bytes_atomic(to_html(blocks).encode())
    return ReportPaths(
        markdown=md.uri,
        html=page.uri,
        images=images,
        skipped={f.name: f.skipped for f in drawn if f.skipped is not None},
        headline=terminal_headline(data) + sweep_lines(data),
    )


def sweep_lines(data: ReportData) -> list[str]:
    """Each sweep's summary table, as the sweep stage printed it."""
    from amp_ray.sweep.results import summary_lines

    return [
        line
        for sweep in data.sweeps.values()
        for line in summary_lines(sweep.rows, sweep.metric, sweep.mode, sweep.own_arm)
    ]
