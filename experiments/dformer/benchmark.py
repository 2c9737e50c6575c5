"""Memory and time of D-Former attention (local window + dilated group) vs full global attention.

For a volume [D, H, W] the stage-0 token grid is (D/2, H/4, W/4) (patch (2, 4, 4)); one D-Former block pair
attends inside local windows of (2, 8, 8) tokens and then inside dilated groups of (2, 8, 8) members. The
baseline attends globally twice. Both run forward + backward through `effjax.kernels.attention.attention`
with 3 heads of width 32 (D-Former stage 0). Memory is XLA's compiled temporary-buffer size (exact, from
`compile().memory_analysis()`, no execution needed); time is the median process CPU time (all threads) of
`--repeats` executions, which a shared machine disturbs less than wall-clock time, and is only measured up
to `--max_time_tokens` tokens (global attention is quadratic). On an accelerator, read it as device time
only if the host waits (block_until_ready), which it does.

  python experiments/dformer/benchmark.py --out experiments/dformer/results.md
"""
import argparse
import platform
import time

import jax
import jax.numpy as jnp

from effjax.kernels import attention_patterns as ap
from effjax.kernels.attention import attention

VOLUMES = [(16, 32, 32), (16, 64, 64), (32, 64, 64), (32, 128, 128), (64, 128, 128)]
GROUP = (2, 8, 8)
HEADS, HEAD_DIM = 3, 32


def pattern(name, grid):
  """The attention pattern of one block over the token grid (GROUP is the window, or the members per axis)."""
  if name == "local":
    return ap.grid_local(grid, GROUP)
  if name == "dilated":
    return ap.grid_dilated(grid, [s // g for s, g in zip(grid, GROUP)])
  return ap.full()


def pair(name_a, name_b):
  def loss(q, k, v):
    grid = q.shape[1:-2]
    flat = lambda t: t.reshape(t.shape[0], -1, *t.shape[-2:])
    q, k, v = flat(q), flat(k), flat(v)
    y = attention(q, k, v, pattern=pattern(name_a, grid))
    y = attention(y, k, v, pattern=pattern(name_b, grid))
    return jnp.sum(y * y)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def measure(fn, grid, repeats, execute):
  shape = (1, *grid, HEADS, HEAD_DIM)
  spec = jax.ShapeDtypeStruct(shape, jnp.float32)
  compiled = fn.lower(spec, spec, spec).compile()
  mem = compiled.memory_analysis()
  temp_mib = mem.temp_size_in_bytes / 2 ** 20 if mem is not None else float("nan")
  if not execute:
    return temp_mib, None
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), shape) for i in range(3))
  jax.block_until_ready(compiled(q, k, v))
  times = []
  for _ in range(repeats):
    start = time.process_time()
    jax.block_until_ready(compiled(q, k, v))
    times.append(time.process_time() - start)
  return temp_mib, sorted(times)[len(times) // 2] * 1e3


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--max_time_tokens", type=int, default=4096)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  dilated, full = pair("local", "dilated"), pair("global", "global")
  lines = [f"Device: {jax.devices()[0].device_kind} ({platform.machine()}), jax {jax.__version__}. "
           f"Forward + backward of one block pair's attention, {HEADS} heads × {HEAD_DIM}, float32.", "",
           "| volume D×H×W | tokens | local+dilated temp MiB | global temp MiB | memory ratio "
           "| local+dilated CPU ms | global CPU ms | speed-up |",
           "|---|---|---|---|---|---|---|---|"]
  for volume in VOLUMES:
    grid = (volume[0] // 2, volume[1] // 4, volume[2] // 4)
    tokens = grid[0] * grid[1] * grid[2]
    execute = tokens <= args.max_time_tokens
    m_d, t_d = measure(dilated, grid, args.repeats, execute)
    m_g, t_g = measure(full, grid, args.repeats, execute)
    timing = f"{t_d:.1f} | {t_g:.1f} | {t_g / t_d:.1f}×" if execute else "– | – | –"
    lines.append(f"| {'×'.join(map(str, volume))} | {tokens} | {m_d:.1f} | {m_g:.1f} | {m_g / m_d:.0f}× | {timing} |")
    print(lines[-1], flush=True)
  text = "\n".join(lines) + "\n"
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  print(text)


if __name__ == "__main__":
  main()
