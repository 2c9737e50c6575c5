"""Where effjax's CRATE training step spends its time on the CPU: XLA ops grouped by the model code they come from.

  python experiments/crate/profile_step.py [--model T] [--ista fused|three] [--top 30]

Builds the benchmark's bare effjax step (benchmark.py: batch 64, 32×32×3, patch 4, AdamW), dumps its optimised
HLO, traces two steps with the JAX profiler and sums each XLA op's trace time under the `op_name` metadata of the
model code that produced it (layer numbers folded, so "layerN/ista/dot_general" is the sum over the layers).
Run it with the allocator the benchmark's effjax workers use (LD_PRELOAD=…/libtcmalloc_minimal.so.4). The sums
can exceed the wall time a little: XLA:CPU runs independent ops concurrently.
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="T")
  parser.add_argument("--ista", default="fused", choices=("fused", "three"))
  parser.add_argument("--top", type=int, default=30)
  args = parser.parse_args()
  work = tempfile.mkdtemp(prefix="effjax_profile_")
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={work}/hlo --xla_dump_hlo_as_text"
  sys.path.insert(0, HERE)
  import benchmark
  import jax

  benchmark.ThreeMatmulISTA = benchmark._three_matmul_ista()
  step, _ = benchmark.effjax_step(dict(side="effjax", ista=args.ista, step="bare", model=args.model, dtype="f32"))
  for _ in range(3):
    step()
  start = time.perf_counter()
  for _ in range(3):
    step()
  print(f"CRATE-{args.model} {args.ista} ISTA: {(time.perf_counter() - start) / 3:.3f} s/step")

  with jax.profiler.trace(f"{work}/trace", create_perfetto_trace=True):
    for _ in range(2):
      step()
  hlo = open(glob.glob(f"{work}/hlo/*jit_fn.cpu_after_optimizations.txt")[0]).read()
  source = {m.group(1): re.sub(r"layer\d+", "layerN", m.group(2))
            for m in re.finditer(r"^\s*%?([\w.\-]+) = [^\n]*?op_name=\"([^\"]+)\"", hlo, re.M)}
  events = json.load(gzip.open(glob.glob(f"{work}/trace/**/*.trace.json.gz", recursive=True)[0]))
  events = events["traceEvents"] if isinstance(events, dict) else events
  per_source = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in source:
      per_source[(re.sub(r"\.\d+$", "", e["name"]), source[e["name"]])] += e["dur"] / 2e3  # µs over 2 steps -> ms
  print(f"total traced op time {sum(per_source.values()):.0f} ms/step; top {args.top}:")
  for (kind, src), ms in per_source.most_common(args.top):
    print(f"{ms:8.1f} ms  {kind:26s} {src.replace('jit(fn)/', '')}")


if __name__ == "__main__":
  main()
