"""LLaVA-1.5 (llava-hf/llava-1.5-*-hf): one fixed-size image, pixel_values [1, 3, H, W] per item."""

from amp_ray.models.families.base import Family

LLAVA = Family(name="llava", model_types=("llava",))
