"""The auto-check as a Ray Data stage: CANDIDATES rows in, PREFERENCES rows out (AMP §3.1).

One actor of the pool loads its checker (the text encoder) once; every batch is checked with one
encoder call (`Checker.check_batch`) and each item ranked by `rank_item`. Items that cannot fill
K levels, or whose check rejects them, keep their item fields and get a quarantine reason, so the
quarantine row shows what was generated and why it could not be used.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import torch

from amp_ray.errors import DataError
from amp_ray.ranking.checkers import CheckInput, make_checker
from amp_ray.ranking.level_selection import (
    CANDIDATE_KEYS,
    RankedItem,
    rank_item,
    reference_candidate,
)
from amp_ray.runtime import torch_threads_for
from amp_ray.storage.quarantine import QUARANTINE_REASON
from amp_ray.storage.schemas import ITEM_FIELDS, PREFERENCES

PREFERENCE_ROWS = PREFERENCES.append(pa.field(QUARANTINE_REASON, pa.string()))


def _unscored(candidates: list[dict[str, Any]], references: list[str]) -> list[dict[str, Any]]:
    """The audit list of an item that was not checked: every candidate, no scores."""
    rows = [reference_candidate(references), *candidates]
    return [
        {
            **{key: row.get(key) for key in CANDIDATE_KEYS},
            "accuracy": None,
            "score": None,
            "checked_rank": None,
        }
        for row in rows
    ]


def ranker_kwargs(ranking: Any, num_levels: int) -> dict[str, Any]:
    """CandidateRanker's constructor arguments from the spec's ranking block, keeping
    `num_levels` levels (the rank stage: ranking.num_levels; the online rounds: 2)."""
    return {
        "checker_kind": ranking.checker,
        "encoder": ranking.encoder,
        "tau": ranking.tau,
        "num_levels": num_levels,
        "num_cpus": ranking.actors.num_cpus,
    }


class CandidateRanker:
    """Ray Data callable: re-ranks each item's candidates with a checker and keeps K levels.

    `checker_kind` "embedding" (AMP's auto-check with `encoder` and threshold `tau`) or
    "ground_truth"; `num_levels` K includes the reference. Output: PREFERENCES plus the
    quarantine column QUARANTINE_REASON (null for a usable row).
    """

    def __init__(
        self, checker_kind: str, encoder: str, tau: float, num_levels: int, num_cpus: float
    ) -> None:
        torch.set_num_threads(torch_threads_for(num_cpus))
        self.checker = make_checker(checker_kind, encoder, tau)
        self.checker_kind = checker_kind
        self.num_levels = num_levels

    def __call__(self, batch: pa.Table) -> pa.Table:
        rounds = batch.column("rounds").to_pylist()
        candidates = [c or [] for c in batch.column("candidates").to_pylist()]
        annotations = batch.column("annotations").to_pylist()
        upstream = (
            batch.column(QUARANTINE_REASON).to_pylist()
            if QUARANTINE_REASON in batch.column_names
            else [None] * batch.num_rows
        )
        references = [[turn["answer"] or "" for turn in r or []] for r in rounds]
        todo = [i for i, reason in enumerate(upstream) if reason is None and references[i]]
        checked = self.checker.check_batch(
            [
                CheckInput(
                    references[i],
                    [references[i], *(c.get("answers") or [] for c in candidates[i])],
                    annotations[i],
                )
                for i in todo
            ]
        )
        outcome: dict[int, Any] = dict(zip(todo, checked, strict=True))
        levels, audits, changed, reasons = [], [], [], []
        for i in range(batch.num_rows):
            result = outcome.get(i)
            ranked: RankedItem | None = None
            reason = upstream[i] or (None if references[i] else "the item has no rounds")
            if isinstance(result, DataError):
                reason = result.message
            elif result is not None:
                try:
                    ranked = rank_item(
                        references[i], candidates[i], result[1:], self.num_levels, result[0]
                    )
                    reason = ranked.reason
                except DataError as exc:
                    reason = exc.message
            levels.append(ranked.levels if ranked else [])
            audits.append(ranked.candidates if ranked else _unscored(candidates[i], references[i]))
            changed.append(ranked.order_changed if ranked and reason is None else None)
            reasons.append(reason)
        return self._table(batch, levels, audits, changed, reasons)

    def _table(
        self,
        batch: pa.Table,
        levels: list[list[dict[str, Any]]],
        audits: list[list[dict[str, Any]]],
        changed: list[bool | None],
        reasons: list[str | None],
    ) -> pa.Table:
        """The item columns pass through as Arrow (images are not copied through Python)."""
        columns = [batch.column(name).cast(PREFERENCES.field(name).type) for name in ITEM_FIELDS]
        columns += [
            pa.array(levels, PREFERENCES.field("levels").type),
            pa.array(audits, PREFERENCES.field("candidates").type),
            pa.array(changed, pa.bool_()),
            pa.array([self.checker_kind] * batch.num_rows, pa.string()),
            pa.array(reasons, pa.string()),
        ]
        return pa.Table.from_arrays(columns, schema=PREFERENCE_ROWS)
