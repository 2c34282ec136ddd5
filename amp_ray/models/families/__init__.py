"""The VLM families amp-ray aligns, one adapter each (base.py says what an adapter holds).

A new family: one file defining its `Family` (or a subclass where its positions differ), and one
entry in FAMILIES and in tests/vlm_families.py's list.
"""

from __future__ import annotations

from typing import Any

from amp_ray.errors import AmpRayError
from amp_ray.models.families.base import Family, positions_from_mask
from amp_ray.models.families.idefics3 import IDEFICS3
from amp_ray.models.families.llava import LLAVA
from amp_ray.models.families.llava_next import LLAVA_NEXT
from amp_ray.models.families.llava_onevision import LLAVA_ONEVISION
from amp_ray.models.families.qwen2_5_vl import QWEN2_5_VL
from amp_ray.models.families.qwen2_vl import QWEN2_VL

FAMILIES = (LLAVA, LLAVA_NEXT, LLAVA_ONEVISION, QWEN2_VL, QWEN2_5_VL, IDEFICS3)
_BY_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}


def family_of(model_or_config: Any) -> Family:
    """The adapter of a model, a PEFT or DeepSpeed wrapper of one, or a config (model_type)."""
    config = getattr(unwrapped(model_or_config), "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in _BY_TYPE:
        supported = ", ".join(sorted(_BY_TYPE))
        raise AmpRayError(
            f"model type {model_type!r} is not a family amp-ray supports ({supported})",
            hint="add an adapter in amp_ray/models/families/ (one file) for another family",
        )
    return _BY_TYPE[model_type]


def unwrapped(model: Any) -> Any:
    """The HF model (or its PEFT wrapper) inside a DeepSpeed engine; the model itself otherwise."""
    from torch import nn

    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


# what a collated batch holds besides the model's vision inputs
BATCH_KEYS = ("input_ids", "attention_mask", "response_weights", "response_lengths")


def forward_inputs(model: Any, batch: dict[str, Any], attention_mask: Any = None) -> dict[str, Any]:
    """The model's inputs for a `conversation.collate` batch: ids, vision inputs, the family's
    positions made from the batch's own mask, and `attention_mask` to attend with where it is
    given (image tokens hidden: the positions stay those of the whole sequence)."""
    model = unwrapped(model)
    vision = {key: value for key, value in batch.items() if key not in BATCH_KEYS}
    mask = batch["attention_mask"]
    positions = family_of(model).position_ids(model, batch["input_ids"], mask, vision)
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": mask if attention_mask is None else attention_mask,
        "position_ids": positions,
        **vision,
    }


__all__ = ["FAMILIES", "Family", "family_of", "forward_inputs", "positions_from_mask"]
