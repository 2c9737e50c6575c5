"""Kernel benchmark: every effjax kernel op, Pallas vs the XLA reference, forward and forward+backward.

    python experiments/kernels/benchmark.py [--reps 20] [--only attention] [--json out.json]

On a TPU or GPU it times both implementations (and, for full and causal attention,
`jax.nn.dot_product_attention`, cuDNN on GPU) at realistic shapes and prints one row per (op, pass, impl):
median time, achieved FLOP/s and bytes/s (model counts: useful FLOPs of the visible attention pairs /
convolution taps, and one read of every input plus one write of every output), and the speed-up over XLA.
On CPU it times the XLA paths at reduced shapes. The script runs unchanged on any backend; check.py (values,
gradients, training steps, the validation record) times the kernels with these cases.
"""
import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from effjax.kernels import attention_patterns as ap, dcls, dispatch, hyperzzw
from effjax.kernels.attention import attention
from effjax.kernels.depthwise_conv import depthwise_conv
from effjax.kernels.subspace_attention import subspace_attention


@dataclasses.dataclass
class Case:
  op: str
  label: str
  make_inputs: Callable[[], tuple]        # () -> differentiable float inputs
  impls: dict                             # impl name -> fn(*inputs)
  flops: float                            # forward model FLOPs
  bytes: float                            # forward model bytes
  bwd_factor: float = 2.0                 # (fwd + bwd) / fwd FLOPs
  key: dict = dataclasses.field(default_factory=dict)  # the validation record's case (`dispatch.case`)


def normal(shape, dtype, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _pick(size, tiny, small, full):
  return {"tiny": tiny, "small": small, "full": full}[size]


def _describe(p):
  return {"local": f"local {p.left}+{p.right}", "dilated": f"dilated s={p.size}", "grouped": f"grouped {p.size}",
          "chunk_causal": f"chunk-causal {p.size}", "grid_local": f"windows {p.shape} of {p.grid}"}.get(p.kind, p.kind)


def attention_cases(size):
  b, h, d = _pick(size, (1, 1, 16), (1, 2, 32), (4, 8, 64))
  n = _pick(size, 1 / 32, 1 / 8, 1)
  specs = [(ap.full(), 2048), (ap.causal(), 4096), (ap.local(128, 127), 8192), (ap.dilated(4), 4096),
           (ap.grouped(256), 4096), (ap.chunk_causal(512), 4096)]
  side = int(64 * n ** 0.5)  # D-Former-like 2-D windows: 8x8 windows of a 64x64 token map at full size
  specs.append((ap.grid_local((side, side), (8, 8) if size == "full" else (4, 4)), side * side))
  dtype = jnp.bfloat16
  cases = []
  for pattern, length in specs:
    length = int(length * n) if pattern.kind != "grid_local" else length
    if size == "tiny":  # keep the pattern sparse at 64-256 tokens
      pattern = {"local": ap.local(16, 15), "grouped": ap.grouped(32), "chunk_causal": ap.chunk_causal(32)}.get(
          pattern.kind, pattern)
    visible = float(pattern.mask(length, length).sum())
    make = lambda length=length: tuple(normal((b, length, h, d), dtype, s) for s in range(3))
    impls = {name: (lambda q, k, v, pattern=pattern, name=name: attention(q, k, v, pattern=pattern, impl=name))
             for name in ("xla", "pallas")}
    if pattern.kind in ("full", "causal"):
      impls["dot_product_attention"] = lambda q, k, v, causal=pattern.kind == "causal": jax.nn.dot_product_attention(
          q, k, v, is_causal=causal, implementation="cudnn" if jax.default_backend() == "gpu" else None)
    cases.append(Case("attention", f"{_describe(pattern)} L={length}", make, impls,
                      flops=4.0 * b * h * visible * d, bytes=4.0 * b * length * h * d * 2, bwd_factor=3.5,
                      key=dispatch.case("attention", ap.pattern_class(pattern), dtype, d)))
  return cases


def subspace_cases(size):
  b, length, h, d = _pick(size, (1, 37, 1, 16), (4, 197, 2, 64), (64, 197, 12, 64))  # CRATE-B, 224², 16² patches
  impls = {name: (lambda w, name=name: subspace_attention(w, impl=name)) for name in ("xla", "pallas")}
  return [Case("subspace_attention", f"CRATE B={b} L={length} H={h}",
               lambda: (normal((b, length, h, d), jnp.bfloat16),), impls,
               flops=4.0 * b * h * length * length * d, bytes=2.0 * b * length * h * d * 2, bwd_factor=3.5,
               key=dispatch.case("subspace_attention", "full", jnp.bfloat16, d))]


def dcls_cases(size):
  o, kc, dks = _pick(size, (8, 5, (7, 7)), (64, 26, (17, 17)), (768, 26, (23, 23)))  # ConvNeXt-dcls stage
  make = lambda: (normal((o, 1, kc), jnp.float32), normal((2, o, 1, kc), jnp.float32, 1),
                  normal((2, o, 1, kc), jnp.float32, 2))
  impls = {name: (lambda w, P, s, name=name: dcls.construct_kernel(w, P, s, dks, "gauss", impl=name))
           for name in ("xla", "pallas")}
  return [Case("dcls", f"gauss O={o} KC={kc} dks={dks}", make, impls,
               flops=2.0 * o * kc * dks[0] * dks[1], bytes=4.0 * o * dks[0] * dks[1] + 12.0 * o * kc,
               key=dispatch.case("dcls", "gauss", jnp.float32))]


def conv_cases(size):
  specs = [("1d d=2", _pick(size, (1, 64, 8), (2, 512, 64), (8, 4096, 256)), (31,), 2),
           ("2d", _pick(size, (1, 12, 12, 8), (1, 16, 16, 64), (32, 56, 56, 128)),
            _pick(size, (5, 5), (31, 31), (31, 31)), 1),
           ("3d d=2", _pick(size, (1, 6, 6, 6, 8), (1, 8, 8, 8, 32), (2, 32, 32, 32, 64)),
            _pick(size, (3, 3, 3), (7, 7, 7), (7, 7, 7)), 2)]
  cases = []
  for label, x_shape, k_shape, dil in specs:
    make = lambda x_shape=x_shape, k_shape=k_shape: (normal(x_shape, jnp.bfloat16),
                                                     normal(k_shape + x_shape[-1:], jnp.bfloat16, 1))
    impls = {name: (lambda x, w, dil=dil, name=name: depthwise_conv(x, w, dilation=dil, impl=name))
             for name in ("xla", "pallas")}
    cases.append(Case("depthwise_conv", f"{label} k={k_shape[0]} x={x_shape}", make, impls,
                      flops=2.0 * np.prod(x_shape) * np.prod(k_shape), bytes=2.0 * 2 * np.prod(x_shape),
                      key=dispatch.case("depthwise_conv", f"{len(k_shape)}d", jnp.bfloat16)))
  return cases


def hyperzzw_cases(size):
  b, s, c = _pick(size, (1, 16, 8), (4, 32, 64), (64, 32, 64))  # CIFAR Terminator maps
  make = lambda: (normal((s, s, c), jnp.bfloat16), normal((b, s, s, c), jnp.bfloat16, 1),
                  normal((b, s, s, c), jnp.bfloat16, 2))
  impls = {name: (lambda w, z, v, name=name: hyperzzw.hyperzzw_global(w, z, v, impl=name)[0])
           for name in ("xla", "pallas")}
  return [Case("hyperzzw_global", f"B={b} {s}x{s} C={c}", make, impls, flops=2.0 * b * s ** 3 * c,
               bytes=2.0 * 4 * b * s * s * c, key=dispatch.case("hyperzzw_global", "2d", jnp.bfloat16))]


GROUPS = {"attention": attention_cases, "subspace": subspace_cases, "dcls": dcls_cases, "conv": conv_cases,
          "hyperzzw": hyperzzw_cases}


def _loss(fn):
  return lambda *a: sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree.leaves(fn(*a)))


