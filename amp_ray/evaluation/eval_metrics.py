"""The evaluate stage's metrics: one METRICS row per model, benchmark, split and metric.

CHAIR and the bias rates come from the world's captions, POPE from the answers against their
labels (world or file), MRHal and MMHal from the judge's ratings. Every benchmark of every model
also gets a `failed` row: the items that could not be answered (an image that will not decode)
or judged (a timeout, a reply that cannot be parsed), which the other values leave out.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import pyarrow as pa

from amp_ray.evaluation.scores import MeanRateRule, by_question_type, mmhal_metrics, mrhal_metrics
from amp_ray.evaluation.world_eval import group_metrics, metric_rows
from amp_ray.world.generate import BENCHMARK_SPLITS

WORLD_EVAL_SPLITS = frozenset(BENCHMARK_SPLITS)
TASK_BENCHMARK = {"caption": "chair", "existence": "pope", "dialogue": "mrhal", "mmhal": "mmhal"}


def evaluation_metric_rows(
    answers: pa.Table | None,
    judgments: pa.Table | None,
    failed: Counter[tuple[str, str, str]],
    mean_rate_rule: MeanRateRule,
) -> list[dict[str, Any]]:
    """METRICS rows. `failed` counts failed items by (model, benchmark, split)."""
    rows: list[dict[str, Any]] = []
    counted: set[tuple[str, str, str]] = set()
    if answers is not None:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for row in answers.to_pylist():
            if row["task"] in ("caption", "existence") and row["answers"]:
                groups[(row["model"], row["split"])].append(row)
        for (model, split), group in sorted(groups.items()):
            world = [r for r in group if _is_world(r)]
            files = [r for r in group if not _is_world(r)]
            results = group_metrics(world) + group_metrics(
                [r for r in files if r["task"] == "existence"]
            )
            for benchmark, values, count in results:
                rows += metric_rows(model, benchmark, split, values, count)
                counted.add((model, benchmark, split))
    if judgments is not None:
        judged: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
        for row in judgments.to_pylist():
            judged[(row["model"], row["benchmark"], row["split"])].append(row)
        for (model, benchmark, split), group in sorted(judged.items()):
            ratings = [r["ratings"] for r in group]
            values = (
                mrhal_metrics(ratings, mean_rate_rule)
                if benchmark == "mrhal"
                else mmhal_metrics([r[0] for r in ratings])
            )
            values |= by_question_type(ratings, [r["question_types"] for r in group])
            rows += metric_rows(model, benchmark, split, values, len(group))
            counted.add((model, benchmark, split))
    for key in sorted(counted | set(failed)):  # key: (model, benchmark, split)
        count = failed.get(key, 0)
        rows += metric_rows(*key, {"failed": count}, count)
    return rows


def failures(quarantine: pa.Table | None) -> Counter[tuple[str, str, str]]:
    """(model, benchmark, split) -> failed items, from the stage's quarantine rows that name a
    model (a benchmark record that could not be read names none: it is counted per file)."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for text in quarantine.column("row_json").to_pylist() if quarantine is not None else []:
        row = json.loads(text or "{}")
        if row.get("model") and row.get("task") in TASK_BENCHMARK:
            counts[(row["model"], TASK_BENCHMARK[row["task"]], row.get("split") or "")] += 1
        elif row.get("model") and row.get("benchmark"):
            counts[(row["model"], row["benchmark"], row.get("split") or "")] += 1
    return counts


def _is_world(row: dict[str, Any]) -> bool:
    """World items live in the world's eval splits; benchmark files have their own splits."""
    return (row["split"] or "") in WORLD_EVAL_SPLITS
