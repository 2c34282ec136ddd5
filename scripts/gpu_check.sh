#!/usr/bin/env bash
# The GPU check: the tests marked `gpu` on a machine with CUDA, in at most 8 minutes on one GPU.
#
#   scripts/gpu_check.sh [PYTHON]       PYTHON defaults to .venv/bin/python
#
# It needs an environment where amp-ray and its dev extras are installed with a CUDA build of
# torch (on a GPU node: TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 make install).
# What it runs (tests/test_gpu.py): CUDA device selection for Ray actors and tasks given a GPU;
# a generation actor pool on the GPU; bf16 DeepSpeed ZeRO-2 MDPO of a tiny LLaVA for 20 steps
# whose loss falls; QLoRA with bitsandbytes' CUDA kernels (4-bit base, paged 8-bit AdamW); ZeRO-3
# with CPU offload; two NCCL workers when the machine has two GPUs; and the model families'
# conformance suite (tests/test_families.py) with the processors as a CUDA torchvision loads
# them. The output is also written to gpu_check.log (or $OUT/gpu_check.log when OUT is set),
# for docs/cluster.md.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}
log=${OUT:-.}/gpu_check.log
{
  echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  "$python" -c 'import torch, ray, deepspeed, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "devices", torch.cuda.device_count()); print("ray", ray.__version__, "deepspeed", deepspeed.__version__, "transformers", transformers.__version__)'
  timeout 420 "$python" -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider -v -rs
  status=$?
  timeout 60 "$python" -m pytest tests/test_families.py -p no:cacheprovider -q -rs || status=1
  echo "== exit $status"
  exit "$status"
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
