"""The Hugging Face model layer: loading, conversations, log-probs, generation, tiny LLaVA builder.

Every function here takes any AutoModelForImageTextToText and its AutoProcessor: the tiny models
of the synthetic world and LLaVA checkpoints from the hub go through the same code.
"""

import os

# DeepSpeed probes for an accelerator when transformers imports it; on a machine without CUDA
# say so up front instead of letting it warn. A GPU node leaves the variable unset.
if not os.path.exists("/dev/nvidia0") and "CUDA_VISIBLE_DEVICES" not in os.environ:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
