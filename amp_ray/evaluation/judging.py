"""What a judge is: it rates every round of a model's answer 0–6 with the MRHal-Bench rubric.

MRHal-Bench (AMP, arXiv 2405.11165) and MMHal-Bench (LLaVA-RLHF) rate open answers with a
text-only judge that sees the image's object categories, each question, the reference answer and
the model's answer. The rubric (methods.md §5): 6 very informative with good reasoning, no
hallucination; 5 very informative, no hal.; 4 somewhat informative, no hal.; 3 not informative,
no hal.; 2 very informative, with hal.; 1 somewhat informative, with hal.; 0 not informative, with
hal. A round rated below 3 hallucinates.

Two judges implement `Judge`: the LLM judge over any OpenAI-compatible endpoint
(evaluation/llm_judge.py) and the synthetic world's ground-truth judge (evaluation/world_judge.py).
A judge that cannot rate an item raises `JudgeFailure`; the item is recorded as failed with that
reason and left out of the metrics (never scored 0).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

from amp_ray.errors import DataError

RATINGS = range(7)  # 0..6
HALLUCINATION_BELOW = 3  # a rating below this means the round hallucinates


@dataclass(frozen=True)
class JudgeRequest:
    """One item to rate: an MRHal dialogue (several rounds) or an MMHal question (one round)."""

    benchmark: str  # "mrhal" or "mmhal": which prompt and reply format
    image_content: tuple[str, ...]  # the image's object categories (joined with ", ")
    questions: tuple[str, ...]
    references: tuple[str, ...]  # the reference answer of every round
    answers: tuple[str, ...]  # the model's answer of every round
    question_types: tuple[str, ...] = ()  # per round, where known (MMHal's question_type)
    annotations: str | None = None  # the world's ground truth (JSON), for the world's judge

    def key(self) -> str:
        """A stable digest of everything a judge sees: the key of the judgment cache."""
        payload = json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class Judgment:
    ratings: tuple[int, ...]  # one rating in 0..6 per round
    response: str  # what the judge said (the LLM's reply; the world judge's counts as JSON)


class JudgeFailure(DataError):
    """The judge could not rate the item (timeout, refusal, a reply it cannot parse)."""


@runtime_checkable
class Judge(Protocol):
    name: str

    def judge(self, request: JudgeRequest) -> Judgment:
        """Ratings for every round of `request`; raises JudgeFailure naming why it cannot."""
        ...


def hallucinates(rating: int) -> bool:
    return rating < HALLUCINATION_BELOW


def check_ratings(ratings: tuple[int, ...], rounds: int, judge: str) -> tuple[int, ...]:
    """The ratings, if one in 0..6 per round; else JudgeFailure saying what is wrong."""
    if len(ratings) != rounds:
        raise JudgeFailure(f"judge {judge} gave {len(ratings)} ratings for {rounds} rounds")
    bad = [r for r in ratings if r not in RATINGS]
    if bad:
        raise JudgeFailure(f"judge {judge} gave ratings outside 0..6: {bad}")
    return ratings
