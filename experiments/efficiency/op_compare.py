"""The convolutional zoo's costly training ops, effjax (XLA:CPU) against torch (oneDNN / MKL), one op at a time.

  python experiments/efficiency/op_compare.py [--rounds 2] [--calls 7]

Each op at batch 8, float32, in the layout each side trains in (effjax NHWC, timm NCHW; Linear layers on
[tokens, channels] in both), split into forward, input gradient dx and weight gradient dW where the two sides can
compute them alone (torch: `aten.convolution_backward` with one output, as autograd calls it; effjax: jax.vjp of the
layer effjax trains with, jitted with the trainer's compile options, effjax.runtime). BN+ReLU is forward and
backward together (training mode). The sides take turns in child processes (`--rounds` each, effjax first), in the
same interpreter (effjax's environment has torch); each figure is the median of `--calls` calls after a warm-up, wall
ms; the printed ratio is torch ÷ effjax (> 1: effjax faster), fastest round of each side.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
B = 8
# name -> (kind, shape arguments): conv (H, C, O, k, stride), bnrelu (H, C), linear (tokens, C, O), dwconv (H, C, k)
OPS = {
    "conv3x3 56² 64->64": ("conv", (56, 64, 64, 3, 1)),
    "conv3x3 28² 128->128": ("conv", (28, 128, 128, 3, 1)),
    "conv1x1 56² 256->64": ("conv", (56, 256, 64, 1, 1)),
    "conv1x1 56² 64->256": ("conv", (56, 64, 256, 1, 1)),
    "bn+relu 56² 256": ("bnrelu", (56, 256)),
    "linear 56²·8 96->384 (ConvNeXt fc1)": ("linear", (56 * 56 * B, 96, 384)),
    "linear 56²·8 384->96 (ConvNeXt fc2)": ("linear", (56 * 56 * B, 384, 96)),
    "dwconv7x7 56² 96 (fwd+grads)": ("dwconv", (56, 96, 7)),
}


def _median_ms(fn, calls):
  fn()
  times = []
  for _ in range(calls):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times)


def effjax_ops(calls):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from effjax import runtime
  from effjax.kernels.depthwise_conv_cpu import depthwise_conv_cpu
  from effjax.layers import conv
  options = runtime.compiler_options()
  key = iter(jax.random.split(jax.random.PRNGKey(0), 64))
  normal = lambda *shape: jax.random.normal(next(key), shape, jnp.float32)
  out = {}
  for name, (kind, s) in OPS.items():
    if kind == "conv":
      h, c, o, k, st = s
      x, w, p = normal(B, h, h, c), 0.05 * normal(k, k, c, o), ((k // 2, k // 2),) * 2
      f = lambda x, w, st=st, p=p: conv.conv2d(x, w, (st, st), p)
    elif kind == "linear":
      n, c, o = s
      x, w = normal(n, c), 0.05 * normal(c, o)
      f = lambda x, w: x @ w
    elif kind == "bnrelu":
      h, c = s
      x, w = normal(B, h, h, c), {"scale": jnp.ones(c), "bias": jnp.zeros(c)}
      bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
      stats = {"mean": jnp.zeros(c), "var": jnp.ones(c)}
      f = lambda x, w, bn=bn, stats=stats: nn.relu(bn.apply({"params": w, "batch_stats": stats}, x,
                                                            mutable=["batch_stats"])[0])
    else:
      h, c, k = s
      x, w = normal(B, h, h, c), 0.05 * normal(k, k, c)
      f = lambda x, w: depthwise_conv_cpu(x, w, (1, 1))
    g = normal(*jax.eval_shape(f, x, w).shape)
    parts = {"fwd+bwd": lambda x, w, f=f, g=g: jax.vjp(f, x, w)[1](g)} if kind in ("bnrelu", "dwconv") else {
        "fwd": f, "dx": lambda x, w, f=f, g=g: jax.vjp(lambda x: f(x, w), x)[1](g),
        "dW": lambda x, w, f=f, g=g: jax.vjp(lambda w: f(x, w), w)[1](g)}
    for part, fn in parts.items():
      compiled = jax.jit(fn, compiler_options=options).lower(x, w).compile()
      out[f"{name} {part}"] = _median_ms(lambda c=compiled: jax.block_until_ready(c(x, w)), calls)
  return out


def torch_ops(calls):
  import torch
  import torch.nn.functional as F
  torch.manual_seed(0)
  conv_bwd = torch.ops.aten.convolution_backward
  out = {}
  for name, (kind, s) in OPS.items():
    if kind == "conv":
      h, c, o, k, st = s
      x, w = torch.randn(B, c, h, h), 0.05 * torch.randn(o, c, k, k)
      g = torch.randn_like(F.conv2d(x, w, stride=st, padding=k // 2))
      args = ([0], (st, st), (k // 2, k // 2), (1, 1), False, (0, 0), 1)
      parts = {"fwd": lambda x=x, w=w, st=st, k=k: F.conv2d(x, w, stride=st, padding=k // 2),
               "dx": lambda g=g, x=x, w=w, a=args: conv_bwd(g, x, w, *a, (True, False, False)),
               "dW": lambda g=g, x=x, w=w, a=args: conv_bwd(g, x, w, *a, (False, True, False))}
    elif kind == "linear":
      n, c, o = s
      x, w = torch.randn(n, c), 0.05 * torch.randn(o, c)
      g = torch.randn(n, o)
      parts = {"fwd": lambda x=x, w=w: F.linear(x, w), "dx": lambda g=g, w=w: g @ w, "dW": lambda g=g, x=x: g.t() @ x}
    elif kind == "bnrelu":
      h, c = s
      x = torch.randn(B, c, h, h, requires_grad=True)
      bn = torch.nn.BatchNorm2d(c).train()
      g = torch.randn(B, c, h, h)
      parts = {"fwd+bwd": lambda x=x, bn=bn, g=g: torch.relu(bn(x)).backward(g)}
    else:
      h, c, k = s
      x = torch.randn(B, c, h, h, requires_grad=True)
      w = (0.05 * torch.randn(c, 1, k, k)).requires_grad_()
      g = torch.randn(B, c, h, h)
      parts = {"fwd+bwd": lambda x=x, w=w, g=g, k=k, c=c: F.conv2d(x, w, padding=k // 2, groups=c).backward(g)}
    for part, fn in parts.items():
      out[f"{name} {part}"] = _median_ms(fn, calls)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--calls", type=int, default=7)
  p.add_argument("--child", choices=("effjax", "torch"), help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.child:
    print("RESULT " + json.dumps((effjax_ops if a.child == "effjax" else torch_ops)(a.calls)), flush=True)
    return
  env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_WORKER_HOSTNAMES="localhost",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  best = {}
  for _ in range(a.rounds):
    for side in ("effjax", "torch"):
      proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", side, "--calls", str(a.calls)],
                            capture_output=True, text=True, env=env)
      lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
      if proc.returncode or not lines:
        sys.exit(f"op_compare: error: the {side} child failed: {proc.stderr.strip()[-1500:]}")
      for op, ms in json.loads(lines[-1][len("RESULT "):]).items():
        best[side, op] = min(best.get((side, op), float("inf")), ms)
  print(f"batch {B}, float32, median of {a.calls} calls, fastest of {a.rounds} rounds, load {os.getloadavg()[0]:.1f}")
  print("| op | part | effjax ms | torch ms | torch ÷ effjax |\n|---|---|---:|---:|---:|")
  for side, op in best:
    if side == "effjax":
      name, part = op.rsplit(" ", 1)
      print(f"| {name} | {part} | {best[side, op]:.1f} | {best['torch', op]:.1f} | "
            f"{best['torch', op] / best[side, op]:.2f}× |")


if __name__ == "__main__":
  main()
