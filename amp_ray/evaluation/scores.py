"""MRHal-Bench and MMHal-Bench metrics from per-round judge ratings (methods.md §5).

MRHal-Bench reports Score and Hal. rate, each two ways:
- cumulative: over all rounds of all dialogues (Σ ratings / number of rounds; share of rounds
  rated below 3);
- mean: the average over dialogues of each dialogue's own value.
The public script computes the mean hallucination rate differently: a dialogue counts as
hallucinating when its mean rating is below 3, and the rate is the share of such dialogues.
`hallucination_rate_mean` follows the rule chosen (`mean_rate_rule`: "rounds", the definition,
or "dialogue", the script's); `hallucination_rate_mean_dialogue` is always the script's, so both
numbers can be compared with published tables.
MMHal-Bench: score = mean rating, hallucination rate = share of ratings below 3.
Both also by question type: `score@<type>` and `hallucination_rate@<type>` over that type's rounds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from statistics import fmean
from typing import Literal

from amp_ray.evaluation.judging import hallucinates

MeanRateRule = Literal["rounds", "dialogue"]


def _rate(ratings: Sequence[int]) -> float:
    return sum(hallucinates(r) for r in ratings) / len(ratings)


def mrhal_metrics(
    dialogues: Sequence[Sequence[int]], mean_rate_rule: MeanRateRule = "rounds"
) -> dict[str, float]:
    """Score and hallucination rate, cumulative and mean, of rated dialogues (one rating per
    round). Dialogues without rounds are left out (they have no mean)."""
    rated = [list(d) for d in dialogues if len(d)]
    if not rated:
        return {}
    rounds = [r for d in rated for r in d]
    by_dialogue = [_rate(d) for d in rated]
    by_dialogue_mean = [float(fmean(d) < 3) for d in rated]
    return {
        "score_cumulative": sum(rounds) / len(rounds),
        "score_mean": fmean(fmean(d) for d in rated),
        "hallucination_rate_cumulative": _rate(rounds),
        "hallucination_rate_mean": fmean(
            by_dialogue if mean_rate_rule == "rounds" else by_dialogue_mean
        ),
        "hallucination_rate_mean_dialogue": fmean(by_dialogue_mean),
    }


def mmhal_metrics(ratings: Sequence[int]) -> dict[str, float]:
    """MMHal-Bench: the mean rating and the share of ratings below 3."""
    if not ratings:
        return {}
    return {"score": fmean(ratings), "hallucination_rate": _rate(ratings)}


def by_question_type(
    ratings: Sequence[Sequence[int]], types: Sequence[Sequence[str]]
) -> dict[str, float]:
    """`score@<type>` and `hallucination_rate@<type>` over every round of each question type."""
    grouped: dict[str, list[int]] = defaultdict(list)
    for item_ratings, item_types in zip(ratings, types, strict=True):
        for rating, kind in zip(item_ratings, item_types, strict=True):
            grouped[kind].append(rating)
    out: dict[str, float] = {}
    for kind in sorted(grouped):
        out[f"score@{kind}"] = fmean(grouped[kind])
        out[f"hallucination_rate@{kind}"] = _rate(grouped[kind])
    return out


def weighted_mean(pairs: list[tuple[float, int | None]]) -> float | None:
    """The item-count-weighted mean of (value, count) pairs; the plain mean where no count is
    known; None for no pairs."""
    if not pairs:
        return None
    counts = [count or 0 for _, count in pairs]
    if sum(counts) == 0:
        return sum(value for value, _ in pairs) / len(pairs)
    return sum(value * n for (value, _), n in zip(pairs, counts, strict=True)) / sum(counts)
