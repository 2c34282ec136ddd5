"""LLaVA-NeXT / LLaVA-1.6: anyres tiles, pixel_values [1, tiles, 3, H, W] with the tile count
depending on the image's shape, and image_sizes [1, 2]. The model counts each image's tiles from
image_sizes and drops the zero tiles that pad a batch."""

from amp_ray.models.families.base import Family

LLAVA_NEXT = Family(name="llava_next", model_types=("llava_next",))