def median_time(fn, args, reps):
  jax.block_until_ready(fn(*args))           # compile + warm up
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


IMPLS = ("xla", "pallas", "dot_product_attention")  # xla first: the others' speed-ups are relative to it


def benchmark(cases, impls, reps):
  """One row per (case, pass, impl in `impls` that the case has); `impls` starts with "xla". An impl that fails
  (e.g. a kernel that does not compile for these shapes) gets a row with its `error` and the others go on."""
  rows = []
  for case in cases:
    args = case.make_inputs()
    for pass_name in ("fwd", "fwd+bwd"):
      base = None
      for impl in (i for i in impls if i in case.impls):
        fn = case.impls[impl]
        if pass_name == "fwd+bwd":
          fn = jax.grad(_loss(fn), argnums=tuple(range(len(args))))
        try:
          seconds = median_time(jax.jit(fn), args, reps)
        except Exception as e:
          rows.append(dict(op=case.op, case=case.label, key=case.key, pass_=pass_name, impl=impl,
                           error=f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"))
          print(f"{case.op:20s} {case.label:36s} {pass_name:8s} {impl:7s} error: {rows[-1]['error']}", flush=True)
          continue
        factor = 1.0 if pass_name == "fwd" else case.bwd_factor
        base = seconds if impl == "xla" else base
        rows.append(dict(op=case.op, case=case.label, key=case.key, pass_=pass_name, impl=impl, ms=seconds * 1e3,
                         tflops=case.flops * factor / seconds / 1e12, gbs=case.bytes * factor / seconds / 1e9,
                         speedup=(base / seconds) if base else float("nan")))
        print(_format(rows[-1]), flush=True)
  return rows


def _format(r):
  return (f"{r['op']:20s} {r['case']:36s} {r['pass_']:8s} {r['impl']:7s} {r['ms']:10.3f} ms "
          f"{r['tflops']:8.3f} TFLOP/s {r['gbs']:9.1f} GB/s  x{r['speedup']:.2f}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument("--only", choices=sorted(GROUPS), action="append")
  parser.add_argument("--json", help="also write the rows to this file")
  args = parser.parse_args(argv)
  platform = jax.default_backend()
  on_accelerator = platform in ("tpu", "gpu")
  groups = args.only or list(GROUPS)
  cases = [c for g in groups for c in GROUPS[g]("full" if on_accelerator else "small")]
  print(f"# backend {platform}, devices {jax.devices()[0].device_kind}, jax {jax.__version__}")
  print(f"{'op':20s} {'case':36s} {'pass':8s} {'impl':7s} {'time':>13s} {'achieved':>16s} {'bandwidth':>14s}  "
        "speed-up vs xla")
  result = dict(backend=platform, device=jax.devices()[0].device_kind)
  if on_accelerator:
    result["rows"] = benchmark(cases, IMPLS, args.reps)
  else:
    result["rows"] = benchmark(cases, ("xla",), max(3, args.reps // 5))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
