"""The spec's loss name to a call of its pure function (losses/preference.py). What each loss
needs from the data (levels, the reference, the best response alone) is in losses/table.py.

The scorers give each level's log-prob per dialogue round (a caption is one round); here the
rounds become the losses' inputs: r_k = Σ_t w_t r_kt with AMP's round weights w_t = 1 + step·t,
the pair logits of the recipe's `dialogue_pairs` (losses/preference.pair_logits), and, with
`sft_weight`, the control's per-token NLL of level 0 added (docs/methods.md, "Dialogues in the
loss").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from amp_ray.losses.preference import (
    LossOutput,
    avg_dpo_loss,
    best_response_nll,
    mdpo_loss,
    mixed_dpo_loss,
    pair_logits,
    pairwise_loss,
)

if TYPE_CHECKING:
    from amp_ray.spec.alignment import TrainingSpec

PAIR_KINDS = {"dpo": "sigmoid", "ipo": "ipo", "slic": "hinge"}


@dataclass(frozen=True)
class Objective:
    """The loss settings of training (spec.alignment.TrainingSpec)."""

    loss: str
    beta: float
    penalty_weight: float
    length_normalise: bool
    spread_over_pairs: bool
    gamma: float
    round_weight_step: float = 0.0
    dialogue_pairs: str = "whole"
    sft_weight: float = 0.0

    @classmethod
    def from_recipe(cls, recipe: TrainingSpec) -> Objective:
        """The loss settings of a training block (or a compared arm's)."""
        return cls(
            loss=recipe.loss,
            beta=recipe.beta,
            penalty_weight=recipe.penalty.weight,
            length_normalise=recipe.penalty.length_normalise,
            spread_over_pairs=recipe.penalty.spread_over_pairs,
            gamma=recipe.gamma,
            round_weight_step=recipe.round_weight_step,
            dialogue_pairs=recipe.dialogue_pairs,
            sft_weight=recipe.sft_weight,
        )

    def __call__(
        self,
        policy: torch.Tensor,
        reference: torch.Tensor,
        lengths: torch.Tensor,
        answers: torch.Tensor,
        generator: torch.Generator,
    ) -> LossOutput:
        """policy, reference: [B, K, T] log-probs per round; lengths: [B, K] scored tokens;
        answers: [B, K, T], equal where two levels answer a round alike (−1 past an item's
        rounds); generator: draws Mixed-DPO's per-item choice, seeded by the caller per step."""
        if policy.shape != reference.shape or policy.shape != answers.shape:
            raise ValueError(
                f"policy {tuple(policy.shape)}, reference {tuple(reference.shape)} and answers "
                f"{tuple(answers.shape)} must all be [items, levels, rounds]"
            )
        if self.loss == "sft":
            return best_response_nll(policy.sum(-1), lengths[:, 0])
        steps = torch.arange(policy.shape[-1], device=policy.device, dtype=policy.dtype)
        weights = 1.0 + self.round_weight_step * steps
        totals, ref_totals = (policy * weights).sum(-1), (reference * weights).sum(-1)
        logits = None
        if self.dialogue_pairs != "whole":
            logits = pair_logits(policy - reference, answers, weights, self.dialogue_pairs)
        out = self.preference_loss(totals, ref_totals, lengths, logits, generator)
        if self.sft_weight:
            nll = best_response_nll(policy.sum(-1), lengths[:, 0]).loss
            out = LossOutput(out.loss + self.sft_weight * nll, {**out.metrics, "nll": nll.detach()})
        return out

    def preference_loss(
        self,
        policy: torch.Tensor,
        reference: torch.Tensor,
        lengths: torch.Tensor,
        logits: torch.Tensor | None,
        generator: torch.Generator,
    ) -> LossOutput:
        """The recipe's loss over [B, K] log-probs (`logits`: the pair logits, when the
        dialogue_pairs setting makes them otherwise than r_i − r_j)."""
        if self.loss in ("mdpo", "mdpo_naive"):
            return mdpo_loss(
                policy,
                reference,
                self.beta,
                self.penalty_weight if self.loss == "mdpo" else 0.0,
                lengths[:, 0] if self.length_normalise else None,
                self.spread_over_pairs,
                logits,
            )
        if self.loss in PAIR_KINDS:
            return pairwise_loss(policy, reference, self.beta, PAIR_KINDS[self.loss], logits)
        if self.loss == "mixed_dpo":
            draws = torch.rand(policy.shape[0], generator=generator).to(policy.device)
            return mixed_dpo_loss(policy, reference, draws < 0.5, self.beta, logits)
        if self.loss == "avg_dpo":
            return avg_dpo_loss(policy, reference, self.beta, self.gamma, logits)
        raise ValueError(f"unknown loss {self.loss!r}")
