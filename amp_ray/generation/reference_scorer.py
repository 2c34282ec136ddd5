"""Reference log-probs, scored once on Ray Data so that training never holds the reference model.

For every preference item and each of its K levels, log π_ref of each round's answer (a caption
is one round), summed over the round's tokens by `models/logprobs.py` as training sums the
policy's, over the same encoding (`models/conversation.py`). Kept per round so that every recipe
(which rounds a pair compares, how each weighs: training/objective.py) reads the one stored
score. The K sequences of an item are scored together.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import torch

from amp_ray.data.encode import encode_levels
from amp_ray.errors import DataError
from amp_ray.models.conversation import collate
from amp_ray.models.logprobs import round_logprobs
from amp_ray.models.registry import ActorModel
from amp_ray.storage.quarantine import QUARANTINE_REASON
from amp_ray.storage.schemas import REFERENCE_LOGPROBS

SCORED_ROWS = REFERENCE_LOGPROBS.append(pa.field(QUARANTINE_REASON, pa.string()))


def scorer_kwargs(spec: Any, run_dir: Any, name: str) -> dict[str, Any]:
    """ReferenceScorer's constructor arguments for reference model `name`, from the spec's
    reference and training blocks (the reference stage and the online rounds)."""
    from amp_ray.models.registry import actor_model

    return {
        "model": actor_model(spec, run_dir, name, spec.reference.actors.num_cpus),
        "max_length": spec.training.max_length,
        "micro_batch_size": spec.reference.micro_batch_size,
    }


class ReferenceScorer:
    """Ray Data callable: PREFERENCES rows in, the same rows with `ref_logps` (per level, per
    round) out (rows that arrive with a quarantine reason pass through with it)."""

    def __init__(self, model: ActorModel, max_length: int, micro_batch_size: int) -> None:
        from amp_ray.models.loading import load_for_inference

        self.model, self.processor = load_for_inference(model)
        self.model_name = model.name
        self.dtype = str(self.model.dtype).removeprefix("torch.")  # what "auto" resolved to
        self.max_length = max_length
        self.micro_batch_size = micro_batch_size
        self.storage = model.storage

    @torch.inference_mode()
    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        sequences, owners = [], []
        for index, row in enumerate(rows):
            # a row set aside upstream in the same chain (the online rounds' ranker) keeps its
            # reason: it has no levels to score
            upstream = row.get(QUARANTINE_REASON)
            row["ref_model"], row["ref_dtype"], row["ref_logps"] = self.model_name, self.dtype, []
            row[QUARANTINE_REASON] = upstream
            if upstream is not None:
                continue
            try:
                encoded = encode_levels(self.processor, row, self.max_length, self.storage)
            except DataError as exc:
                row[QUARANTINE_REASON] = exc.message
                continue
            sequences += encoded
            owners += [(index, len(row["rounds"]))] * len(encoded)
        pad = self.processor.tokenizer.pad_token_id
        for start in range(0, len(sequences), self.micro_batch_size):
            chunk = sequences[start : start + self.micro_batch_size]
            inputs = collate(chunk, pad, padding_side="right")
            inputs = {key: value.to(self.model.device) for key, value in inputs.items()}
            values = round_logprobs(self.model, inputs).double().tolist()
            for (index, rounds), value in zip(owners[start:][: len(chunk)], values, strict=True):
                rows[index]["ref_logps"].append(value[:rounds])
        for row in rows:
            finite = all(
                value == value and abs(value) != float("inf")
                for level in row["ref_logps"]
                for value in level
            )
            if row[QUARANTINE_REASON] is None and not finite:
                row[QUARANTINE_REASON] = "the reference log-prob is not finite"
        return pa.Table.from_pylist(rows, schema=SCORED_ROWS)
