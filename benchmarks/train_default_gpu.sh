#!/usr/bin/env bash
# The default model's recipe on a CUDA machine, as one prepared run (for a session lent a GPU):
#   bash benchmarks/train_default_gpu.sh [OUT_DIR]
# 1. throughput side by side: the CPU (batch 2, 1 worker) and the GPU (batch $BATCH, $WORKERS workers);
# 2. `fastsam3d train-default` on the GPU for $MINUTES minutes from the shipped weights, resumable
#    (run the script again with the same OUT_DIR to continue);
# 3. the held-out validation of the result beside the shipped model (`fastsam3d evaluate`, center).
# Install first (bash scripts/install.sh; it fetches the data); nothing here needs the network.
set -euo pipefail
out=${1:-gpu-train}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
cli=${FASTSAM3D:-.venv/bin/fastsam3d}
batch=${BATCH:-16}
workers=${WORKERS:-$(($(nproc) - 2))}
minutes=${MINUTES:-6}
nvidia-smi -L | tee "$out/gpu.txt"
$py benchmarks/train_throughput.py --device cpu --batch-size 2 --workers 1 --steps 10 | tee "$out/throughput-cpu.txt"
$py benchmarks/train_throughput.py --device cuda --batch-size "$batch" --workers "$workers" --steps 30 \
    | tee "$out/throughput-gpu.txt"
$cli train-default --device cuda --init default --batch-size "$batch" --workers "$workers" --lr 2e-3 \
    --minutes "$minutes" --out "$out/default-gpu" 2>&1 | tail -n 40 | tee "$out/train.txt"
$cli evaluate -q --data ~/.cache/fastsam3d/totalsegmentator/dataset.json --cases mr,ct_dicom --protocol center \
    --model default --model "$out/default-gpu/default.safetensors" --out "$out/eval-heldout"
$cli evaluate -q --data ~/.cache/fastsam3d/brains/brains.json --protocol center \
    --model default --model "$out/default-gpu/default.safetensors" --out "$out/eval-brain"
