#!/usr/bin/env bash
# Issue 14's GPU measurements in one call on a lent GPU machine (see README, "Reproduce the paper on a GPU"):
#   1. bench/train.py on paper-cifar10's ResNet-50 (width 64): images/s of each method, fp32 vs bf16 +
#      channels_last, each as a ratio to its floor;
#   2. the estimate for paper-cifar10 and paper-mnist on this GPU;
#   3. bench/attacks.py (DRA vs bare passes, PGD vs torchattacks) on ResNet-50;
#   4. paper-cifar10's whole notebook sequence in the smoke setting on generated CIFAR-10 files, on CUDA.
# Run from the repository root: bash scripts/gpu_check.sh OUTDIR [SECONDS]. Each step has its own time limit
# and the last one gets what is left of SECONDS (default 380), so the whole call ends in time. Everything
# goes to OUTDIR: gpu_check.log (the steps' output) and each step's JSON/CSV, the smoke run as smoke.tar.gz.
# torch comes from the machine; robustlib from the tree (PYTHONPATH); papermill, ipykernel, torchattacks
# and pyautoattack from wheels carried in .whl/ (their install is the first step when .whl/ is there).
set -u
OUT=${1:?usage: bash scripts/gpu_check.sh OUTDIR [SECONDS]}
BUDGET=${2:-380}
START=$(date +%s)
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
PY=${PY:-python3}

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
step() {   # step NAME LIMIT COMMAND...: runs COMMAND for at most LIMIT seconds (less if the budget is shorter)
    local name=$1 limit=$2; shift 2
    local l; l=$(left); (( l < limit )) && limit=$l
    if (( limit < 10 )); then echo "=== $name: skipped, no time left" | tee -a "$LOG"; return; fi
    echo "=== $name (limit ${limit} s): $*" | tee -a "$LOG"
    local t0; t0=$(date +%s)
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "--- $name: exit ${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
}

if [ -d .whl ]; then
    step wheels 60 bash -c "$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && cp -r .whl/extra/. /tmp/site/"
    export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
step machine 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc; $PY -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name(0), torch.backends.cudnn.version())'"
step bench-train 110 $PY bench/train.py --profile paper-cifar10 --device cuda --fast both --batches 4 --rounds 3 --out "$OUT/train.json"
step estimate-paper-cifar10 100 $PY -m robustlib estimate --profile paper-cifar10 --device cuda --verbose --csv "$OUT/estimate-paper-cifar10.csv"
step bench-attacks 40 $PY bench/attacks.py --model resnet50 --width 64 --batch 128 --steps 10 --device cuda --out "$OUT/attacks.json"
step estimate-paper-mnist 50 $PY -m robustlib estimate --profile paper-mnist --device cuda --csv "$OUT/estimate-paper-mnist.csv"
SMOKE=/tmp/gpu-smoke
rm -rf $SMOKE && mkdir -p $SMOKE
step fake-data 20 $PY tests/fakedata.py cifar10 $SMOKE/data
step smoke-paper-cifar10 100000 $PY -m robustlib run --profile paper-cifar10 --smoke --device cuda --data-root $SMOKE/data --run-dir $SMOKE/run
tar --exclude='*.pt' -czf "$OUT/smoke.tar.gz" -C $SMOKE run 2>/dev/null
echo "total $(( $(date +%s) - START )) s" | tee -a "$LOG"
