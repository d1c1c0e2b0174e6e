#!/usr/bin/env bash
# Issue 14's GPU measurements in one call on a lent GPU machine (see README, "Reproduce the paper on a GPU"):
#   bench-train      bench/train.py on paper-cifar10's ResNet-50 (width 64), batch 128: images/s of each
#                    method, fp32 vs bf16 + channels_last, each as a ratio to its floor (the fast side folds the
#                    BatchNorms for the attacks since fold_bn: not comparable with runs before it);
#   bench-train-512  the same at batch 512 for clean training, the DRA fine-tune and TRADES, with the fast paths
#                    off, on without folding the BatchNorms for the attacks, and on (--fast all);
#   estimate         the estimate for paper-cifar10 and paper-mnist on this GPU;
#   bench-attacks    bench/attacks.py (DRA vs bare passes, PGD vs torchattacks) on ResNet-50;
#   smoke            paper-cifar10's notebook sequence in the smoke setting on generated CIFAR-10 files, on CUDA;
#   ddp              tests/ddp_worker.py (a DRA fine-tune of a digits model) under torchrun, one process on the
#                    GPU: stopped in epoch 2, resumed, and the same fine-tune in a plain process (with one
#                    process distributed.init is a no-op: this checks resuming on CUDA, not NCCL or DDP)
#                    (needs a digits theta in .gpu/theta.pt, made as tests/test_distributed.py makes it);
#   passes           bench/passes.py: one ResNet-50's training, input-gradient (as is, weights frozen, BatchNorm
#                    folded) and forward passes, fp32 against bf16 + channels_last, batch 512 and 128, and the
#                    profiler's top kernels (not default);
#   compile          bench/compile.py: torch.compile against eager on ResNet-50, batch 128 and 512 (not default).
# Run from the repository root: bash scripts/gpu_check.sh OUTDIR [SECONDS] [STEP...]. The steps run in the
# order above whatever order they are named in; without names: bench-train, bench-train-512, estimate,
# bench-attacks and smoke (not ddp, passes or compile). Each step has its own time limit and the last one gets what
# is left of SECONDS (default 380), so the whole call ends in time. The default steps need about 800 s on an
# H100 (the smoke sequence alone about 440 s): give SECONDS accordingly, or name fewer steps. Everything goes to OUTDIR: gpu_check.log (the steps' output) and each
# step's JSON/CSV, the smoke run as smoke.tar.gz (checkpoints left out).
# The smoke step can start from a run directory made elsewhere (e.g. notebooks 00-02 on a CPU, carried in
# .gpu/gpu-smoke with its data, made under /tmp/gpu-smoke): set SMOKE_ONLY="03 04 05" to run those alone;
# SMOKE_KEEP=1 goes on in the run directory a call before left on the same (still warm) machine.
# torch comes from the machine; robustlib from the tree (PYTHONPATH); papermill, ipykernel, torchattacks
# and pyautoattack from wheels carried in .whl/ (their install is the first step when .whl/ is there).
set -u
OUT=${1:?usage: bash scripts/gpu_check.sh OUTDIR [SECONDS] [STEP...]}
BUDGET=${2:-380}
shift; shift 2>/dev/null
STEPS=${*:-bench-train bench-train-512 estimate bench-attacks smoke}
for s in $STEPS; do
    case $s in bench-train|bench-train-512|estimate|bench-attacks|smoke|ddp|passes|compile) ;;
        *) echo "gpu_check.sh: unknown step '$s' (SECONDS must come before the steps); steps: bench-train bench-train-512 estimate bench-attacks smoke ddp passes compile" >&2; exit 2 ;;
    esac
