"""Items to model inputs, as Ray Data callables that load the processor once per actor.

`ItemEncoder` turns rows into token ids and response weights for a training loop, beside the
image as stored (the pixel inputs are made where they are used, training/inputs.py),
and marks the rows a model cannot take (an image that does not decode or cannot be read, a
sequence longer than the model allows: never truncated, since cutting image tokens breaks the
model) so that they reach quarantine.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from amp_ray.errors import DataError
from amp_ray.models.conversation import Encoded, encode_conversation
from amp_ray.storage.location import open_location
from amp_ray.storage.quarantine import QUARANTINE_REASON, ROW_JSON, row_to_json, with_reason
from amp_ray.storage.schemas import ENCODED_ITEMS


def load_image(row: dict[str, Any], storage: Any = None) -> Image.Image:
    """The item's image as RGB, from its bytes or its URI; DataError with the reason otherwise."""
    try:
        if row.get("image") is not None:
            data = bytes(row["image"])
        elif row.get("image_uri"):
            data = open_location(row["image_uri"], storage).read_bytes()
        else:
            raise DataError("no image")
        return Image.open(io.BytesIO(data)).convert("RGB")
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"image cannot be read ({type(exc).__name__}: {exc})") from None


def encode_levels(
    processor: Any,
    row: dict[str, Any],
    max_length: int,
    storage: Any = None,
    levels: list[int] | None = None,
) -> list[Encoded]:
    """Every level of a preference row (or those at `levels`) encoded over the item's questions;
    DataError if a level does not answer every round or is longer than `max_length`."""
    image = load_image(row, storage)
    questions = [turn["question"] for turn in row["rounds"]]
    encoded = []
    for k in levels if levels is not None else range(len(row["levels"])):
        answers = row["levels"][k]["answers"]
        if len(answers) != len(questions):
            raise DataError(f"level {k} has {len(answers)} answers for {len(questions)} rounds")
        sequence = encode_conversation(processor, image, questions, answers)
        if len(sequence) > max_length:
            raise DataError(
                f"level {k}: {len(sequence)} tokens exceed training.max_length {max_length} "
                "(rows are dropped, never truncated)"
            )
        encoded.append(sequence)
    return encoded


def stored_image(row: dict[str, Any]) -> dict[str, Any]:
    """The image columns an encoded row keeps: the bytes as imported, or the URI."""
    inline = row.get("image") is not None
    return {
        "image": bytes(row["image"]) if inline else None,
        "image_uri": None if inline else row.get("image_uri"),
    }


@dataclass(frozen=True)
class EncodeSettings:
    """What an encoder (ItemEncoder, data/level_encoding.LevelEncoder) is built from, once on the
    driver: the model whose processor encodes, the longest sequence a row may have, and how to
    read (`storage`: not part of what an encoding is, stages/base.Encoding)."""

    processor_path: str  # a model URI: a run's model store, a path or a hub id
    max_length: int
    trust_remote_code: bool = False
    storage: Any = None

    def load_processor(self) -> Any:
        from amp_ray.models.processors import stored_processor

        return stored_processor(self.processor_path, self.storage, self.trust_remote_code)


class ItemEncoder:
    """Ray Data callable: item rows (ITEMS schema) in, encoded conversations out.

    Output: ENCODED_ITEMS columns (token ids, response weights, the image as stored: pixel
    inputs are made in the training workers' pipeline, training/inputs.py), and for rows that
    cannot be encoded the quarantine reason and the original row as JSON.
    """

    def __init__(self, settings: EncodeSettings) -> None:
        self.processor = settings.load_processor()
        self.max_length = settings.max_length
        self.storage = settings.storage

    def encode(self, row: dict[str, Any]) -> Encoded:
        image = load_image(row, self.storage)
        rounds = row["rounds"] or []
        questions = [turn["question"] for turn in rounds]
        answers = [turn["answer"] for turn in rounds]
        encoded = encode_conversation(self.processor, image, questions, answers)
        if len(encoded) > self.max_length:
            raise DataError(
                f"{len(encoded)} tokens exceed the model's limit of {self.max_length} "
                "(rows are dropped, never truncated)"
            )
        return encoded

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for row in batch.to_pylist():
            try:
                encoded, reason = self.encode(row), None
            except DataError as exc:
                encoded, reason = Encoded([], [], {}), exc.message
            rows.append(
                {
                    "item_id": row["item_id"],
                    "input_ids": encoded.input_ids,
                    "response_weights": encoded.response_weights,
                    "length": len(encoded),
                    **stored_image(row),
                    QUARANTINE_REASON: reason,
                    ROW_JSON: None if reason is None else row_to_json(row),
                }
            )
        return pa.Table.from_pylist(rows, schema=ENCODED)


ENCODED = with_reason(ENCODED_ITEMS)


def pack_vision(vision: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{key: value.numpy() for key, value in vision.items()})
    return buffer.getvalue()


def unpack_vision(data: bytes) -> dict[str, Any]:
    import torch

    with np.load(io.BytesIO(data)) as arrays:
        return {key: torch.from_numpy(arrays[key]) for key in arrays.files}


def encoded_rows(batch: pa.Table) -> list[Encoded]:
    """Encoded conversations from the training pipeline's rows (with `vision`), for `collate`."""
    return [
        Encoded(row["input_ids"], row["response_weights"], unpack_vision(row["vision"]))
        for row in batch.select(["input_ids", "response_weights", "vision"]).to_pylist()
    ]
