"""Where an effjax training step of the convolutional zoo spends its time on the CPU: XLA ops grouped by the model
code they come from (as experiments/crate/profile_step.py does for CRATE).

  python experiments/efficiency/profile_step.py --model ecaresnet [--batch 8] [--top 25] [--infer] [--lever trainer]

Builds benchmark_timm.py's effjax step of `--model` (its configs, AdamW, float32), dumps its optimised HLO, traces two
steps with the JAX profiler and sums each XLA op's trace time under the `op_name` metadata of the code that produced
it (block numbers folded: "stage2_block3" -> "stageN_blockN"). The sums can exceed the wall time: XLA:CPU runs
independent ops concurrently.
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

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="ecaresnet")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--infer", action="store_true", help="profile the inference forward instead")
  p.add_argument("--lever", default="current", help="the train step's variant: a name of step_levers.LEVERS")
  a = p.parse_args()
  work = tempfile.mkdtemp(prefix="effjax_profile_")
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={work}/hlo --xla_dump_hlo_as_text"
  sys.path.insert(0, HERE)
  import benchmark_timm
  import step_levers
  if a.lever not in step_levers.LEVERS:
    p.error(f"unknown lever {a.lever!r}; expected one of {list(step_levers.LEVERS)}")
  if a.model not in benchmark_timm.MODELS:
    p.error(f"unknown model {a.model!r}; expected one of {list(benchmark_timm.MODELS)}")
  import jax
  if a.infer:
    step = benchmark_timm.effjax_steps(a.model, a.batch)[1]
  else:
    step = step_levers._build(benchmark_timm, a.model, a.batch, a.lever)
  step()
  with jax.profiler.trace(f"{work}/trace"):
    for _ in range(2):
      step()
  source = {}
  for path in glob.glob(f"{work}/hlo/*after_optimizations.txt"):
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?op_name=\"([^\"]+)\"", open(path).read(), re.M):
      source[m.group(1)] = re.sub(r"\d+", "N", m.group(2).split("/", 1)[-1])
  events = json.load(gzip.open(glob.glob(f"{work}/trace/**/*.trace.json.gz", recursive=True)[0]))
  events = events["traceEvents"] if isinstance(events, dict) else events
  per_source = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in source:
      per_source[(re.sub(r"\.\d+$", "", e["name"]), source[e["name"]])] += e["dur"] / 2e3  # µs over 2 steps -> ms
  print(f"{a.model} {'infer' if a.infer else 'train'} batch {a.batch}: traced op time "
        f"{sum(per_source.values()):.0f} ms/step; top {a.top}:")
  for (kind, src), ms in per_source.most_common(a.top):
    print(f"{ms:8.1f} ms  {kind:28s} {src}")


if __name__ == "__main__":
  main()
