"""Every training loss by its spec name (`training.loss`), with what the rest of the pipeline
must know about it: how many levels per item it takes, whether it needs the reference model's
log-probs, whether it reads the best response alone. The spec's validation, the train stage and
the training loop all ask this table; training/objective.py calls each loss's pure function
(losses/preference.py), and tests/test_losses.py checks that it handles every name here.
Torch-free, so the spec can import it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LossKind:
    name: str
    levels: int | None  # levels per item it takes; None: any K >= 2
    needs_reference: bool  # reads reference log-probs (stored, or scored in the loop)
    best_only: bool  # reads y_0 alone: the other levels need no forward
    what: str


LOSSES: dict[str, LossKind] = {
    kind.name: kind
    for kind in (
        LossKind("mdpo", None, True, False, "AMP's MDPO: all level pairs + penalty"),
        LossKind("mdpo_naive", None, True, False, "all level pairs, no penalty"),
        LossKind("dpo", 2, True, False, "DPO (sigmoid)"),
        LossKind("ipo", 2, True, False, "IPO (squared)"),
        LossKind("slic", 2, True, False, "SLiC (hinge)"),
        LossKind("mixed_dpo", 3, True, False, "BDHS Mixed-DPO"),
        LossKind("avg_dpo", 3, True, False, "BDHS Avg-DPO"),
        LossKind("sft", None, False, True, "continued SFT on y_0"),
    )
}
