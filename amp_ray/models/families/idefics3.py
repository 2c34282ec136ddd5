"""Idefics3 and SmolVLM: each image split into square tiles plus a global view, pixel_values and
pixel_attention_mask [1, images, ...]; the model drops the all-zero images that pad a batch. The
row/column tokens around the tiles stay visible when BDHS hides the <image> tokens: they tell the
tile grid (the image's aspect), not its content."""

from amp_ray.models.families.base import Family

IDEFICS3 = Family(name="idefics3", model_types=("idefics3", "smolvlm"))
