"""The preference losses against values derived by hand, and against plain loops."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from amp_ray.losses import LOSSES
from amp_ray.losses.preference import (
    avg_dpo_loss,
    best_response_nll,
    level_pairs,
    mdpo_loss,
    mixed_dpo_loss,
    pair_logits,
    pairwise_loss,
)
from amp_ray.spec.alignment import TrainingSpec
from amp_ray.training.objective import Objective


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def rewards_as_logps(rewards: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Policy log-probs whose implicit rewards are `rewards`, against a non-trivial reference."""
    reference = -torch.arange(1.0, 1.0 + len(rewards) * len(rewards[0])).reshape(len(rewards), -1)
    return reference + torch.tensor(rewards, dtype=torch.float32), reference


def test_mdpo_by_hand_k3() -> None:
    # K=3, β=1, λ=1, r = (1, 0, −1): pairs (0,1) h=1, (0,2) h=2, (1,2) h=1; penalised pairs
    # (0,1), (0,2) each −r_0 = −1. L = [2·(−log σ(1)) + (−log σ(2)) − 2] / 3.
    policy, reference = rewards_as_logps([[1.0, 0.0, -1.0]])
    out = mdpo_loss(policy, reference, beta=1.0, penalty_weight=1.0)
    expected = (-2 * log_sigmoid(1.0) - log_sigmoid(2.0) - 2.0) / 3
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["penalty"].item() == pytest.approx(-2.0 / 3, abs=1e-6)
    assert out.metrics["accuracy/0-2"].item() == 1.0
    assert out.metrics["margin/0-2"].item() == pytest.approx(2.0)
    assert out.metrics["margin/1-2"].item() == pytest.approx(1.0)


def test_mdpo_penalty_options() -> None:
    # spread: the penalty's weight is λ whatever K (here −0.5·r_0 = −0.5); length-normalised:
    # r_0 / |y_0| = 1 / 4.
    policy, reference = rewards_as_logps([[1.0, 0.0, -1.0, 0.5]])
    spread = mdpo_loss(policy, reference, beta=1.0, penalty_weight=0.5, spread_over_pairs=True)
    assert spread.metrics["penalty"].item() == pytest.approx(-0.5)
    per_token = mdpo_loss(
        policy, reference, beta=1.0, penalty_weight=1.0, best_lengths=torch.tensor([4.0])
    )
    # default weight λ(K−1)/P = 3/6
    assert per_token.metrics["penalty"].item() == pytest.approx(-0.5 * 0.25)
    naive = mdpo_loss(policy, reference, beta=1.0, penalty_weight=0.0)
    assert naive.loss.item() == pytest.approx(naive.metrics["pair_loss"].item())


def test_mdpo_k2_without_penalty_is_dpo() -> None:
    generator = torch.Generator().manual_seed(0)
    policy = torch.randn(16, 2, generator=generator) * 5
    reference = torch.randn(16, 2, generator=generator) * 5
    mdpo = mdpo_loss(policy, reference, beta=0.1, penalty_weight=0.0).loss
    dpo = pairwise_loss(policy, reference, beta=0.1).loss
    assert mdpo.item() == dpo.item()


def test_pairwise_by_hand() -> None:
    # β=0.5, r = (2, 0): DPO −log σ(1), IPO (2 − 1)², SLiC max(0, 1 − 1).
    policy, reference = rewards_as_logps([[2.0, 0.0]])
    assert pairwise_loss(policy, reference, 0.5).loss.item() == pytest.approx(-log_sigmoid(1.0))
    assert pairwise_loss(policy, reference, 0.5, "ipo").loss.item() == pytest.approx(1.0)
    assert pairwise_loss(policy, reference, 0.5, "hinge").loss.item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="2 levels"):
        pairwise_loss(*rewards_as_logps([[1.0, 0.0, 0.0]]), beta=0.1)


