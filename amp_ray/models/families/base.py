"""What a model family adapter says: only what differs between the VLM families amp-ray aligns.

Everything else is shared, because the families' own processors and models already agree on it:
conversations are rendered by the family's chat template and processor (token expansion
included); the vision tensors of several items make one batch the way the processors batch
images themselves, each axis after the first zero-padded to the batch's largest and the items
concatenated (`conversation.collate`: LLaVA-NeXT's and OneVision's tiles and Idefics3's images
are padded, and their models drop all-zero tiles; Qwen's packed patches are concatenated); LoRA
and `freeze_vision` find the language model with HF's `get_decoder()`; the model is the
checkpoint's AutoModelForImageTextToText. A family differs in:

- its positions (`position_ids`, `continued_positions`): 1-D from the attention mask for most,
  Qwen2-VL's multimodal rotary positions (M-RoPE) from the model's own `get_rope_index`;
- its image token (`image_token_id`: what BDHS hides).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Family:
    """A family adapter. Subclasses override the positions where the family's differ."""

    name: str
    model_types: tuple[str, ...]  # the config.model_type values it serves

    def image_token_id(self, config: Any) -> int:
        """The placeholder token the image features replace (what BDHS hides)."""
        return int(config.image_token_id)  # LLaVA's image_token_index answers to it too

    def position_ids(
        self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, vision: dict
    ) -> torch.Tensor:
        """Positions of a padded batch, from its attention mask before any image token is
        hidden: real tokens count 0, 1, 2, ... whichever side the padding is on."""
        return positions_from_mask(attention_mask)

    def continued_positions(
        self, prefix_positions: torch.Tensor, repeats: int, response_mask: torch.Tensor
    ) -> torch.Tensor:
        """Positions of responses that continue cached prefixes (each prefix row repeated
        `repeats` times): one past the prefix's last position, counting real tokens."""
        start = prefix_positions.amax(-1).repeat_interleave(repeats) + 1
        offsets = torch.arange(response_mask.shape[1], device=start.device)
        return (start[:, None] + offsets) * response_mask


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of the real tokens (0, 1, 2, ...), 0 on padding."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0) * attention_mask.long()
