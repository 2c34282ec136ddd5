"""The world's hallucination metrics for every model and split, from an answers table."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pyarrow as pa

from amp_ray.evaluation.judging import JudgeFailure, JudgeRequest
from amp_ray.evaluation.scores import by_question_type, mrhal_metrics
from amp_ray.evaluation.world_judge import GroundTruthJudge
from amp_ray.world.metrics import (
    CaptionScore,
    caption_metrics,
    mention_rate,
    pope_metrics,
)


def world_metric_rows(answers: pa.Table) -> list[dict[str, Any]]:
    """METRICS rows: CHAIR (captions), partner mention rate (bias), POPE (by category), MRHal
    (dialogues, rated by the world's judge)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in answers.to_pylist():
        if row["answers"]:
            groups[(row["model"], row["split"])].append(row)
    return [
        row
        for (model, split), rows in sorted(groups.items())
        for benchmark, values, count in group_metrics(rows)
        for row in metric_rows(model, benchmark, split, values, count)
    ]


def metric_rows(
    model: str, benchmark: str, split: str, values: dict[str, float], count: int
) -> list[dict[str, Any]]:
    """One METRICS row per value of one model, benchmark and split."""
    return [
        {
            "model": model,
            "benchmark": benchmark,
            "split": split,
            "metric": name,
            "value": float(value),
            "count": count,
        }
        for name, value in values.items()
    ]


def group_metrics(rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, float], int]]:
    """(benchmark, metrics, item count) for the answers of one model on one split."""
    out: list[tuple[str, dict[str, float], int]] = []
    captions = [r for r in rows if r["task"] == "caption"]
    if captions:
        facts = [json.loads(r["annotations"]) for r in captions]
        vocabulary = set(facts[0]["kinds"])
        scores = [
            CaptionScore.of(
                r["answers"][0],
                r["references"][0],
                [o["kind"] for o in f["objects"]],
                vocabulary,
                r["finished"][0],
            )
            for r, f in zip(captions, facts, strict=True)
        ]
        out.append(("chair", caption_metrics(scores), len(captions)))
        texts = [r["answers"][0] for r in captions]
        partner = facts[0]["bias"]["partner"]
        out.append(("bias", {"partner_rate": mention_rate(texts, partner)}, len(captions)))
    existence = [r for r in rows if r["task"] == "existence"]
    if existence:
        facts = [json.loads(r["annotations"])["rounds"][0] for r in existence]
        labels = [f["label"] for f in facts]
        texts = [r["answers"][0] for r in existence]
        out.append(("pope", pope_metrics(texts, labels), len(existence)))
        for category in sorted({f["category"] for f in facts} - {"positive"}):
            chosen = [i for i, f in enumerate(facts) if f["category"] == category]
            values = pope_metrics([texts[i] for i in chosen], [labels[i] for i in chosen])
            out.append((f"pope_{category}", values, len(chosen)))
    dialogues = [r for r in rows if r["task"] == "dialogue"]
    if dialogues:
        out.append(mrhal_from_world(dialogues))
    return out


def mrhal_from_world(rows: list[dict[str, Any]]) -> tuple[str, dict[str, float], int]:
    """MRHal metrics of answered world dialogues, rated by the ground-truth judge; items it
    cannot rate are counted in `failed` and left out."""
    judge = GroundTruthJudge()
    ratings: list[tuple[int, ...]] = []
    types: list[list[str]] = []
    failed = 0
    for row in rows:
        request = JudgeRequest(
            "mrhal",
            (),
            tuple(row["questions"]),
            tuple(row["references"]),
            tuple(row["answers"]),
            annotations=row["annotations"],
        )
        try:
            ratings.append(judge.judge(request).ratings)
        except JudgeFailure:
            failed += 1
            continue
        types.append([facts["type"] for facts in json.loads(row["annotations"])["rounds"]])
    values = {**mrhal_metrics(ratings), **by_question_type(ratings, types), "failed": failed}
    return "mrhal", values, len(ratings)
