"""Hiding image tokens from the language model (BDHS, arXiv 2407.02477 §3.4).

Each image token i draws ρ_i ~ U(0, 1) and stays visible only if ρ_i ≥ ρ_th: ρ_th = 0 hides
nothing, ρ_th = 1 hides every image token, 0.99 leaves about 1% visible. Hiding is done in the
attention mask; position ids must then be passed explicitly (see `conversation.collate`), or the
model would derive them from the mask and shift every later token by the number hidden.
"""

from __future__ import annotations

import torch


def hide_image_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_token_id: int,
    rho_th: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A copy of `attention_mask` with each image token hidden unless its draw reaches rho_th."""
    is_image = input_ids == image_token_id
    draws = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    hidden = is_image & (draws < rho_th)
    return attention_mask * (~hidden).to(attention_mask.dtype)
