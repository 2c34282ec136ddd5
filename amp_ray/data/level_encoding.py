"""Preference rows to training inputs: the K levels of each item encoded, with their reference
log-probs, as a Ray Data callable that loads the processor once per actor.

Rows training must not see are marked with the reason, for quarantine, never silently dropped or
truncated: fewer than two levels, a level index the spec asks for that the item lacks, missing or
non-finite reference log-probs (or a count that differs from the levels), a level longer than
training.max_length, an image that cannot be read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from amp_ray.data.encode import EncodeSettings, encode_levels, stored_image, unpack_vision
from amp_ray.errors import DataError
from amp_ray.models.conversation import Encoded
from amp_ray.storage.quarantine import QUARANTINE_REASON, ROW_JSON, row_to_json, with_reason
from amp_ray.storage.schemas import ENCODED_LEVELS

ENCODED = with_reason(ENCODED_LEVELS)


@dataclass
class LevelItem:
    """One item for the training loop: its K encoded levels, their reference log-probs per
    round, and which levels answer each round alike (`answer_ids`)."""

    item_id: str
    levels: list[Encoded]
    ref_logps: list[list[float]]
    answer_ids: list[list[int]]


def check_reference(row: dict[str, Any], selected: list[int]) -> list[list[float]]:
    """The per-round reference log-probs of the selected levels; DataError if any is missing,
    not finite, or not one per round (scores of a reference stage older than per-round scoring
    are one number per level: run the reference stage again)."""
    values = row.get("ref_logps")
    if values is None:
        raise DataError("no ref_logps: run the reference stage, or set training.reference: in_loop")
    if len(values) != len(row["levels"]):
        raise DataError(f"{len(values)} ref_logps for {len(row['levels'])} levels")
    chosen = [values[k] for k in selected]
    rounds = len(row["rounds"])
    if any(not isinstance(level, list) or len(level) != rounds for level in chosen):
        raise DataError(f"ref_logps need one value per round ({rounds}) of every level")
    if any(value is None or not math.isfinite(value) for level in chosen for value in level):
        raise DataError("a reference log-prob is missing or not finite")
    return chosen


def answer_ids(row: dict[str, Any], selected: list[int]) -> list[list[int]]:
    """Per selected level and round, the position (among `selected`) of the first level whose
    answer in that round is the same text: two levels answer round t alike where their ids
    are equal (the loss's dialogue_pairs options read it)."""
    answers = [row["levels"][k]["answers"] for k in selected]
    return [
        [
            next(j for j, other in enumerate(answers) if other[t] == level[t])
            for t in range(len(level))
        ]
        for level in answers
    ]


class LevelEncoder:
    """Ray Data callable: preference rows (PREFERENCES or REFERENCE_LOGPROBS) in, ENCODED_LEVELS
    rows (token ids beside the stored image) out: of items with `num_levels` levels, those at
    `levels`, with their ref_logps if `need_reference`."""

    def __init__(
        self, settings: EncodeSettings, num_levels: int, levels: list[int], need_reference: bool
    ) -> None:
        self.processor = settings.load_processor()
        self.max_length = settings.max_length
        self.num_levels = num_levels
        self.levels = levels
        self.need_reference = need_reference
        self.storage = settings.storage

    def encode(self, row: dict[str, Any]) -> tuple[list[Encoded], list[list[float]]]:
        count = len(row.get("levels") or [])
        if count < 2:
            raise DataError(f"only {count} level(s); preference training needs at least 2")
        if count != self.num_levels:
            raise DataError(f"{count} levels where training.num_levels is {self.num_levels}")
        reference = check_reference(row, self.levels) if self.need_reference else []
        encoded = encode_levels(self.processor, row, self.max_length, self.storage, self.levels)
        return encoded, reference

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for row in batch.to_pylist():
            try:
                (levels, reference), reason = self.encode(row), None
            except DataError as exc:
                (levels, reference), reason = ([], []), exc.message
            rows.append(
                {
                    "item_id": row["item_id"],
                    "input_ids": [level.input_ids for level in levels],
                    "response_weights": [level.response_weights for level in levels],
                    "ref_logps": reference,
                    "answer_ids": answer_ids(row, self.levels) if reason is None else [],
                    "length": max((len(level) for level in levels), default=0),
                    **stored_image(row),
                    QUARANTINE_REASON: reason,
                    ROW_JSON: None if reason is None else row_to_json(row),
                }
            )
        return pa.Table.from_pylist(rows, schema=ENCODED)


def level_items(batch: pa.Table) -> list[LevelItem]:
    """The training pipeline's rows (encoded levels with `vision`) as `LevelItem`s, for
    `models.level_scoring.collate_levels`."""
    items = []
    columns = ["item_id", "input_ids", "response_weights", "ref_logps", "answer_ids", "vision"]
    for row in batch.select(columns).to_pylist():
        vision = unpack_vision(row["vision"])
        levels = [
            Encoded(ids, weights, vision)
            for ids, weights in zip(row["input_ids"], row["response_weights"], strict=True)
        ]
        items.append(LevelItem(row["item_id"], levels, row["ref_logps"], row["answer_ids"]))
    return items
