"""The spec's loss name to a call of its pure function (losses/preference.py). What each loss
needs from the data (levels, the reference, the best response alone) is in losses/table.py."""

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
        )

    def __call__(
        self,
        policy: torch.Tensor,
        reference: torch.Tensor,
        lengths: torch.Tensor,
        generator: torch.Generator,
    ) -> LossOutput:
        """policy, reference: [B, K] summed log-probs; lengths: [B, K] scored tokens;
        generator: draws Mixed-DPO's per-item choice, seeded by the caller per step."""
        if self.loss in ("mdpo", "mdpo_naive"):
            return mdpo_loss(
                policy,
                reference,
                self.beta,
                self.penalty_weight if self.loss == "mdpo" else 0.0,
                lengths[:, 0] if self.length_normalise else None,
                self.spread_over_pairs,
            )
        if self.loss in PAIR_KINDS:
            return pairwise_loss(policy, reference, self.beta, PAIR_KINDS[self.loss])
        if self.loss == "mixed_dpo":
            draws = torch.rand(policy.shape[0], generator=generator).to(policy.device)
            return mixed_dpo_loss(policy, reference, draws < 0.5, self.beta)
        if self.loss == "avg_dpo":
            return avg_dpo_loss(policy, reference, self.beta, self.gamma)
        if self.loss == "sft":
            return best_response_nll(policy, lengths[:, 0])
        raise ValueError(f"unknown loss {self.loss!r}")
