#!/usr/bin/env bash
# The prepared check for a lent GPU (one GPU, under 8 minutes): training images/s of cifar10_vp_ddpmpp in fp32 /
# bf16 / compiled under DDP with NCCL, sampling images/s at NFE 10 and 50, peak memory, the training path's per-step
# cost on small models (gpu_check.py), and our
# samplers against diffusers' loops on a CIFAR-10-sized UNet2DModel at batch 256, fp32 and bf16
# (diffusers_speed.py). Each part runs even if another fails; the exit status says whether all passed.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default benchmarks/results/gpu; PYTHON=python3 by default)
set -u
case "${1:-}" in -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; -*) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
OUT_DIR=${1:-benchmarks/results/gpu}
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check.sh: no CUDA GPU visible to $PYTHON (torch.cuda.is_available() is False): run it on a GPU node" >&2
    exit 1
fi
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT_DIR/nvidia_smi.csv" 2>&1 || true
status=0
timeout 400 "$PYTHON" benchmarks/gpu_check.py --out "$OUT_DIR/gpu_check.json" || status=1
timeout 150 "$PYTHON" benchmarks/diffusers_speed.py --device cuda --model cifar10 --batch 256 --dtypes fp32 bf16 \
    --nfe 10 --repeats 3 --out "$OUT_DIR/diffusers_speed_cuda" || status=1
exit $status
