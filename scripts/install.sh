#!/usr/bin/env bash
# Creates (or reuses) a virtual environment and installs amp-ray into it with its dev extras.
#
#   scripts/install.sh [VENV]        VENV defaults to .venv
#
# torch goes in first and alone, then is held by a constraint while everything else installs:
# a plain `torch` requirement on a machine without torch pulls a multi-GB CUDA build. A venv
# that already has torch (say a CUDA build on a GPU node: VENV=/path/to/that/env) keeps it.
#   TORCH_SPEC       what to install when the venv has no torch (default torch==2.13.0)
#   TORCH_INDEX_URL  an index to take it from, e.g. https://download.pytorch.org/whl/cpu
#   PYTHON           the interpreter that creates the venv (default python3)
#   INSTALLER        uv (default) or pip: what installs amp-ray[dev] once torch is in. uv, itself
#                    pip-installed into the venv, takes ~25 s where pip takes ~2.5 min on a fresh
#                    2-core machine (bytecode compiled by both); uv reads UV_INDEX_URL and
#                    uv.toml, not pip.conf: INSTALLER=pip where only pip's config names your index
set -euo pipefail
venv=${1:-.venv}
installer=${INSTALLER:-uv}
python=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)

if [ ! -x "$venv/bin/python" ]; then
  echo "amp-ray install: creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip install --quiet --disable-pip-version-check)

if ! torch_version=$("$py" -W ignore -c 'import torch; print(torch.__version__)' 2>/dev/null); then
  spec=${TORCH_SPEC:-torch==2.13.0}
  echo "amp-ray install: installing $spec on its own first"
  "${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$spec"
  torch_version=$("$py" -W ignore -c 'import torch; print(torch.__version__)')
fi
echo "amp-ray install: holding torch==$torch_version"
echo "torch==$torch_version" > "$venv/torch-constraint.txt"

echo "amp-ray install: installing amp-ray[dev] (pinned by constraints.txt) with $installer"
if [ "$installer" = uv ]; then
  "${pip[@]}" -c "$here/constraints.txt" uv
  "$venv/bin/uv" pip install --quiet --python "$py" --compile-bytecode \
    -c "$here/constraints.txt" -c "$venv/torch-constraint.txt" -e "$here[dev]"
else
  "${pip[@]}" -c "$here/constraints.txt" -c "$venv/torch-constraint.txt" -e "$here[dev]"
fi
"$py" -m pip check

# DeepSpeed's CPU backend loads a shared-memory collective op (deepspeed_shm_comm) that it
# compiles with g++ the first time a training run starts (a silent minute inside the first
# stage). Build it now, into torch's extension cache, so that the first run costs what the
# second does. GPU nodes (NCCL) load no such op.
if "$py" -c 'import sys, torch; sys.exit(torch.cuda.is_available())'; then
  echo "amp-ray install: building DeepSpeed's CPU communication op (once)"
  DS_ACCELERATOR=cpu "$py" -c 'from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load(verbose=False)' \
    > "$venv/deepspeed-op-build.log" 2>&1 \
    || echo "amp-ray install: could not build it (see $venv/deepspeed-op-build.log); DeepSpeed will try at the first run"
fi
touch "$venv/.amp-ray-installed"
