"""effjax training-step variants against each other in ONE process, taking turns step by step, so that the load of a
shared machine falls on every variant alike: the levers table of TIMM.md ("Training-step levers").

  python experiments/efficiency/step_levers.py --model ecaresnet --levers before,current [--batch 8] [--rounds 5]

Every variant is benchmark_timm.py's effjax training step of `--model` (float32, AdamW, random 224 px inputs, the same
initial state) compiled with the XLA:CPU options and code variant of LEVERS. The first (warm-up) step's loss and
gradient norm of every variant are printed beside the first variant's (equal up to float32 summation order); then
`--rounds` rounds of one step per variant. Printed per variant: median wall ms, min-max, median CPU ms (all
threads), and the ratio to the first variant's median (> 1: faster).
"""
import argparse
import contextlib
import os
import statistics
import sys
import time
from unittest import mock

import jax

HERE = os.path.dirname(os.path.abspath(__file__))
_TRAINER = {"xla_cpu_use_onednn": True, "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
_YNN = "xla_cpu_experimental_ynn_fusion_type"
# name -> (XLA:CPU compile options of the train step, "current": effjax.runtime.compiler_options() as it is now;
#          a code variant of _patch applied while the step is traced, or None)
LEVERS = {
    "current": ("current", None),
    "none": (None, None),                                           # XLA:CPU's defaults (YNNPACK, no oneDNN)
    "trainer": (_TRAINER, None),                                    # effjax.runtime before TIMM.md's levers table
    "no_ynn": ({**_TRAINER, _YNN: ""}, None),                       # no YNNPACK fusions at all
    "ynn_reduce": ({**_TRAINER, _YNN: "LIBRARY_FUSION_TYPE_REDUCE"}, None),  # YNNPACK for reductions only
    "ynn_reduce_no_onednn": ({_YNN: "LIBRARY_FUSION_TYPE_REDUCE"}, None),  # … and XLA's own (Eigen) dots
    "ynn_eltwise_reduce": ({**_TRAINER, _YNN: "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"}, None),
    "current+old_1x1": ("current", "old_1x1"),
    "before": (_TRAINER, "old_1x1"),                                # effjax before TIMM.md's levers table
}


def _patch(name):
  """'old_1x1': the 1×1 kernel gradient as before TIMM.md's levers table (x always the transposed matmul operand,
  no optimization barrier)."""
  import jax.numpy as jnp

  from effjax.layers import conv
  assert name == "old_1x1", name
  conv1x1 = lambda x, w, strides: conv._lax_conv(x, w, strides, ((0, 0), (0, 0)))

  def bwd(strides, res, g):
    x, w = res
    dx = jax.vjp(lambda x: conv1x1(x, w, strides), x)[1](g)[0]
    xs = x[:, ::strides[0], ::strides[1]][:, :g.shape[1], :g.shape[2]]
    return dx, jnp.einsum("bhwc,bhwo->co", xs, g, preferred_element_type=jnp.float32).reshape(w.shape)
  f = jax.custom_vjp(conv1x1, nondiff_argnums=(2,))
  f.defvjp(lambda x, w, strides: (conv1x1(x, w, strides), (x, w)), bwd)
  return mock.patch.object(conv, "_conv1x1_cpu", f)


def _build(benchmark_timm, model, batch, lever):
  """benchmark_timm.effjax_steps's train_once with `lever`'s options and code variant."""
  options, patch = LEVERS[lever]
  with _patch(patch) if patch else contextlib.nullcontext():
    return benchmark_timm.effjax_steps(model, batch, "trainer" if options == "current" else options)[0]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="ecaresnet")
  p.add_argument("--levers", default="before,current", help=f"comma-separated, from {list(LEVERS)}; the first is "
                 "the reference")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--rounds", type=int, default=5)
  a = p.parse_args()
  names = a.levers.split(",")
  unknown = [n for n in names if n not in LEVERS]
  if unknown:
    p.error(f"unknown levers {unknown}; expected from {list(LEVERS)}")
  sys.path.insert(0, HERE)
  import benchmark_timm
  if a.model not in benchmark_timm.MODELS:
    p.error(f"unknown model {a.model!r}; expected one of {list(benchmark_timm.MODELS)}")
  steps = {n: _build(benchmark_timm, a.model, a.batch, n) for n in names}
  first = {n: step() for n, step in steps.items()}
  ref = first[names[0]]
  for n in names:
    print(f"{n:20s} first step: loss {float(first[n]['loss']):.6f} grad_norm {float(first[n]['grad_norm']):.6f} "
          f"(rel. diff. {abs(float(first[n]['grad_norm']) / float(ref['grad_norm']) - 1):.1e})")
  walls, cpus = {n: [] for n in names}, {n: [] for n in names}
  for _ in range(a.rounds):
    for n, step in steps.items():
      w, c = time.perf_counter(), time.process_time()
      step()
      walls[n].append(time.perf_counter() - w)
      cpus[n].append(time.process_time() - c)
  base = statistics.median(walls[names[0]])
  print(f"{a.model}, batch {a.batch}, {a.rounds} interleaved rounds, load {os.getloadavg()[0]:.1f}")
  for n in names:
    med = statistics.median(walls[n])
    print(f"{n:20s} {1e3 * med:8.0f} ms wall ({1e3 * min(walls[n]):.0f}-{1e3 * max(walls[n]):.0f}), "
          f"{1e3 * statistics.median(cpus[n]):8.0f} ms CPU, {base / med:.2f}× vs {names[0]}")


if __name__ == "__main__":
  main()