def test_mixed_and_avg_dpo_by_hand() -> None:
    # r = (1, 0, −1), β=1: offline pair h=1, online pair h=2.
    policy, reference = rewards_as_logps([[1.0, 0.0, -1.0], [1.0, 0.0, -1.0]])
    mixed = mixed_dpo_loss(policy, reference, torch.tensor([True, False]), beta=1.0)
    assert mixed.loss.item() == pytest.approx(-(log_sigmoid(1.0) + log_sigmoid(2.0)) / 2)
    average = avg_dpo_loss(policy, reference, beta=1.0, gamma=0.25)
    assert average.loss.item() == pytest.approx(-(0.25 * log_sigmoid(1.0) + 0.75 * log_sigmoid(2)))
    zero = avg_dpo_loss(*rewards_as_logps([[0.0, 0.0, 0.0]]), beta=1.0, gamma=0.5)
    assert zero.loss.item() == pytest.approx(math.log(2))


def test_best_response_nll_is_per_token() -> None:
    policy = torch.tensor([[-6.0, -1.0], [-2.0, -9.0]])
    out = best_response_nll(policy, torch.tensor([3.0, 1.0]))
    assert out.loss.item() == pytest.approx(8.0 / 4.0)


def mdpo_by_loops(
    policy: torch.Tensor, reference: torch.Tensor, beta: float, weight: float, spread: bool
) -> float:
    batch, levels = policy.shape
    total, count = 0.0, 0
    pairs = levels * (levels - 1) // 2
    per_pair = weight * pairs / (levels - 1) if spread else weight
    for b in range(batch):
        r = [float(policy[b, k] - reference[b, k]) for k in range(levels)]
        for i in range(levels):
            for j in range(i + 1, levels):
                term = -log_sigmoid(beta * (r[i] - r[j]))
                if i == 0:
                    term -= per_pair * r[0]
                total += term
                count += 1
    return total / count


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("levels", [2, 3, 4, 5])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_mdpo_vectorised_equals_loops(seed: int, levels: int, batch: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    policy = torch.randn(batch, levels, generator=generator, dtype=torch.float64) * 3 - 20
    reference = torch.randn(batch, levels, generator=generator, dtype=torch.float64) * 3 - 20
    for weight, spread in ((0.0, False), (1.0, False), (0.1, True)):
        out = mdpo_loss(policy, reference, 0.1, weight, spread_over_pairs=spread)
        expected = mdpo_by_loops(policy, reference, 0.1, weight, spread)
        assert out.loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    accuracy = out.metrics[f"accuracy/0-{levels - 1}"].item()
    rewards = policy - reference
    assert accuracy == pytest.approx((rewards[:, 0] > rewards[:, -1]).double().mean().item())


def test_gradient_flows_to_policy_only_through_the_loss() -> None:
    policy = torch.tensor([[-3.0, -4.0, -5.0]], requires_grad=True)
    reference = torch.tensor([[-3.0, -4.0, -5.0]])
    mdpo_loss(policy, reference, beta=0.1, penalty_weight=1.0).loss.backward()
    # At r = 0 every pair term has gradient ∓β/2 and the penalty −2/3 on y_0; the best response's
    # log-prob must rise (negative gradient), the worst must fall.
    assert policy.grad[0, 0] < 0 < policy.grad[0, 2]
    assert level_pairs(4)[0].tolist() == [0, 0, 0, 1, 1, 2]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_in_the_table_is_computed_on_the_levels_it_takes(name: str) -> None:
    """losses/table.py and training/objective.py name the same losses: each computes a finite
    loss on the levels the table says it takes (K=4 where it takes any)."""
    kind = LOSSES[name]
    levels = kind.levels or 4
    policy = torch.randn(5, levels, 2, requires_grad=True)  # two rounds
    objective = Objective(name, 0.1, 0.5, False, True, 0.5)
    lengths, answers = torch.full((5, levels), 3.0), torch.arange(levels).repeat(5, 2, 1).mT
    out = objective(policy, torch.randn(5, levels, 2), lengths, answers, torch.Generator())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    # a best-only loss moves y_0's log-prob alone; the others move every level
    moved = (policy.grad.abs() > 0).any(dim=2).any(dim=0).tolist()
    assert moved == ([True] + [False] * (levels - 1) if kind.best_only else [True] * levels)


def test_a_loss_that_takes_two_levels_is_refused_on_four() -> None:
    with pytest.raises(ValidationError, match="loss dpo takes 2 levels per item, training on 4"):
        TrainingSpec(loss="dpo", num_levels=4)


# -- dialogues: rounds in the pair logits ---------------------------------------------------------


def test_pair_logits_by_hand() -> None:
    """K=2, T=2, w=1, r_0 = (0, 1), r_1 = (0, −1): terms per round (0, 2)."""
    rewards = torch.tensor([[[0.0, 1.0], [0.0, -1.0]]])
    ones = torch.ones(2)
    second_alike = torch.tensor([[[0, 0], [1, 0]]])  # level 1 answers round 1 as level 0 does
    none_alike = torch.tensor([[[0, 0], [1, 1]]])
    got = {
        mode: (
            pair_logits(rewards, second_alike, ones, mode).item(),
            pair_logits(rewards, none_alike, ones, mode).item(),
        )
        for mode in ("whole", "differing_rounds", "first_difference")
    }
    assert got == {
        "whole": (2.0, 2.0),
        "differing_rounds": (0.0, 2.0),
        "first_difference": (0.0, 0.0),
    }
    # round weights (1, 1.5) scale round 1's term: whole 3
    assert pair_logits(rewards, none_alike, torch.tensor([1.0, 1.5]), "whole").item() == 3.0


def test_pair_logits_of_k3_compare_each_pair_on_its_own_rounds() -> None:
    """K=3, T=3. Level 1 repeats level 0's round 0 then differs; level 2 differs from round 0.
    Pair (0,1): first difference round 1; (0,2): round 0; (1,2): round 0."""
    rewards = torch.tensor([[[1.0, 2.0, 3.0], [1.0, 0.5, 0.0], [-1.0, -2.0, 3.0]]])
    answers = torch.tensor([[[0, 0, 0], [0, 1, 0], [2, 2, 0]]])  # round 2: all alike
    w = torch.ones(3)
    first = pair_logits(rewards, answers, w, "first_difference")[0].tolist()
    differing = pair_logits(rewards, answers, w, "differing_rounds")[0].tolist()
    whole = pair_logits(rewards, answers, w, "whole")[0].tolist()
    assert first == [1.5, 2.0, 2.0]  # (2 − 0.5), (1 − (−1)), (1 − (−1))
    assert differing == [1.5, 6.0, 4.5]  # round 2 left out of every pair
    assert whole == [4.5, 6.0, 1.5]  # (1,2) keeps round 2: 0 − 3


def test_a_caption_is_the_same_pair_in_every_mode() -> None:
    rewards = torch.randn(4, 3, 1)
    answers = torch.tensor([0, 1, 2]).repeat(4, 1).unsqueeze(-1)
    whole = pair_logits(rewards, answers, torch.ones(1), "whole")
    for mode in ("differing_rounds", "first_difference"):
        assert torch.equal(pair_logits(rewards, answers, torch.ones(1), mode), whole)


def test_objective_weights_rounds_and_adds_the_sft_term() -> None:
    """DPO, β=1, one item of 2 rounds, reference 0: policy r_0 = (−1, −2), r_1 = (−3, −4),
    level 0 has 5 tokens. Round weights (1, 1.5): h = (−1+3) + 1.5·(−2+4) = 5;
    sft_weight 0.5 adds 0.5 · (1 + 2) / 5."""
    policy = torch.tensor([[[-1.0, -2.0], [-3.0, -4.0]]])
    answers = torch.tensor([[[0, 0], [1, 1]]])
    lengths = torch.tensor([[5.0, 5.0]])
    plain = Objective("dpo", 1.0, 0.0, False, False, 0.5, round_weight_step=0.5)
    out = plain(policy, torch.zeros_like(policy), lengths, answers, torch.Generator())
    assert out.loss.item() == pytest.approx(-log_sigmoid(5.0), abs=1e-6)
    rpo = Objective("dpo", 1.0, 0.0, False, False, 0.5, round_weight_step=0.5, sft_weight=0.5)
    out = rpo(policy, torch.zeros_like(policy), lengths, answers, torch.Generator())
    assert out.loss.item() == pytest.approx(-log_sigmoid(5.0) + 0.5 * 3 / 5, abs=1e-6)
    assert out.metrics["nll"].item() == pytest.approx(3 / 5)
    # the margins reported are the pair logits the loss used
    first = Objective("dpo", 1.0, 0.0, False, False, 0.5, dialogue_pairs="first_difference")
    out = first(policy, torch.zeros_like(policy), lengths, answers, torch.Generator())
    assert out.metrics["margin/0-1"].item() == pytest.approx(2.0)
