"""Judging answers on a Ray Data actor pool: answers rows in, JUDGMENTS rows out.

Each actor holds one judge (the LLM judge's client, rate limit and cache, or the world's judge).
An item the judge cannot rate keeps its reason in the quarantine column: it is recorded as failed
and left out of the metrics, never rated 0.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from amp_ray.errors import SpecError
from amp_ray.evaluation.judge_prompt import PromptTemplate
from amp_ray.evaluation.judging import Judge, JudgeFailure, JudgeRequest
from amp_ray.spec.alignment import JudgeSpec
from amp_ray.storage.quarantine import QUARANTINE_REASON
from amp_ray.storage.schemas import JUDGMENTS

JUDGED_TASKS = {"dialogue": "mrhal", "mmhal": "mmhal"}  # answer task -> its benchmark


def make_judge(spec: JudgeSpec, templates: dict[str, PromptTemplate] | None = None) -> Judge:
    """The judge of spec key evaluation.judge.kind; an LLM judge with `templates` (the prompt
    files the driver read) where the spec names them."""
    if spec.kind == "ground_truth":
        from amp_ray.evaluation.world_judge import GroundTruthJudge

        return GroundTruthJudge()
    if spec.kind == "openai":
        from amp_ray.evaluation.llm_judge import OpenAIJudge

        return OpenAIJudge(spec, templates=templates)
    raise SpecError(f"unknown evaluation.judge.kind {spec.kind!r}: use ground_truth or openai")


def judge_request(row: dict[str, Any]) -> tuple[JudgeRequest, list[str]]:
    """The judge's view of one answers row, and the question type of every round.

    The image's object categories come from the annotations: `image_content` of a benchmark
    file, or the kinds of the world's objects (what a text-only judge is told is in the image).
    """
    try:
        notes = json.loads(row["annotations"] or "{}")
    except ValueError:
        notes = {}
    content = notes.get("image_content") or [o.get("kind") for o in notes.get("objects", [])]
    rounds = notes.get("rounds") or []
    types = [str(r.get("type", "unknown")) for r in rounds][: len(row["questions"])]
    types += ["unknown"] * (len(row["questions"]) - len(types))
    request = JudgeRequest(
        benchmark=JUDGED_TASKS[row["task"]],
        image_content=tuple(str(c) for c in content if c),
        questions=tuple(row["questions"]),
        references=tuple(row["references"]),
        answers=tuple(row["answers"]),
        question_types=tuple(types) if row["task"] == "mmhal" else (),
        annotations=row["annotations"],
    )
    return request, types


class JudgeRater:
    """Ray Data callable: ANSWERS rows (dialogue and mmhal tasks) in, JUDGMENTS rows out, plus
    the quarantine column for the items the judge could not rate."""

    def __init__(self, spec: JudgeSpec, templates: dict[str, PromptTemplate] | None = None) -> None:
        self.judge = make_judge(spec, templates)
        prompt = getattr(self.judge, "prompt", None)
        self.label = f"{self.judge.name} ({prompt})" if prompt else self.judge.name

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: list[dict[str, Any]] = []
        reasons: list[str | None] = []
        for row in batch.to_pylist():
            request, types = judge_request(row)
            try:
                judgment = self.judge.judge(request)
                ratings, response, reason = list(judgment.ratings), judgment.response, None
            except JudgeFailure as exc:
                ratings, response, reason = [], "", f"judge {self.judge.name}: {exc.message}"
            out.append(
                {
                    "item_id": row["item_id"],
                    "model": row["model"],
                    "split": row["split"],
                    "benchmark": request.benchmark,
                    "question_types": types,
                    "ratings": ratings,
                    "judge": self.label,
                    "response": response,
                }
            )
            reasons.append(reason)
        table = pa.Table.from_pylist(out, schema=JUDGMENTS)
        return table.append_column(QUARANTINE_REASON, pa.array(reasons, pa.string()))
