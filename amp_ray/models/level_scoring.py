"""Log-probs of the K responses of an item in one batched forward, sharing the image prefix.

The K responses of a preference item share the image and the prompt, and on real models the
image prefix is most of the sequence (LLaVA-1.5: 576 image tokens against ~100 response tokens).
`LevelScorer` runs that prefix once per item with a KV cache, repeats the cache for the K rows,
and runs the K right-padded responses on top of it; gradients flow back through the repeated
cache into the prefix and the vision tower. The first response token's log-prob comes from the
prefix's last logits. The caches are replayable (models/prefix_cache.py), so gradient
checkpointing keeps them. `mode="full"` scores K full sequences instead (AMP's design);
tests/test_levels.py and tests/test_families.py check that both give the same log-probs and
gradients, with and without checkpointing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from amp_ray.errors import DataError
from amp_ray.models.conversation import Encoded, collate
from amp_ray.models.families import family_of, forward_inputs, unwrapped
from amp_ray.models.logprobs import (
    per_round_sums,
    picked_logprobs,
    response_rounds,
    round_logprobs,
)
from amp_ray.models.prefix_cache import (
    checkpointing_with_cache,
    prefix_cache,
    repeated_for_responses,
)


def shared_prefix_length(levels: Sequence[Encoded]) -> int:
    """Tokens every level shares, cut before the first response token of any level."""
    first = levels[0].input_ids
    length = min(len(level) for level in levels)
    for level in levels:
        weighted = next((t for t, w in enumerate(level.response_weights) if w), len(level))
        length = min(length, weighted)
        same = next((t for t in range(length) if level.input_ids[t] != first[t]), length)
        length = min(length, same)
    if length == 0:
        raise DataError("the levels of an item share no prompt tokens")
    return length


def collate_levels(
    items: Sequence[Sequence[Encoded]], pad_token_id: int, mode: str = "shared"
) -> dict[str, torch.Tensor]:
    """A batch of B items with K levels each, for `LevelScorer`.

    shared: prefix_* [B, P] left-padded (the last prefix token sits at P−1 in every row),
    response_* [B·K, R] right-padded, the vision inputs once per item. full: the B·K full
    sequences right-padded (`conversation.collate`), the vision inputs repeated K times.
    Both carry `response_lengths` [B, K], each response's count of scored tokens.
    """
    num_levels = len(items[0])
    if any(len(levels) != num_levels for levels in items):
        raise DataError("every item of a batch needs the same number of levels")
    lengths = torch.tensor(
        [[sum(1 for w in level.response_weights if w) for level in levels] for levels in items],
        dtype=torch.float32,
    )
    if mode == "full":
        batch = collate([level for levels in items for level in levels], pad_token_id, "right")
        return {**batch, "response_lengths": lengths}
    if mode != "shared":
        raise ValueError(f"unknown scoring mode {mode!r}; use shared or full")
    prefixes, responses = [], []
    for levels in items:
        cut = shared_prefix_length(levels)
        prefixes.append(Encoded(levels[0].input_ids[:cut], [0.0] * cut, levels[0].vision))
        responses += [
            Encoded(level.input_ids[cut:], level.response_weights[cut:]) for level in levels
        ]
    prefix = collate(prefixes, pad_token_id, "left")
    response = collate(responses, pad_token_id, "right")
    batch = {f"prefix_{key}": prefix.pop(key) for key in ("input_ids", "attention_mask")}
    batch.update(prefix)  # the vision inputs
    batch.pop("response_weights")
    batch["response_input_ids"] = response["input_ids"]
    batch["response_attention_mask"] = response["attention_mask"]
    batch["response_weights"] = response["response_weights"]
    batch["response_lengths"] = lengths
    return batch


class LevelScorer(torch.nn.Module):
    """Each dialogue round's summed response log-prob of every level, [B, K, T] (T the most
    rounds of any item, 0 for rounds an item lacks; a caption is one round), from a
    `collate_levels` batch. Summed over T: log π(y_k | x).

    Wraps any image-text-to-text model whose language model takes a KV cache; a DeepSpeed
    engine wraps this module, so one engine forward scores a whole batch of items.
    """

    def __init__(self, model: Any, mode: str = "shared") -> None:
        super().__init__()
        self.model = model
        self.mode = mode

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        num_items, num_levels = batch["response_lengths"].shape
        if self.mode == "full":
            inputs = {k: v for k, v in batch.items() if k != "response_lengths"}
            return round_logprobs(self.model, inputs).view(num_items, num_levels, -1)
        vision = {
            key: value
            for key, value in batch.items()
            if not key.startswith(("prefix_", "response_"))
        }
        prefix_mask = batch["prefix_attention_mask"]
        inputs = forward_inputs(
            self.model,
            {"input_ids": batch["prefix_input_ids"], "attention_mask": prefix_mask, **vision},
        )
        response_ids = batch["response_input_ids"]
        response_mask = batch["response_attention_mask"]
        positions = family_of(self.model).continued_positions(
            inputs["position_ids"], num_levels, response_mask
        )
        # the caches are handed in and read back here: use_cache (which HF turns off under
        # checkpointing, with a warning) is not what keeps them
        with checkpointing_with_cache(self.model):
            cache = prefix_cache(unwrapped(self.model))
            prefix = self.model(**inputs, past_key_values=cache, use_cache=False, logits_to_keep=1)
            out = self.model(
                input_ids=response_ids,
                attention_mask=torch.cat(
                    [prefix_mask.repeat_interleave(num_levels, 0), response_mask], 1
                ),
                position_ids=positions,
                past_key_values=repeated_for_responses(cache, num_levels),
                use_cache=False,
            )
        # logits at t predict response token t: the prefix's last, then the response's own
        logits = torch.cat(
            [prefix.logits[:, -1:].repeat_interleave(num_levels, 0), out.logits[:, :-1]], 1
        )
        weights = batch["response_weights"]
        logps = picked_logprobs(logits, response_ids) * weights
        return per_round_sums(logps, response_rounds(weights)).view(num_items, num_levels, -1)
