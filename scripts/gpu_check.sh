#!/usr/bin/env bash
# The GPU check, one command on a machine with one CUDA GPU (sized for an H100/H200: under 8 minutes in all):
#   1. environment (GPU, torch, triton, the scan backends usable here);
#   2. the selective-scan bench at the decoder's stage shapes and MambaSeg's TSSM shape, triton vs torch (and cuda
#      when mamba-ssm's kernel is installed), fp32, then the triton scan with bf16 inputs;
#   3. the CUDA tests (tests/test_gpu.py: Triton kernels vs the torch backend, full-size MTMamba);
#   4. bench_model.py: full Swin-L MTMamba, NYUD 448x576, training, batch 8, exec reference/fast x amp fp32/bf16 x
#      scan triton/torch (8 rows). To fit the time, one warm-up and one timed iteration per row and round, two
#      rounds (the torch scan makes an iteration take seconds); the base row is reference+fp32 on the triton scan;
#   5. 300 bf16 training iterations of the full model (batch 1 per GPU, as configured) on a synthetic NYUD-format
#      dataset at 448x576, Triton scan, then one evaluation; the trainer stops with an error on a non-finite loss.
# Every step has a time budget (timeout; 470 s in all) and the next one runs whatever happened.
# Needs only requirements.txt (no mamba-ssm build). All output goes to one log:
#   bash scripts/gpu_check.sh [LOG]          (default runs/gpu_check_<date>.log; PYTHON=... picks the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"
LOG="${1:-runs/gpu_check_$(date +%Y%m%d_%H%M%S).log}"
WORK="$(mktemp -d)"
mkdir -p "$(dirname "$LOG")"
export TQDM_MININTERVAL=10   # progress bars: a line every 10 s in the log
: > "$LOG"
summary=()

step() {  # step NAME BUDGET_SECONDS COMMAND...
  local name=$1 budget=$2 start rc
  shift 2
  echo "=== ${name} (budget ${budget} s): $*" | tee -a "$LOG"
  start=$(date +%s)
  timeout --signal=INT --kill-after=10 "$budget" "$@" >> "$LOG" 2>&1
  rc=$?
  summary+=("${name}: exit ${rc}$([ "$rc" = 124 ] && echo ' (time budget exceeded)'), $(( $(date +%s) - start )) s")
  echo "=== ${name}: exit ${rc}, $(( $(date +%s) - start )) s" | tee -a "$LOG"
}

step environment 20 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \"$PY\" -c '
import torch, triton
from models.ops.selective_scan import available_backends
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__)
print(\"device\", torch.cuda.get_device_name(), \"scan backends\", available_backends())'"

BACKENDS=$("$PY" -c "from models.ops.selective_scan import available_backends as a
print(','.join(b for b in ('triton', 'torch', 'cuda') if b in a()))" 2>/dev/null || echo triton,torch)
step "scan bench fp32" 80 "$PY" scripts/bench_scan.py --device cuda --backends "$BACKENDS" --batch 8 --warmup 2 \
  --repeats 5
step "scan bench bf16 (triton)" 25 "$PY" scripts/bench_scan.py --device cuda --backends triton --dtype bf16 \
  --batch 8 --warmup 2 --repeats 5

step "CUDA tests" 100 "$PY" -m pytest -q -s -p no:cacheprovider tests/test_gpu.py

step "model bench" 140 "$PY" scripts/bench_model.py --config_exp configs/mtmamba_nyud.yml --mode train --batch 8 \
  --exec reference,fast --amp fp32,bf16 --scan_backend triton,torch --warmup 1 --iters 1 --repeats 2

step "synthetic data" 15 "$PY" scripts/make_synthetic_dataset.py --dataset nyud --out "$WORK/data" --n-train 16 \
  --n-val 2 --size 448x576
step "300 bf16 training iterations" 90 "$PY" main.py --run_mode train --config_exp configs/mtmamba_nyud.yml \
  --no_resume --opts "db_root=$WORK/data" "out_dir=$WORK/runs" model.pretrained=false model.scan_backend=triton \
  amp=bf16 max_iter=300 val_interval=1000 ckpt_interval=1000 log_interval=25 nworkers=4

echo "=== summary" | tee -a "$LOG"
printf '%s\n' "${summary[@]}" | tee -a "$LOG"
rm -rf "$WORK"
echo "log: $LOG"
