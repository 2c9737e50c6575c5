#!/usr/bin/env bash
# Kernel check for one H100/H200 (Python 3.12, jax 0.11.2 preinstalled, no network), from the repo root:
#   PYTHONPATH=. bash experiments/kernels/device_check.sh [--cpu]      results in $OUT (default /tmp/effjax_dc)
# 1. experiments/kernels/device_attention.py: effjax vs cuDNN vs jax's Pallas attention at L=4096 bf16
#    (full, causal, window 1/8 density); 2. experiments/kernels/check.py with a time budget.
# Every row is appended to $OUT as it is measured; hard timeouts end the whole run within 6 minutes.
# --cpu: the same Python on CPU at tiny shapes (the dry run of this script; its timings mean nothing).
set -u
OUT=${OUT:-/tmp/effjax_dc}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
TINY=
if [ "${1:-}" = --cpu ]; then
  export JAX_PLATFORMS=cpu TPU_WORKER_HOSTNAMES=localhost
  TINY=--tiny
fi
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c 'import sys, jax, jaxlib; print(sys.version, jax.__version__, jaxlib.__version__, jax.devices())'
} > "$OUT/env.txt" 2>&1
timeout 150 $PY experiments/kernels/device_attention.py --out "$OUT/attention" $TINY 2>&1 | tee "$OUT/attention.log"
echo "attention exit ${PIPESTATUS[0]}" | tee -a "$OUT/attention.log"
timeout 210 $PY experiments/kernels/check.py --out "$OUT/check" --budget_s "${BUDGET:-150}" 2>&1 | tee "$OUT/check.log"
echo "check exit ${PIPESTATUS[0]}" | tee -a "$OUT/check.log"
