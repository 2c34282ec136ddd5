"""Preference losses as pure functions of summed response log-probs.

Every loss takes `policy` and `reference` log-probs of shape [B, K]: B items, K responses per
item, best first (level 0 is the best response y_0). r_k = log π(y_k|x) − log π_ref(y_k|x) is the
implicit reward (without β) and h_ij = r_i − r_j the pair logit; for dialogues `pair_logits`
gives h_ij from per-round rewards, and the pair losses take it as `logits`. Each returns a
`LossOutput`: the scalar loss to minimise and detached metrics (docs/methods.md has the
derivations and the tests in tests/test_losses.py check hand-derived values). No setting has a
default here: the spec (spec/alignment.TrainingSpec) holds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, with gradient
    metrics: dict[str, torch.Tensor]  # detached scalars


def level_pairs(num_levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(i, j) for all i < j, i the better level: K(K−1)/2 pairs, (0,1), (0,2), …, (K−2, K−1)."""
    i, j = torch.triu_indices(num_levels, num_levels, offset=1)
    return i, j


def pair_logits(
    rewards: torch.Tensor, answers: torch.Tensor, round_weights: torch.Tensor, pairs: str
) -> torch.Tensor:
    """The pair logits h_ij, [B, P] in `level_pairs` order, of items answered over T rounds.

    rewards [B, K, T]: r_kt, the log-ratio of level k's answer in round t (0 past an item's
    rounds; a caption is one round); answers [B, K, T]: equal where two levels answer round t
    with the same text; round_weights [T]: w_t.
        whole:             h_ij = Σ_t w_t (r_it − r_jt)     (AMP: both whole conversations)
        differing_rounds:  the same sum over the rounds where i and j answer differently
        first_difference:  the term of the first such round alone (i and j share the
                           history before it; later rounds follow different histories)
    Rounds before the first difference are the same tokens after the same history in both
    levels and cancel in every mode. Example, K=2, T=2, w=1, r_0 = (0, 1), r_1 = (0, −1):
    answers alike in round 1 only: whole 2, differing_rounds 0, first_difference 0; alike in
    neither: 2, 2, 0.
    """
    i, j = level_pairs(rewards.shape[1])
    terms = round_weights * (rewards[:, i] - rewards[:, j])  # [B, P, T]
    if pairs == "whole":
        return terms.sum(-1)
    differs = answers[:, i] != answers[:, j]
    if pairs == "first_difference":
        differs = differs & (differs.long().cumsum(-1) == 1)
    elif pairs != "differing_rounds":
        raise ValueError(f"unknown dialogue_pairs {pairs!r}")
    return (terms * differs).sum(-1)


