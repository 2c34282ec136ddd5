"""Per-sequence response log-probs: the one scoring function behind training, reference scoring
and evaluation.

log π(y|x) = Σ_t w_t · log π(y_t | x, y_<t) over response tokens, where w_t is the token's
response weight (1 in the answers, 0 on the prompt, the image tokens and padding). Summed, not
averaged, as DPO and MDPO define r(y). Preference training and the reference stage keep the sum
of each dialogue round apart (`round_logprobs`): the loss chooses which rounds a pair compares
and how each weighs (training/objective.py).
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


def response_rounds(weights: torch.Tensor) -> torch.Tensor:
    """The round of every token of [N, L] response weights, −1 outside the answers: the t-th run
    of weighted tokens in a row is round t's answer (conversation.encode_conversation marks
    each answer, its end-of-turn tokens included, and never the user turn between two)."""
    weighted = weights > 0
    starts = weighted & ~torch.nn.functional.pad(weighted[:, :-1], (1, 0), value=False)
    return torch.where(weighted, starts.long().cumsum(-1) - 1, -1)


def per_round_sums(values: torch.Tensor, rounds: torch.Tensor) -> torch.Tensor:
    """[N, T]: the sum of `values` [N, L] over the tokens of each round (`response_rounds`),
    T the most rounds of any row; 0 for the rounds a row lacks."""
    num_rounds = max(int(rounds.max()) + 1, 1)
    out = values.new_zeros(values.shape[0], num_rounds)
    return out.scatter_add(1, rounds.clamp(min=0), torch.where(rounds >= 0, values, 0.0))


def round_logprobs(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each round's summed response log-prob of every sequence of a right-padded batch
    (`conversation.collate`), [B, T]; `sequence_logprobs` is their sum."""
    inputs = forward_inputs(model, batch)
    logits = model(**inputs, use_cache=False).logits
    weights = batch["response_weights"][:, 1:].to(logits.device)
    logps = token_logprobs(logits, batch["input_ids"]) * weights
    return per_round_sums(logps, response_rounds(weights))


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
