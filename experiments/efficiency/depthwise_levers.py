"""Levers of a large-kernel depthwise convolution on XLA:CPU: forward and forward + both gradients, per variant.

  python experiments/efficiency/depthwise_levers.py [--shape 2,56,56,96] [--kernels 7,23] [--variants all]
      [--steps 5] [--json out.json]

Each variant computes y = depthwise 'same' convolution of x [B, H, W, C] with w [k, k, C] (dilation d); the
gradient run is jax.grad of ½·Σy² for x and w. Printed per variant: the median wall and process CPU time of
`--steps` calls after one warm-up (CPU time counts every thread of this process: it moves less with the load of
a shared machine than wall time), and the largest difference from the reference. The results table is in
DEPTHWISE.md beside this file.
"""
import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from effjax import runtime
from effjax.kernels import depthwise_conv_cpu as cpu
from effjax.kernels.depthwise_conv import depthwise_conv_reference


def lax_nchw(x, w, d):
  """lax's grouped convolution in NCHW / OIHW layout (transposes included)."""
  p = d * (w.shape[0] - 1) // 2
  y = lax.conv_general_dilated(x.transpose(0, 3, 1, 2), w.transpose(2, 0, 1)[:, None], (1, 1), [(p, p)] * 2,
                               rhs_dilation=(d, d), dimension_numbers=("NCHW", "OIHW", "NCHW"),
                               feature_group_count=x.shape[-1])
  return y.transpose(0, 2, 3, 1)


def lax_blocked(x, w, d, block=16):
  """lax's grouped convolution on channel blocks of `block` channels, concatenated."""
  return jnp.concatenate([depthwise_conv_reference(x[..., i:i + block], w[..., i:i + block], dilation=d)
                          for i in range(0, x.shape[-1], block)], -1)


def unfold(x, w, d):
  """im2col: the k² shifted copies [B, H, W, k², C] contracted with w [k², C]."""
  k = w.shape[0]
  xp = jnp.pad(x, ((0, 0), (d * (k - 1) // 2,) * 2, (d * (k - 1) // 2,) * 2, (0, 0)))
  cols = jnp.stack([xp[:, d * i:d * i + x.shape[1], d * j:d * j + x.shape[2]] for i in range(k) for j in range(k)], 3)
  return jnp.einsum("bhwtc,tc->bhwc", cols, w.reshape(k * k, -1))


def _forced(max_taps):
  def f(x, w, d):
    old, cpu.SHIFT_MAX_TAPS = cpu.SHIFT_MAX_TAPS, max_taps  # read while tracing
    try:
      return cpu.depthwise_conv_cpu(x, w, (d, d))
    finally:
      cpu.SHIFT_MAX_TAPS = old
  return f


VARIANTS = {
    "lax_nhwc": (lambda x, w, d: depthwise_conv_reference(x, w, dilation=d), "lax grouped conv, NHWC (the reference)"),
    "lax_nhwc_no_onednn": (lambda x, w, d: depthwise_conv_reference(x, w, dilation=d),
                           "the same without the trainer's oneDNN compile options"),
    "lax_nchw": (lax_nchw, "lax grouped conv, NCHW (transposes included)"),
    "lax_blocked16": (lax_blocked, "lax grouped conv on blocks of 16 channels"),
    "unfold": (unfold, "im2col [B,H,W,k²,C] · w (autodiff)"),
    "shift_autodiff": (lambda x, w, d: cpu._shift_conv(x, w, (d, d)), "shifted multiply-adds, autodiff gradients"),
    "shift_vjp": (_forced(10 ** 9), "depthwise_conv_cpu with shifted multiply-adds for every k (inference)"),
    "fft_vjp": (_forced(0), "depthwise_conv_cpu with the FFT for every k (inference)"),
    "auto": (lambda x, w, d: cpu.depthwise_conv_cpu(x, w, (d, d)), "depthwise_conv_cpu as shipped"),
}


def _time(fn, args, steps):
  jax.block_until_ready(fn(*args))
  wall, proc = [], []
  for _ in range(steps):
    t, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    wall.append(time.perf_counter() - t)
    proc.append(time.process_time() - c)
  return float(np.median(wall)), float(np.median(proc))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shape", default="2,56,56,96")
  p.add_argument("--kernels", default="7,23", help="k or k:d (dilation), comma-separated")
  p.add_argument("--variants", default="all")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--json", default=None)
  a = p.parse_args()
  names = list(VARIANTS) if a.variants == "all" else a.variants.split(",")
  bad = [n for n in names if n not in VARIANTS]
  if bad:
    p.error(f"unknown variants {bad}; expected from {list(VARIANTS)}")
  shape = tuple(int(s) for s in a.shape.split(","))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  rows = []
  for spec in a.kernels.split(","):
    k, d = (int(v) for v in (spec.split(":") + ["1"])[:2])
    w = jnp.asarray(0.05 * rng.normal(size=(k, k, shape[-1])), jnp.float32)
    ref = None
    for name in names:
      f = VARIANTS[name][0]
      opts = None if name.endswith("no_onednn") else runtime.compiler_options()
      fwd = jax.jit(lambda x, w, f=f: f(x, w, d), compiler_options=opts)
      grad = jax.jit(jax.grad(lambda x, w, f=f: 0.5 * jnp.sum(f(x, w, d) ** 2), (0, 1)), compiler_options=opts)
      y = fwd(x, w)
      ref = y if ref is None else ref
      row = dict(variant=name, shape=shape, k=k, dilation=d, err=float(jnp.max(jnp.abs(y - ref))),
                 load=os.getloadavg()[0])
      row["fwd_wall_ms"], row["fwd_cpu_ms"] = (1e3 * t for t in _time(fwd, (x, w), a.steps))
      row["grad_wall_ms"], row["grad_cpu_ms"] = (1e3 * t for t in _time(grad, (x, w), a.steps))
      rows.append(row)
      print(f"{'x'.join(map(str, shape))} k={k} d={d} {name:20s} fwd {row['fwd_wall_ms']:8.1f} ms wall "
            f"{row['fwd_cpu_ms']:8.1f} ms cpu | fwd+grads {row['grad_wall_ms']:8.1f} wall {row['grad_cpu_ms']:8.1f} "
            f"cpu | err {row['err']:.1e} | load {row['load']:.1f}", flush=True)
  if a.json:
    with open(a.json, "a") as fh:
      for r in rows:
        fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  main()