def pair_metrics(
    rewards: torch.Tensor, beta: float, logits: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Reward accuracy and margin (β·h_ij) of every level pair (AMP's code reported the last
    pair only), and the chosen (level 0) and rejected (levels ≥ 1) rewards, with β applied."""
    margins = beta * logits_of(rewards, logits).detach()
    rewards = beta * rewards.detach()
    metrics = {
        "rewards/chosen": rewards[:, 0].mean(),
        "rewards/rejected": rewards[:, 1:].mean(),
    }
    for p, (i, j) in enumerate(zip(*level_pairs(rewards.shape[1]), strict=True)):
        metrics[f"accuracy/{i}-{j}"] = (margins[:, p] > 0).float().mean()
        metrics[f"margin/{i}-{j}"] = margins[:, p].mean()
    return metrics


def logits_of(rewards: torch.Tensor, logits: torch.Tensor | None) -> torch.Tensor:
    """`logits` [B, P], or r_i − r_j of every level pair when none are given."""
    if logits is not None:
        return logits
    i, j = level_pairs(rewards.shape[1])
    return rewards[:, i] - rewards[:, j]


def pair_loss(logits: torch.Tensor, beta: float, kind: str = "sigmoid") -> torch.Tensor:
    """Per-pair loss of the pair logit h = r_w − r_l.

    sigmoid (DPO, Rafailov et al. 2023, Eq. 7):  −log σ(β·h)
    ipo (Azar et al. 2023, Eq. 17):              (h − 1/(2β))²
    hinge (SLiC-HF, Zhao et al. 2023, as TRL):   max(0, 1 − β·h)
    """
    if kind == "sigmoid":
        return -F.logsigmoid(beta * logits)
    if kind == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    if kind == "hinge":
        return torch.relu(1 - beta * logits)
    raise ValueError(f"unknown pair loss {kind!r}; use sigmoid, ipo or hinge")


def mdpo_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    beta: float,
    penalty_weight: float,
    best_lengths: torch.Tensor | None = None,
    spread_over_pairs: bool = False,
    logits: torch.Tensor | None = None,
) -> LossOutput:
    """MDPO (AMP, arXiv 2405.11165, Eq. 7 without its stray sign, and the public code):

        L = mean over items and the P = K(K−1)/2 pairs (i<j) of
            −log σ(β·(r_i − r_j))  −  λ·r_0·[i = 0]

    The penalty −λ·r_0 sits on the K−1 pairs whose chosen side is y_0, so after the mean its
    weight is c = λ·(K−1)/P = 2λ/K. `spread_over_pairs` makes c = λ for every K, the weight DPO
    (K=2) carries, so MDPO and DPO compare at equal penalty. `best_lengths` [B] divides r_0 by
    y_0's token count (a per-token penalty). λ = 0 is the naive all-pairs loss; K = 2 and λ = 0
    is DPO exactly. Example, K=2, β=1, λ=1, r = (1, 0): L = −log σ(1) − 1 = −0.6867.
    `logits` [B, P] replace r_i − r_j in the pair terms (dialogues: `pair_logits`).
    """
    rewards = policy - reference
    pairs = pair_loss(logits_of(rewards, logits), beta)  # [B, P]
    best_reward = rewards[:, 0] if best_lengths is None else rewards[:, 0] / best_lengths
    num_pairs, penalised = pairs.shape[1], rewards.shape[1] - 1
    weight = penalty_weight if spread_over_pairs else penalty_weight * penalised / num_pairs
    penalty = -weight * best_reward.mean()
    loss = pairs.mean() + penalty
    metrics = pair_metrics(rewards, beta, logits)
    metrics["penalty"] = penalty.detach()
    metrics["pair_loss"] = pairs.detach().mean()
    return LossOutput(loss, metrics)


def pairwise_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    beta: float,
    kind: str = "sigmoid",
    logits: torch.Tensor | None = None,
) -> LossOutput:
    """One pair per item, [B, 2]: DPO (`sigmoid`), IPO (`ipo`) or SLiC (`hinge`); see pair_loss.
    Example, β=0.5, r = (2, 0): DPO −log σ(1) = 0.3133, IPO (2−1)² = 1, SLiC max(0, 1−1) = 0."""
    if policy.shape[1] != 2:
        raise ValueError(f"a pairwise loss takes 2 levels per item, got {policy.shape[1]}")
    rewards = policy - reference
    loss = pair_loss(logits_of(rewards, logits)[:, 0], beta, kind).mean()
    return LossOutput(loss, pair_metrics(rewards, beta, logits))


def mixed_dpo_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    use_offline: torch.Tensor,
    beta: float,
    logits: torch.Tensor | None = None,
) -> LossOutput:
    """Mixed-DPO (BDHS, arXiv 2407.02477 §5): levels [y+, y− offline, ỹ− online], [B, 3];
    per item α ~ Bernoulli(0.5) (`use_offline`, [B] bool, drawn by the caller so this stays pure):
        L = mean of α·L_DPO(y+, y−) + (1−α)·L_DPO(y+, ỹ−)."""
    rewards = policy - reference
    h = logits_of(rewards, logits)  # pairs (0,1), (0,2), (1,2)
    offline, online = pair_loss(h[:, 0], beta), pair_loss(h[:, 1], beta)
    loss = torch.where(use_offline, offline, online).mean()
    return LossOutput(loss, pair_metrics(rewards, beta, logits))


def avg_dpo_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    beta: float,
    gamma: float,
    logits: torch.Tensor | None = None,
) -> LossOutput:
    """Avg-DPO (BDHS §5): levels [y+, y− offline, ỹ− online], [B, 3]:
    L = mean of γ·L_DPO(y+, y−) + (1−γ)·L_DPO(y+, ỹ−). Example, β=1, γ=0.5, r = (0, 0, 0):
    L = log 2 = 0.6931."""
    rewards = policy - reference
    h = logits_of(rewards, logits)  # pairs (0,1), (0,2), (1,2)
    offline, online = pair_loss(h[:, 0], beta), pair_loss(h[:, 1], beta)
    loss = (gamma * offline + (1 - gamma) * online).mean()
    return LossOutput(loss, pair_metrics(rewards, beta, logits))


def best_response_nll(policy: torch.Tensor, best_lengths: torch.Tensor) -> LossOutput:
    """The control objective: continued SFT on y_0, the mean per-token negative log-likelihood
    Σ_b −log π(y_0^b) / Σ_b |y_0^b| (the SFT stage's loss). Other levels are ignored."""
    loss = -policy[:, 0].sum() / best_lengths.sum()
    return LossOutput(loss, {"nll": loss.detach()})
