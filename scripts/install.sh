#!/usr/bin/env bash
# Install mtl (editable) into the current Python environment.
#   bash scripts/install.sh        # the package
#   bash scripts/install.sh dev    # plus pytest, ruff and the serving extra (onnx, onnxruntime, litserve)
# PyTorch first: where no NVIDIA GPU is present the CPU build (torch==2.13.0) is pinned so pip
# does not pull several GB of CUDA packages; with a GPU, pip's default (CUDA) build.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    python -m pip install torch
  else
    python -m pip install "torch==2.13.0" ${MTL_TORCH_INDEX_URL:+--index-url "$MTL_TORCH_INDEX_URL"}
  fi
fi
extra=""
[ "${1:-}" = "dev" ] && extra="[dev]"
python -m pip install -q -e ".${extra}"
