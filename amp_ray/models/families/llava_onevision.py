"""LLaVA-OneVision: LLaVA-NeXT's anyres tiles (up to anyres_max_9) over a SigLIP tower and a Qwen2
language model; also batch_num_images [1] per item."""

from amp_ray.models.families.base import Family

LLAVA_ONEVISION = Family(name="llava_onevision", model_types=("llava_onevision",))
