#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md "GPU", in one prepared run of at most ~9 minutes on a CUDA machine:
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# 1. latency.py on cuda: student, teacher and default in fp32 and bf16 (encoder, first click,
#    cached click, GPU memory) and the student/teacher encoders with each SDPA kernel;
# 2. the precision gate on cuda: fp32 and bf16 there against fp32 on the CPU (masks of the shipped
#    default model on the development volumes, logits of random official-size models);
# 3. the engine's CUDA path under pytest (Session picks cuda when there is one; three tests that
#    need SimpleITK or FastAPI, absent on the GPU image used here, are left out);
# 4. torch.compile of the encoder (plain and with CUDA graphs) for the student and the default.
# Each step has its own time limit inside an overall deadline ($GPU_CHECK_SECONDS, default 540) and
# tees its output to OUT_DIR; GPU_CHECK_STEPS="latency pytest" runs only those steps.
# Needs: torch with CUDA, numpy, scipy, safetensors, tqdm, nibabel (the wheels in .device/whl, if
# present, are installed to /tmp/site first) and the development volumes ($FASTSAM3D_DATA, or
# .device/data when present: `fastsam3d data fetch`).
set -u
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
deadline=$((SECONDS + ${GPU_CHECK_SECONDS:-540}))
export PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} FASTSAM3D_CACHE=${FASTSAM3D_CACHE:-/tmp/fastsam3d-cache}
if compgen -G ".device/whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .device/whl/*.whl
    export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
[ -d .device/data ] && export FASTSAM3D_DATA=${FASTSAM3D_DATA:-$PWD/.device/data}

step() {  # step NAME SECONDS COMMAND...: run within min(SECONDS, time left), output to $out/NAME.txt
    local name=$1 limit=$2
    shift 2
    [[ " ${GPU_CHECK_STEPS:-latency gate pytest compile} " == *" $name "* ]] || return 0
    local left=$((deadline - SECONDS))
    ((left < limit)) && limit=$left
    if ((limit < 20)); then
        echo "## $name: skipped (deadline)" | tee "$out/$name.txt"
        return
    fi
    echo "## $name ($limit s at most): $*"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    echo "## $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s"
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
    nproc
} 2>&1 | tee "$out/machine.txt"
threads=$(($(nproc) < 8 ? $(nproc) : 8))
step latency 200 python3 benchmarks/latency.py --device cuda --threads "$threads" --repeats 20 --paired-repeats 10 \
    --models fastsam3d sam-med3d default --precisions fp32 bf16 --sdpa
step gate 110 python3 benchmarks/precision_gate.py --device cuda --threads "$threads" --precisions fp32 bf16 \
    --random fastsam3d sam-med3d
step pytest 80 python3 -m pytest -q -p no:cacheprovider tests/test_session.py tests/test_predictor.py \
    tests/modeling/test_precision.py tests/modeling/test_sam3d.py tests/modeling/test_common.py \
    tests/modeling/test_click_unet.py tests/engine/test_roi.py \
    -k "not cli_precision_option and not server_settings_precision and not same_world_place"
step compile 200 python3 benchmarks/latency.py --device cuda --threads "$threads" --repeats 20 --paired-repeats 0 \
    --models fastsam3d default --precisions bf16+compile bf16+cudagraphs
