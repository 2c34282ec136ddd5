"""The synthetic world's judge: the MRHal-Bench 0–6 rubric applied from exact ground truth.

The rubric has two axes: does the answer hallucinate, and how informative is it. On the world
both are counted, per round, by the world's fact counts (world/facts.py: the same counts that
rank the preference candidates with the ground-truth checker):

- hallucinates: the round says at least one false thing (an absent object, a wrong colour, a
  wrong count or neighbour, "yes" to an absent object);
- informative: the share of the round's facts it states — all (very), some (somewhat), none (not).

Ratings: without hallucination 6 (all facts, and the answer does not loop: the world's "good
reasoning" is a clean, complete answer), 5 (all facts, but it repeats itself), 4 (some), 3 (none);
with hallucination 2 (all facts), 1 (some), 0 (none).
"""

from __future__ import annotations

import json

from amp_ray.errors import DataError
from amp_ray.evaluation.judging import JudgeFailure, JudgeRequest, Judgment
from amp_ray.world.facts import (
    RoundCounts,
    WorldTruth,
    content_counts,
    description_counts,
    existence_counts,
    repeats,
)
from amp_ray.world.metrics import pope_answer


def round_counts(text: str, reference: str, facts: dict, truth: WorldTruth) -> RoundCounts:
    """The fact counts of one round, by its question type."""
    text, reference = " ".join(text.split()), " ".join(reference.split())
    if facts["type"] == "description":
        return description_counts(text, reference, truth)
    if facts["type"] == "existence":
        counts = existence_counts(text, facts, truth)
        if facts["label"] == "no" and pope_answer(text) == "yes":
            # the checker counts a false "yes" as hallucinated only; for the rubric it also
            # states none of the asked fact (the object's absence), so it is not informative
            return RoundCounts(counts.facts, counts.hallucinated, counts.missed + 1)
        return counts
    return content_counts(text, reference, truth)


def rubric_rating(counts: RoundCounts, loops: bool) -> int:
    """The 0–6 rating of one round from its fact counts (the module docstring's table)."""
    stated = counts.facts - counts.missed
    if counts.facts == 0 or stated == counts.facts:
        informative = 2  # very
    elif stated > 0:
        informative = 1  # somewhat
    else:
        informative = 0  # not
    if counts.hallucinated:
        return informative
    if informative == 2:
        return 5 if loops else 6
    return 3 + informative


class GroundTruthJudge:
    """Rates world items from their annotations; raises JudgeFailure for an item without them."""

    name = "ground_truth"

    def judge(self, request: JudgeRequest) -> Judgment:
        try:
            truth = WorldTruth.parse(request.annotations, len(request.questions))
        except DataError as exc:
            reason = f"the ground_truth judge cannot rate this item: {exc.message}"
            raise JudgeFailure(reason) from None
        answers = list(request.answers) + [""] * (len(request.questions) - len(request.answers))
        counts = [
            round_counts(text, reference, facts, truth)
            for text, reference, facts in zip(
                answers, request.references, truth.rounds, strict=True
            )
        ]
        ratings = tuple(
            rubric_rating(c, repeats(text)) for c, text in zip(counts, answers, strict=True)
        )
        response = json.dumps(
            {"rounds": [[c.facts, c.hallucinated, c.missed] for c in counts], "ratings": ratings}
        )
        return Judgment(ratings, response)
