"""Qwen2.5-VL: Qwen2-VL's packed patches and M-RoPE (qwen2_vl.py); its vision tower adds window
attention, which changes nothing of how a batch is made."""

from amp_ray.models.families.qwen2_vl import MRopeFamily

QWEN2_5_VL = MRopeFamily(name="qwen2_5_vl", model_types=("qwen2_5_vl",))
