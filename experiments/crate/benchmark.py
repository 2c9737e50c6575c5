"""CPU training-step benchmark of CRATE: step time, examples/s, FLOPs per step and fraction of peak.

  python experiments/crate/benchmark.py [--variants T,B] [--steps 10] [--out experiments/crate/benchmark.md]

Setting (the issue's): 32×32×3 inputs, patch 4 (64 patches + cls), 10 classes, batch 64, float32, one
device. A step is forward, softmax cross-entropy, backward and the Lion update (the paper's optimiser),
jitted with donated state. FLOPs per step come from XLA's cost analysis of the compiled step; the peak is
the best rate of a jitted 2048×2048×2048 float32 matmul measured in the same process just before. The
"three-matmul ISTA" rows swap in the official formulation of the ISTA step (x + η(xD − (xDᵀ)D) − ηλ)
for comparison with effjax's fused form (one matmul with I + η(D − DᵀD), formed once per step).
"""
import argparse
import json
import os
import platform
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from effjax.models import crate  # noqa: E402


class ThreeMatmulISTA(nn.Module):
  """The official ISTA evaluation order, for the ablation: relu(x + η(x D − (x Dᵀ) D) − η λ)."""
  eta: float = 0.1
  lmbda: float = 0.1

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    dictionary = self.param("D", nn.initializers.kaiming_uniform(), (d, d), jnp.float32)
    return nn.relu(x + self.eta * (x @ dictionary - (x @ dictionary.T) @ dictionary) - self.eta * self.lmbda)


def peak_matmul_flops(n=2048, repeats=10):
  """Best measured FLOP/s of a jitted float32 [n, n] @ [n, n] matmul."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def make_step(model, tx):
  def loss_fn(params, images, labels):
    logits = model.apply({"params": params}, images, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def step(state, images, labels):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss
  return jax.jit(step, donate_argnums=0)


class Runner:
  """A compiled train step of one CRATE variant with its state; `run()` times one step (wall and CPU s)."""

  def __init__(self, variant, batch=64, image=32, patch=4, classes=10):
    model = crate.Model(num_classes=classes, patch_size=patch, variant=variant)
    self.images = jax.random.normal(jax.random.PRNGKey(0), (batch, image, image, 3), jnp.float32)
    self.labels = jax.random.randint(jax.random.PRNGKey(1), (batch,), 0, classes)
    params = model.init(jax.random.PRNGKey(2), self.images[:1])["params"]
    tx = optax.lion(2e-4, b1=0.9, b2=0.99, weight_decay=0.05)
    self.state = (params, tx.init(params))
    self.step = make_step(model, tx).lower(self.state, self.images, self.labels).compile()
    cost = self.step.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.info = dict(variant=variant, batch=batch, params=sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)),
                     flops_per_step=float(cost["flops"]))
    self.wall, self.cpu = [], []
    for _ in range(2):  # warm-up
      self.run(record=False)

  def run(self, record=True):
    wall, cpu = time.perf_counter(), time.process_time()
    self.state, loss = self.step(self.state, self.images, self.labels)
    loss.block_until_ready()
    if record:
      self.wall.append(time.perf_counter() - wall)
      self.cpu.append(time.process_time() - cpu)

  def result(self):
    wall = float(np.median(self.wall))
    return dict(self.info, step_s_median=wall, step_s_min=float(np.min(self.wall)),
                cpu_s_per_step=float(np.median(self.cpu)), examples_per_s=self.info["batch"] / wall,
                steps=len(self.wall))


def measure(runners, steps):
  """Times `steps` steps of every runner, interleaved round by round so that load from other processes on
  the shared CPU affects all of them alike."""
  for _ in range(steps):
    for r in runners:
      r.run()
  return [r.result() for r in runners]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default="T,B")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--out", default=os.path.join(REPO, "experiments", "crate", "benchmark.md"))
  args = parser.parse_args()
  load_before = os.getloadavg()
  peak_before = peak_matmul_flops()
  runners = [Runner(v) for v in args.variants.split(",")]
  labels = ["fused (effjax)"] * len(runners)
  original = crate.ISTA
  crate.ISTA = ThreeMatmulISTA  # Layer looks ISTA up at trace time
  try:
    runners.append(Runner("T"))
  finally:
    crate.ISTA = original
  labels.append("three-matmul (official order)")
  rows = [dict(r, ista=label) for r, label in zip(measure(runners, args.steps), labels)]
  peak = max(peak_before, peak_matmul_flops())
  for r in rows:
    r["achieved_flops_per_s"] = r["flops_per_step"] / r["step_s_median"]
    r["fraction_of_peak"] = r["achieved_flops_per_s"] / peak
  info = dict(cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(), jax=jax.__version__,
              peak_matmul_flops_per_s=peak, load_average_before=load_before, load_average_after=os.getloadavg())
  lines = [
      "| model | ISTA form | params | step time (median, s) | CPU s/step | examples/s | GFLOPs/step | "
      "achieved GFLOP/s | fraction of peak |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| CRATE-{r['variant']} | {r['ista']} | {r['params']:,} | {r['step_s_median']:.3f} | "
                 f"{r['cpu_s_per_step']:.2f} | {r['examples_per_s']:.1f} | {r['flops_per_step'] / 1e9:.1f} | "
                 f"{r['achieved_flops_per_s'] / 1e9:.1f} | {r['fraction_of_peak']:.2f} |")
  text = (f"Train step (forward + cross-entropy + backward + Lion update), 32×32×3 input, patch 4, 10 classes, "
          f"batch 64, float32, {jax.device_count()} CPU device, median of {args.steps} steps after 2 warm-up "
          f"steps, the models' steps interleaved. CPU s/step is the process CPU time per step (all cores).\n"
          f"Measured peak (jitted 2048³ f32 matmul, best of 10): **{peak / 1e9:.1f} GFLOP/s** on "
          f"{info['cpu_count']} cores ({info['cpu']}); load average {load_before[0]:.1f} before, "
          f"{info['load_average_after'][0]:.1f} after (the CPU is shared: other processes were running).\n\n"
          + "\n".join(lines) + "\n")
  print(text)
  with open(args.out, "w") as f:
    f.write(text)
  with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
    json.dump(dict(info, rows=rows), f, indent=1)


if __name__ == "__main__":
  main()
