"""From checked candidates to K ranked levels (AMP, arXiv 2405.11165, §3.1 and Alg. 1).

AMP orders the candidates by the auto-check's accuracy, ties by its score, and keeps the standard
(reference) response on top. `rank_item` does that, plus what a training set needs: the levels must
be distinct answers, strictly ordered by the checker, and exactly K of them; an item that cannot
fill K levels is reported (to be quarantined), never padded with invented or copied answers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from amp_ray.errors import DataError
from amp_ray.ranking.checkers import CheckResult
from amp_ray.storage.schemas import CANDIDATE

CANDIDATE_KEYS = tuple(field.name for field in CANDIDATE)
REFERENCE_ID = "reference"
TIE_TOLERANCE = 1e-9  # (accuracy, score) closer than this are a tie: not two levels


@dataclass(frozen=True)
class RankedItem:
    levels: list[dict[str, Any]]  # K SCORED_CANDIDATE dicts, best first; [] when `reason`
    candidates: list[dict[str, Any]]  # the reference and every candidate, initial order, scored
    order_changed: bool  # the levels' initial ranks are not increasing
    reason: str | None  # why the item has no levels (the caller quarantines it)


def reference_candidate(references: Sequence[str]) -> dict[str, Any]:
    """The reference as a candidate: it always ranks first (initial and checked rank 0)."""
    return {
        "candidate_id": REFERENCE_ID,
        "generator": REFERENCE_ID,
        "source": REFERENCE_ID,
        "initial_rank": 0,
        "answers": list(references),
        "info": None,
    }


def even_spread(n: int, k: int) -> list[int]:
    """k of the indices 0..n-1, evenly spread, always with the first and the last; for k = 1 the
    last alone (below the reference, the worst candidate is the clearest preference)."""
    if not 1 <= k <= n:
        raise ValueError(f"cannot pick {k} of {n}")
    if k == 1:
        return [n - 1]
    # round half up; the step (n-1)/(k-1) >= 1 keeps the picks distinct
    return [int(i * (n - 1) / (k - 1) + 0.5) for i in range(k)]


def _answers_key(answers: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(" ".join((a or "").split()) for a in answers or [])


def _with_check(info: str | None, details: dict[str, Any]) -> str | None:
    """The candidate's info JSON with the checker's details under "check" (audit). Info that is
    not a JSON object is kept as it is."""
    if not details:
        return info
    try:
        data = json.loads(info) if info else {}
    except ValueError:
        return info
    if not isinstance(data, dict):
        return info
    return json.dumps({**data, "check": details}, sort_keys=True)


def _scored(candidate: dict[str, Any], result: CheckResult, rank: int | None) -> dict[str, Any]:
    out = {key: candidate.get(key) for key in CANDIDATE_KEYS}
    out["info"] = _with_check(out["info"], result.details)
    return {**out, "accuracy": result.accuracy, "score": result.score, "checked_rank": rank}


def _tied(a: CheckResult, b: CheckResult) -> bool:
    return math.isclose(a.accuracy, b.accuracy, abs_tol=TIE_TOLERANCE) and math.isclose(
        a.score, b.score, abs_tol=TIE_TOLERANCE
    )


def _checked_order(
    references: Sequence[str],
    candidates: Sequence[dict[str, Any]],
    results: Sequence[CheckResult],
    top: CheckResult,
) -> list[int]:
    """Indices of the distinct candidates, best first (see `rank_item`)."""
    seen = {_answers_key(references)}
    distinct: list[int] = []
    for i in sorted(range(len(candidates)), key=lambda i: candidates[i]["initial_rank"]):
        key = _answers_key(candidates[i].get("answers"))
        if len(key) == len(references) and key not in seen:
            seen.add(key)
            distinct.append(i)
    distinct.sort(
        key=lambda i: (-results[i].accuracy, -results[i].score, candidates[i]["initial_rank"])
    )
    kept: list[int] = []
    above = top
    for i in distinct:
        if not _tied(results[i], above):
            kept.append(i)
            above = results[i]
    return kept


def rank_item(
    references: Sequence[str],
    candidates: Sequence[dict[str, Any]],
    results: Sequence[CheckResult],
    num_levels: int,
    reference_result: CheckResult | None = None,
) -> RankedItem:
    """K = `num_levels` levels: the reference, then K−1 distinct candidates in checked order.

    - The reference is level 0 (checked_rank 0) whatever its scores; they are
      `reference_result` (the checker run on the reference itself, which shows how well the
      checker agrees with its own reference) or 1.0 / 1.0 when not given.
    - Not distinct, so never a level (checked_rank None): a candidate whose answers equal the
      reference's or a better-ranked candidate's after white-space normalisation; one with a
      different number of rounds than the reference; one tied on (accuracy, score) with the one
      above it in the checked order (so the levels are strictly ordered by the checker).
    - The distinct ones are ordered by accuracy, then score (descending), then initial rank.
    - With more than K−1 of them, K−1 are picked evenly spread over the checked order, always the
      best and the worst (K = 2: the worst alone). With fewer, `reason` says so and there are no
      levels.
    Raises DataError for a candidate with initial_rank < 1 (0 is the reference's).
    """
    if len(results) != len(candidates):
        raise ValueError(f"{len(results)} check results for {len(candidates)} candidates")
    for candidate in candidates:
        rank = candidate.get("initial_rank")
        if rank is None or rank < 1:
            raise DataError(
                f"candidate {candidate.get('candidate_id')!r} has initial_rank {rank}; "
                "candidates rank from 1 (0 is the reference)"
            )
    top = reference_result or CheckResult(1.0, 1.0)
    order = _checked_order(references, candidates, results, top)
    checked_rank = {i: rank for rank, i in enumerate(order, start=1)}
    audit = [_scored(reference_candidate(references), top, 0)] + [
        _scored(c, r, checked_rank.get(i))
        for i, (c, r) in enumerate(zip(candidates, results, strict=True))
    ]
    need = num_levels - 1
    if len(order) < need:
        reason = f"only {len(order)} distinct levels below the reference, need {need}"
        return RankedItem([], audit, False, reason)
    picked = [order[j] for j in even_spread(len(order), need)]
    levels = [audit[0]] + [audit[i + 1] for i in picked]
    initial = [candidates[i]["initial_rank"] for i in picked]
    order_changed = any(a >= b for a, b in pairwise(initial))
    return RankedItem(levels, audit, order_changed, None)
