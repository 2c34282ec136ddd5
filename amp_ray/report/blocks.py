"""The pieces a report is made of (document.py renders them as Markdown and as HTML), and how
a value is written in them."""

from __future__ import annotations

import math
from dataclasses import dataclass

FAILED = "failed"  # the metric whose value is a count of items that could not be rated


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Items:
    items: list[str]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Image:
    src: str  # relative to the report
    alt: str


Block = Heading | Para | Items | Table | Image


def fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if metric == FAILED:
        return str(round(value))
    return f"{value:.3f}"


def split_matches(split: str, pattern: str) -> bool:
    """`pattern` names `split`, or ends in `*` and starts it ("pope_*": every POPE category)."""
    return split == pattern or (pattern.endswith("*") and split.startswith(pattern[:-1]))
