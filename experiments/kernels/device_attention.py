"""Attention on one GPU: effjax's kernel and "auto" against cuDNN and jax's own Pallas attention kernels.

    PYTHONPATH=. python experiments/kernels/device_attention.py --out DIR [--tiny] [--reps 20]

At L = 4,096, bf16, [B, L, H, D] = [2, 4096, 8, 128], forward and forward+backward, for three patterns:
full, causal, and a causal sliding window of 1/8 density (local(L/8 - 1, 0): 512 keys per query, the window
cuDNN supports). Implementations:

  effjax_pallas   effjax.kernels.attention(impl="pallas")     the block-sparse Triton kernel
  effjax_auto     effjax.kernels.attention(impl="auto")       what models run (the validation record decides)
  effjax_xla      effjax.kernels.attention(impl="xla")        cuDNN for full/causal, the banded XLA path for windows
  cudnn           jax.nn.dot_product_attention(implementation="cudnn"), with local_window_size for the window
  cudnn_dense     the same, full attention: the dense baseline a sparse pattern has to beat
  jax_triton      jax.experimental.pallas.ops.gpu.attention.mha (Pallas Triton; full and causal only)
  jax_mosaic      jax.experimental.pallas.ops.gpu.attention_mgpu.attention (Mosaic GPU, Hopper; full/causal)

Every row (or the error of an implementation that cannot run) is appended to DIR/attention.jsonl as soon as it
is measured, so that a run cut short keeps what it measured; DIR/attention.md gets the table and the ratios
the issue's goals name (window vs cuDNN dense, dense effjax vs cuDNN). --tiny runs the same code on CPU at
L = 256 (interpret mode; timings mean nothing): the test of this script.
"""
import argparse
import json
import pathlib
import sys
import time

import benchmark
import jax
import jax.numpy as jnp

from effjax.kernels import attention_patterns as ap
from effjax.kernels.attention import attention


def _jax_triton(q, k, v, causal):
  from jax.experimental.pallas.ops.gpu import attention as triton_attention
  return triton_attention.mha(q, k, v, None, sm_scale=q.shape[-1] ** -0.5, causal=causal,
                              interpret=jax.default_backend() != "gpu")


def _jax_mosaic(q, k, v, causal):
  from jax.experimental.pallas.ops.gpu import attention_mgpu
  config = attention_mgpu.TuningConfig(block_q=64, block_kv=128, max_concurrent_steps=2, causal=causal,
                                       block_q_dkv=64, block_kv_dkv=64, block_q_dq=64, block_kv_dq=64)
  return attention_mgpu.attention(q * q.shape[-1] ** -0.5, k, v, config)


def _cudnn(q, k, v, pattern):
  window = None if pattern.kind != "local" else (pattern.left, pattern.right)   # cuDNN: causal windows only
  return jax.nn.dot_product_attention(q, k, v, is_causal=pattern.kind != "full", local_window_size=window,
                                      implementation="cudnn")


def implementations(pattern):
  """name -> fn(q, k, v) for this pattern."""
  impls = {f"effjax_{i}": (lambda q, k, v, i=i: attention(q, k, v, pattern=pattern, impl=i))
           for i in ("pallas", "auto", "xla")}
  impls["cudnn"] = lambda q, k, v: _cudnn(q, k, v, pattern)
  if pattern.kind == "local":
    impls["cudnn_dense"] = lambda q, k, v: _cudnn(q, k, v, ap.full())
  else:
    impls["jax_triton"] = lambda q, k, v: _jax_triton(q, k, v, pattern.kind == "causal")
    impls["jax_mosaic"] = lambda q, k, v: _jax_mosaic(q, k, v, pattern.kind == "causal")
  return impls


def measure(name, pattern_name, fn, args, pass_name, reps):
  if pass_name == "fwd+bwd":
    fn = jax.grad(lambda q, k, v, f=fn: jnp.sum(f(q, k, v).astype(jnp.float32) ** 2), argnums=(0, 1, 2))
  row = dict(pattern=pattern_name, impl=name, pass_=pass_name)
  try:
    row["ms"] = benchmark.median_time(jax.jit(fn), args, reps) * 1e3
  except Exception as e:  # an implementation this machine or JAX cannot run is a row, not a crash
    row["error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
  return row


def summary(rows):
  """The ratios of the issue's goals, from rows measured in this run."""
  ms = {(r["pattern"], r["impl"], r["pass_"]): r.get("ms") for r in rows}
  lines = []
  for p in ("fwd", "fwd+bwd"):
    dense = ms.get(("window 1/8", "cudnn_dense", p))
    for impl in ("effjax_pallas", "effjax_auto", "effjax_xla", "cudnn"):
      mine = ms.get(("window 1/8", impl, p))
      if dense and mine:
        lines.append(f"window 1/8 {p}: {impl} is {dense / mine:.2f}x cuDNN dense (goal >= 4)")
    for pattern in ("full", "causal"):
      cudnn = ms.get((pattern, "cudnn", p))
      for impl in ("effjax_pallas", "effjax_auto", "jax_triton", "jax_mosaic"):
        mine = ms.get((pattern, impl, p))
        if cudnn and mine:
          lines.append(f"{pattern} {p}: {impl} runs at {cudnn / mine:.2f}x cuDNN's speed")
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--tiny", action="store_true", help="CPU smoke run at L=256")
  parser.add_argument("--reps", type=int, default=20)
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  b, length, h, d = (1, 256, 2, 64) if args.tiny else (2, 4096, 8, 128)
  q, k, v = (benchmark.normal((b, length, h, d), jnp.bfloat16, s) for s in range(3))
  patterns = {"full": ap.full(), "causal": ap.causal(), "window 1/8": ap.local(length // 8 - 1, 0)}
  rows = []
  start = time.time()
  print(f"# {jax.devices()[0].device_kind}, jax {jax.__version__}, [B, L, H, D] = {[b, length, h, d]} bf16", flush=True)
  for pattern_name, pattern in patterns.items():
    for name, fn in implementations(pattern).items():
      for pass_name in ("fwd", "fwd+bwd"):
        row = measure(name, pattern_name, fn, (q, k, v), pass_name, 1 if args.tiny else args.reps)
        rows.append(row)
        with open(out / "attention.jsonl", "a") as f:
          f.write(json.dumps(row) + "\n")
        print(f"{pattern_name:11s} {name:14s} {pass_name:8s} "
              f"{row['error'] if 'error' in row else format(row['ms'], '9.3f') + ' ms'}", flush=True)
  lines = summary(rows)
  table = ["| pattern | impl | pass | ms |", "|---|---|---|---|"]
  table += [f"| {r['pattern']} | {r['impl']} | {r['pass_']} | {r.get('ms', r.get('error'))} |" for r in rows]
  (out / "attention.md").write_text(
      f"# Attention on {jax.devices()[0].device_kind}, jax {jax.__version__}, [B, L, H, D] = {[b, length, h, d]} "
      f"bf16, {time.time() - start:.0f} s\n\n" + "\n".join(table + [""] + [f"- {x}" for x in lines]) + "\n")
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
