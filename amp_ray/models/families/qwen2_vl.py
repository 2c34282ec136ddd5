"""Qwen2-VL: patches of every image packed into pixel_values [patches, dim] with image_grid_thw
[1, 3] per image, and multimodal rotary positions (M-RoPE, [3, B, T]: temporal, height, width).

The positions come from the model's own `get_rope_index`, over the attention mask *before* image
tokens are hidden (it drops masked tokens, so a hidden image would shift the rest); a 2-D
position_ids would be taken silently as text positions on all three axes. Text after the image
advances the three axes together, so a cached prefix's responses continue from its largest
position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from amp_ray.models.families.base import Family


@dataclass(frozen=True)
class MRopeFamily(Family):
    def position_ids(
        self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, vision: dict
    ) -> torch.Tensor:
        """[3, B, T] from get_rope_index; `attention_mask` must be the padding mask alone."""
        token_types = (input_ids == self.image_token_id(model.config)).long()  # 1: image
        positions, _ = rope_index_owner(model).get_rope_index(
            input_ids,
            mm_token_type_ids=token_types,
            image_grid_thw=vision.get("image_grid_thw"),
            attention_mask=attention_mask,
        )
        return positions

    def continued_positions(
        self, prefix_positions: torch.Tensor, repeats: int, response_mask: torch.Tensor
    ) -> torch.Tensor:
        start = prefix_positions.amax(dim=(0, 2)).repeat_interleave(repeats) + 1
        offsets = torch.arange(response_mask.shape[1], device=start.device)
        text = (start[:, None] + offsets) * response_mask
        return text.unsqueeze(0).expand(3, -1, -1)


def rope_index_owner(model: Any) -> Any:
    """The module that defines get_rope_index (the inner Qwen2VLModel), through PEFT and
    DeepSpeed wrappers."""
    for module in model.modules():
        if hasattr(type(module), "get_rope_index"):
            return module
    raise TypeError(f"{type(model).__name__} has no get_rope_index: not a Qwen2-VL model")


QWEN2_VL = MRopeFamily(name="qwen2_vl", model_types=("qwen2_vl",))
