#!/usr/bin/env bash
# Runs the README's main job (ViT on the embedded MNIST subset) in a fresh workdir and prints the test
# accuracy and the wall time of the training loop (first to last train step in metrics.jsonl).
set -euo pipefail
cd "$(dirname "$0")/../.."
workdir=$(mktemp -d)
start=$(date +%s)
.venv/bin/python -m effjax.main --config configs/vit.py:runlocal --workdir "$workdir" "$@" | tail -2
end=$(date +%s)
.venv/bin/python - "$workdir" "$((end - start))" <<'PY'
import sys
from effjax import metrics
rows = metrics.read_jsonl(sys.argv[1])
train = [r for r in rows if "train/loss" in r]
evals = [r for r in rows if "eval/accuracy" in r]
step_time = sum(r["train/step_time_s"] for r in train[1:]) / len(train[1:])
print(f"steps {train[-1]['step']}, mean step time {step_time * 1e3:.1f} ms, "
      f"training ≈ {step_time * train[-1]['step']:.0f} s, whole command {sys.argv[2]} s")
for r in evals:
  print(f"  step {r['step']}: test accuracy {100 * r['eval/accuracy']:.2f}%")
PY
