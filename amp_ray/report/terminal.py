"""The headline table as the terminal shows it: one row per model, one column per headline metric.

Narrower than the report's headline table: a benchmark that has several splits (the world's
MRHal dialogues on eval_iid, eval_bias_probe and eval_control) gets one column, the item-weighted
mean over its splits; failed items are one column, shown only when some item failed; and when
the evaluate stage has run, its models are the rows (the world check of every SFT model is in
the report, not here).
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from amp_ray.evaluation.scores import weighted_mean
from amp_ray.report.blocks import FAILED, fmt, split_matches
from amp_ray.world.generate import reported

if TYPE_CHECKING:  # document.py imports this module
    from amp_ray.report.document import Metric, ReportData

# (label, benchmark, metric, splits): the prior's co-occurrence and CHAIR on the world's probe and
# iid captions, POPE, then the judged benchmarks. Splits: the first pattern that matches some
# ("pope_*" matches every POPE file category, averaged); none matching: every split, averaged.
TERMINAL = (
    ("cooccur", "bias", "partner_rate", ("eval_bias_probe",)),
    ("CHAIR_i", "chair", "chair_i", ("eval_iid",)),
    ("recall", "chair", "recall", ("eval_iid",)),
    ("POPE_F1", "pope", "f1", ("eval_iid", "pope_*")),
    ("MRHal", "mrhal", "score_cumulative", ()),
    ("MRHal_hal", "mrhal", "hallucination_rate_cumulative", ()),
    ("MMHal", "mmhal", "score", ()),
    ("MMHal_hal", "mmhal", "hallucination_rate", ()),
)


@dataclass(frozen=True)
class TerminalColumn:
    label: str
    benchmark: str
    metric: str
    splits: tuple[str, ...]  # the splits its value is over

    @property
    def legend(self) -> str:
        where = self.splits[0] if len(self.splits) == 1 else "mean over " + ", ".join(self.splits)
        return f"{self.label} = {self.benchmark}/{self.metric} ({where})"


def terminal_columns(data: ReportData) -> list[TerminalColumn]:
    present: dict[tuple[str, str], set[str]] = defaultdict(set)
    for m in data.metrics.values():
        present[(m.benchmark, m.metric)].add(m.split)
    columns = []
    for label, benchmark, metric, patterns in TERMINAL:
        splits = present.get((benchmark, metric), set())
        if splits:
            chosen = _first_match(sorted(splits), patterns) or tuple(reported(sorted(splits)))
            columns.append(TerminalColumn(label, benchmark, metric, chosen))
    return columns


def _first_match(splits: list[str], patterns: tuple[str, ...]) -> tuple[str, ...]:
    for pattern in patterns:
        matched = tuple(s for s in splits if split_matches(s, pattern))
        if matched:
            return matched
    return ()


def value(data: ReportData, run: str, model: str, column: TerminalColumn) -> float | None:
    """The column's value: the one split's, or the item-weighted mean over its splits."""
    found: list[Metric] = [
        m
        for split in column.splits
        if (m := data.metrics.get((run, model, column.benchmark, split, column.metric)))
        and m.value is not None
    ]
    return weighted_mean([(m.value, m.count) for m in found])  # type: ignore[misc]


def rows_shown(data: ReportData) -> list[tuple[str, str]]:
    """The evaluate stage's models where it ran, else every model."""
    evaluated = {(m.run, m.model) for m in data.metrics.values() if m.stage == "evaluate"}
    return [pair for pair in data.models() if not evaluated or pair in evaluated]


def failed_total(data: ReportData, run: str, model: str) -> int:
    return sum(
        round(m.value)
        for m in data.metrics.values()
        if (m.run, m.model, m.metric) == (run, model, FAILED) and m.value == m.value and m.value
    )


def terminal_lines(data: ReportData) -> list[str]:
    if not terminal_columns(data):
        return [f"no headline metrics in {', '.join(data.runs.values())}"]
    header, rows, legend = model_table(data)
    return fixed_width(header, rows) + wrapped(legend)


def model_table(data: ReportData) -> tuple[list[str], list[list[str]], str]:
    """(header, rows, legend) of the compact headline: one row per shown model, one column per
    headline metric, the failed items' count where some failed."""
    columns = terminal_columns(data)
    pairs = rows_shown(data)
    table = [[fmt(c.metric, value(data, run, model, c)) for c in columns] for run, model in pairs]
    labels = [c.label for c in columns]
    failed = [failed_total(data, run, model) for run, model in pairs]
    if any(failed):
        labels.append(FAILED)
        table = [[*row, str(n)] for row, n in zip(table, failed, strict=True)]
    names = [data.label(run, model) for run, model in pairs]
    legend = "; ".join(c.legend for c in columns)
    if any(failed):
        legend += "; failed = items that could not be answered or judged"
    return ["model", *labels], [[n, *c] for n, c in zip(names, table, strict=True)], legend


def fixed_width(header: list[str], rows: list[list[str]]) -> list[str]:
    """A table as aligned lines: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    widths[1:] = [max(7, w) for w in widths[1:]]
    return [
        f"{row[0]:<{widths[0]}}"
        + "".join(f" {x:>{w}}" for x, w in zip(row[1:], widths[1:], strict=True))
        for row in [header, *rows]
    ]


def wrapped(text: str) -> list[str]:
    return textwrap.wrap(text, 100, initial_indent="  ", subsequent_indent="  ")