done
[[ $BUDGET =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: SECONDS must be a whole number, not '$BUDGET'" >&2; exit 2; }
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
want() { [[ " $STEPS " == *" $1 "* ]]; }

if [ -d .whl ]; then
    step wheels 60 bash -c "$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && cp -r .whl/extra/. /tmp/site/"
    export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
step machine 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc; $PY -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name(0), torch.backends.cudnn.version())'"
want bench-train && step bench-train 110 $PY bench/train.py --profile paper-cifar10 --device cuda --fast both --batches 2 --rounds 3 --out "$OUT/train.json"
want bench-train-512 && step bench-train-512 180 $PY bench/train.py --profile paper-cifar10 --device cuda --fast all --batch 512 --batches 2 --rounds 3 --methods clean ours+dra trades+pgd --out "$OUT/train512.json"
want estimate && step estimate-paper-cifar10 100 $PY -m robustlib estimate --profile paper-cifar10 --device cuda --verbose --csv "$OUT/estimate-paper-cifar10.csv"
want bench-attacks && step bench-attacks 40 $PY bench/attacks.py --model resnet50 --width 64 --batch 128 --steps 10 --device cuda --out "$OUT/attacks.json"
want estimate && step estimate-paper-mnist 50 $PY -m robustlib estimate --profile paper-mnist --device cuda --csv "$OUT/estimate-paper-mnist.csv"
if want ddp; then
    rm -rf /tmp/ddp && mkdir -p /tmp/ddp
    TR="$PY -m torch.distributed.run --standalone --nproc_per_node 1 tests/ddp_worker.py .gpu/theta.pt /tmp/ddp/run $OUT/ddp-torchrun.json --device cuda"
    step ddp-stopped 60 bash -c "$TR --stop-at-epoch 2 2>&1 | grep -m1 -o 'stopped in epoch 2' || echo 'NOT stopped as planned'"
    step ddp-resumed 60 bash -c "$TR && cat $OUT/ddp-torchrun.json"
    step ddp-plain 60 bash -c "$PY tests/ddp_worker.py .gpu/theta.pt /tmp/ddp/plain $OUT/ddp-plain.json --device cuda && cat $OUT/ddp-plain.json"
fi
want passes && step passes 150 $PY bench/passes.py --device cuda --batch 512 128 ${PASSES_ARGS:-} --out "$OUT/passes.json"
want compile && step compile 240 $PY bench/compile.py --device cuda --batch 128 512 --out "$OUT/compile.json"
if want smoke; then
    SMOKE=/tmp/gpu-smoke
    if [ -n "${SMOKE_KEEP:-}" ] && [ -d $SMOKE/run ]; then     # a later call on the same warm machine goes on
        echo "smoke: the run directory left by the last call, notebooks ${SMOKE_ONLY:-all}" | tee -a "$LOG"
        ONLY=(${SMOKE_ONLY:+--only $SMOKE_ONLY})
    elif [ -n "${SMOKE_ONLY:-}" ] && [ ! -d .gpu/gpu-smoke ]; then
        echo "smoke: SMOKE_ONLY is set but no .gpu/gpu-smoke was carried; running every notebook on fresh data" | tee -a "$LOG"
        rm -rf $SMOKE && mkdir -p $SMOKE
        step fake-data 20 $PY tests/fakedata.py cifar10 $SMOKE/data
        ONLY=()
    elif [ -n "${SMOKE_ONLY:-}" ]; then
        rm -rf $SMOKE && cp -r .gpu/gpu-smoke $SMOKE && echo "smoke: carried run directory, notebooks $SMOKE_ONLY" | tee -a "$LOG"
        ONLY=(--only $SMOKE_ONLY)
    else
        rm -rf $SMOKE && mkdir -p $SMOKE
        step fake-data 20 $PY tests/fakedata.py cifar10 $SMOKE/data
        ONLY=()
    fi
    step smoke-paper-cifar10 100000 $PY -m robustlib run --profile paper-cifar10 --smoke --device cuda --data-root $SMOKE/data --run-dir $SMOKE/run "${ONLY[@]}"
    tar --exclude='*.pt' -czf "$OUT/smoke.tar.gz" -C $SMOKE run 2>/dev/null
fi
echo "total $(( $(date +%s) - START )) s" | tee -a "$LOG"
