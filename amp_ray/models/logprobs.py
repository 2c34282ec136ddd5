"""Per-sequence response log-probs: the one scoring function behind training, reference scoring
and evaluation.

log π(y|x) = Σ_t w_t · log π(y_t | x, y_<t) over response tokens, where w_t is the token's
response weight (1 in plain responses, 1 + step·round in weighted dialogues, 0 on the prompt,
the image tokens and padding). Summed, not averaged, as DPO and MDPO define r(y).
"""

from __future__ import annotations

from typing import Any

import torch

from amp_ray.models.families import forward_inputs


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log π(token_t | tokens_<t) for t = 1..T−1, computed without a full log-softmax copy."""
    return picked_logprobs(logits[:, :-1], input_ids[:, 1:])


def picked_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] at every position, in float32 at least (bf16 logits would
    round the log-probs that DPO subtracts from each other)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def sequence_logprobs(
    model: Any,
    batch: dict[str, torch.Tensor],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed weighted response log-prob of every sequence in a right-padded batch, shape [B].

    `batch` comes from `conversation.collate`. `attention_mask` overrides the batch's mask, to
    score with image tokens hidden (`hiding.hide_image_tokens`); positions stay those of the
    full sequence (`families.forward_inputs`).
    """
    inputs = forward_inputs(model, batch, attention_mask)
    logits = model(**inputs, use_cache=False).logits
    weights = batch["response_weights"][:, 1:].to(logits.device)
    return (token_logprobs(logits, batch["input_ids"]) * weights).sum(-1)
