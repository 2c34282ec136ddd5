"""Preference losses: pure functions of per-response log-probs (amp_ray/losses/preference.py)."""

from amp_ray.losses.preference import (
    LossOutput,
    avg_dpo_loss,
    best_response_nll,
    level_pairs,
    mdpo_loss,
    mixed_dpo_loss,
    pair_loss,
    pairwise_loss,
)

__all__ = [
    "LossOutput",
    "avg_dpo_loss",
    "best_response_nll",
    "level_pairs",
    "mdpo_loss",
    "mixed_dpo_loss",
    "pair_loss",
    "pairwise_loss",
]
