"""Side-by-side CPU training-step benchmark: effjax's CRATE against a PyTorch CRATE, in one run.

  pip install -e '.[bench]'
  python experiments/crate/benchmark.py [--models T,B] [--dtypes f32,bf16] [--rounds 5] [--steps 2]
                                        [--lever 'label:ENV=VALUE ...'] [--out experiments/crate/benchmark]

Setting: 32×32×3 inputs, patch 4 (64 patches + class token), 10 classes, batch 64, one CPU process per
variant. A step is forward, label-smoothed (0.1) cross-entropy, backward and AdamW (lr 1e-3, weight decay
0.05), on fixed random data. Variants, each in its own worker process (`--worker`), for every model and
dtype:
  torch  three / fused   our PyTorch CRATE (torch_crate.py, checked against the official outputs by
                         tests/experiments/test_torch_crate.py), eager; bf16 = CPU autocast
  effjax three / fused   effjax.models.crate.Model in a bare jitted step (fused = effjax's own ISTA form;
                         three = the official three-matmul order swapped in); bf16 = params and inputs
                         cast as the trainer's compute_dtype does
  effjax trainer         the trainer's own compiled step (effjax.train, grad/param/update norms and metrics,
                         EMA off), same model / loss / optimiser
  lever <label>          effjax fused with extra environment variables (--lever, for the levers table)
Every worker starts from the environment this script was started with, less LD_PRELOAD, GLIBC_TUNABLES and
XLA_FLAGS: each side runs as a user would run it, with the allocator and flags it sets up by itself
(`python -m effjax.main` re-runs itself with tcmalloc when it is installed: effjax/runtime.py; the
effjax workers do the same); a lever adds its variables on top.
The workers of one (model, dtype) group are started and compiled one after another, then take turns:
round r runs `--steps` steps of each worker in the order rotated by r, and records the load average
around the round. Reported: median, min and max of all timed steps per variant (after 2 warm-up steps),
and per round the ratio PyTorch time / effjax time (> 1 = effjax faster).
Writes <out>.json (every timing) and <out>.md (the tables).
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BATCH, IMAGE, PATCH, CLASSES, SMOOTHING, LR, WD, WARMUP = 64, 32, 4, 10, 0.1, 1e-3, 0.05, 2
CLEARED_ENV = ("LD_PRELOAD", "GLIBC_TUNABLES", "XLA_FLAGS")


# ---------------------------------------------------------------- workers (one variant per process)

def torch_step(spec):
  """(step function, info) of our PyTorch CRATE."""
  import torch
  from torch.nn import functional as F
  sys.path.insert(0, HERE)
  import torch_crate
  torch.manual_seed(0)
  model = torch_crate.variant(spec["model"], image_size=IMAGE, patch_size=PATCH, num_classes=CLASSES,
                              ista=spec["ista"]).train()
  opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
  images, labels = torch.randn(BATCH, 3, IMAGE, IMAGE), torch.randint(0, CLASSES, (BATCH,))
  autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["dtype"] == "bf16")

  def step():
    opt.zero_grad(set_to_none=True)
    with autocast:
      logits = model(images)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=SMOOTHING)
    loss.backward()
    opt.step()
    return loss.item()
  return step, dict(torch=torch.__version__, threads=torch.get_num_threads())


def effjax_step(spec):
  """(step function, info) of effjax's CRATE: the bare jitted step or the trainer's compiled step."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  import optax

  import effjax.runtime
  from effjax import components, optim, train
  from effjax.layers import crate as crate_layers
  from effjax.models import crate
  sys.path.insert(0, REPO)
  from configs import crate as crate_config

  if spec["ista"] == "three":
    crate_layers.ISTA = ThreeMatmulISTA  # Layer looks ISTA up when it is traced
  config = crate_config.get_config(f"variant={spec['model']},patch={PATCH},num_classes={CLASSES}")
  config.compute_dtype = "bfloat16" if spec["dtype"] == "bf16" else "float32"
  config.optimizer = ml_collections.ConfigDict(dict(config.optimizer.to_dict(), name="adamw", lr=LR,
                                                    weight_decay=WD, b1=0.9, b2=0.999))
  model = crate.Model(**config.model)
  dtype = train.COMPUTE_DTYPES[config.compute_dtype]
  images = jax.random.normal(jax.random.PRNGKey(0), (BATCH, IMAGE, IMAGE, 3), jnp.float32)
  labels = jax.random.randint(jax.random.PRNGKey(1), (BATCH,), 0, CLASSES)
  params = model.init(jax.random.PRNGKey(2), images[:1])["params"]
  if spec["step"] == "trainer":
    tx, schedule = optim.make_optimizer(config.optimizer, 1000, 100)
    task = components.load("tasks", config.task_name).Task(config)
    fn = train.make_train_step(config, model, task, tx, schedule, dtype)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params), "model_state": {},
             "ema_params": {}, "rng": jax.random.PRNGKey(3)}
    args = ({"image": images, "label": labels},)
    out = lambda result: result[1]["loss"]
  else:
    tx = optax.adamw(LR, weight_decay=WD)

    def loss_fn(params, images, labels):
      logits = model.apply({"params": train._cast_floats(params, dtype)}, images.astype(dtype), train=True)
      targets = optax.smooth_labels(jax.nn.one_hot(labels, CLASSES), SMOOTHING)
      return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()

    def fn(state, images, labels):
      params, opt_state = state
      loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    state = (params, tx.init(params))
    args = (images, labels)
    out = lambda result: result[1]
  # the compiler options effjax's trainer compiles its step with (effjax.runtime.compiler_options)
  compiled = jax.jit(fn, donate_argnums=0, compiler_options=effjax.runtime.compiler_options()).lower(
      state, *args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  holder = [state]

  def step():
    result = compiled(holder[0], *args)
    holder[0] = result[0]
    return float(out(result))
  return step, dict(jax=jax.__version__, gflops_per_step=float(cost["flops"]) / 1e9,
                    allocator=effjax.runtime.allocator())


def _three_matmul_ista():
  import flax.linen as nn
  import jax.numpy as jnp

  class ThreeMatmul(nn.Module):
    """The official ISTA evaluation order: relu(x + η(x D − (x Dᵀ) D) − η λ)."""
    eta: float = 0.1
    lmbda: float = 0.1

    @nn.compact
    def __call__(self, x):
      d = x.shape[-1]
      dictionary = self.param("D", nn.initializers.kaiming_uniform(), (d, d), jnp.float32).astype(x.dtype)
      return nn.relu(x + self.eta * (x @ dictionary - (x @ dictionary.T) @ dictionary) - self.eta * self.lmbda)
  return ThreeMatmul


ThreeMatmulISTA = None


def worker(spec):
  """Builds one variant, runs the warm-up steps, then answers each line "N" on stdin with the wall times of N
  steps (one JSON line on stdout); exits on EOF."""
  global ThreeMatmulISTA
  if spec["side"] == "effjax":
    from effjax import runtime
    runtime.reexec_with_allocator()  # as `python -m effjax.main` does
    ThreeMatmulISTA = _three_matmul_ista()
  step, info = (torch_step if spec["side"] == "torch" else effjax_step)(spec)
  losses = [step() for _ in range(WARMUP)]
  if not np.all(np.isfinite(losses)):
    raise FloatingPointError(f"{spec}: non-finite loss {losses}")
  info.update(loss=losses[-1], env={k: os.environ[k] for k in CLEARED_ENV if k in os.environ})
  print(json.dumps(info), flush=True)
  for line in sys.stdin:
    times = {"wall": [], "cpu": [], "faults": []}
    for _ in range(int(line)):
      wall, cpu, faults = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      step()
      times["wall"].append(time.perf_counter() - wall)
      times["cpu"].append(time.process_time() - cpu)
      times["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
    print(json.dumps(times), flush=True)


# ---------------------------------------------------------------- driver

class Worker:
  def __init__(self, spec, env):
    self.spec = spec
    self.proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    self.info = self._read()

  def _read(self):
    while True:  # skips the worker's progress lines (effjax's tcmalloc re-exec notice goes to stdout)
      line = self.proc.stdout.readline()
      if not line:
        raise RuntimeError(f"worker {self.spec['label']} failed (see its stderr above)")
      if line.startswith("{"):
        return json.loads(line)

  def run(self, steps):
    self.proc.stdin.write(f"{steps}\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def variants(model, dtype, levers, only):
  specs = [dict(side=side, ista=ista, step="bare", label=f"{side} {ista}")
           for side in ("torch", "effjax") for ista in ("three", "fused")]
  if dtype == "f32":
    specs.append(dict(side="effjax", ista="fused", step="trainer", label="effjax trainer (fused)"))
    specs += [dict(side="effjax", ista="fused", step="bare", label=f"lever {label}", env=env)
              for label, env in levers]
  return [dict(s, model=model, dtype=dtype) for s in specs if not only or s["label"] in only]


def run_group(specs, rounds, steps, base_env):
  workers = []
  try:
    for spec in specs:
      workers.append(Worker(spec, dict(base_env, **spec.get("env", {}))))
      print(f"  ready: CRATE-{spec['model']} {spec['dtype']} {spec['label']}", file=sys.stderr, flush=True)
    times = {w.spec["label"]: [] for w in workers}
    loads = []
    for r in range(rounds):
      before = os.getloadavg()[0]
      for w in workers[r % len(workers):] + workers[:r % len(workers)]:
        times[w.spec["label"]].append(w.run(steps))
      loads.append((before, os.getloadavg()[0]))
      print(f"  round {r + 1}/{rounds} load {before:.1f} -> {loads[-1][1]:.1f}", file=sys.stderr, flush=True)
    return [dict(w.spec, info=w.info, times=times[w.spec["label"]]) for w in workers], loads
  finally:
    for w in workers:
      w.close()


def summarise(rows):
  """Adds median/min/max of every row and, per round, PyTorch / effjax ratios of the round medians."""
  by_label = {r["label"]: r for r in rows}
  for r in rows:
    flat = np.concatenate([t["wall"] for t in r["times"]])
    r.update(median_s=float(np.median(flat)), min_s=float(flat.min()), max_s=float(flat.max()),
             cpu_s=float(np.median(np.concatenate([t["cpu"] for t in r["times"]]))),
             faults=float(np.median(np.concatenate([t["faults"] for t in r["times"]]))))
  for r in rows:
    if r["side"] != "effjax":
      continue
    mine = np.array([np.median(t["wall"]) for t in r["times"]])
    r["ratios"] = {}
    for base in ("torch three", "torch fused"):
      if base not in by_label:
        continue
      theirs = np.array([np.median(t["wall"]) for t in by_label[base]["times"]])
      r["ratios"][base] = dict(median=float(by_label[base]["median_s"] / r["median_s"]),
                               per_round=[float(x) for x in theirs / mine])
  return rows


def table(groups):
  lines = ["| model | dtype | variant | median s/step | min | max | CPU s/step | page faults/step | "
           "×torch three (median; per round) | ×torch fused (median; per round) | load (per round, before→after) |",
           "|---|---|---|---:|---:|---:|---:|---:|---|---|---|"]
  for g in groups:
    load = ", ".join(f"{a:.1f}→{b:.1f}" for a, b in g["load"])
    for r in g["rows"]:
      cells = []
      for base in ("torch three", "torch fused"):
        x = r.get("ratios", {}).get(base)
        cells.append(f"**{x['median']:.2f}×**; " + " ".join(f"{v:.2f}" for v in x["per_round"]) if x else "—")
      lines.append(f"| CRATE-{r['model']} | {r['dtype']} | {r['label']} | {r['median_s']:.3f} | {r['min_s']:.3f} | "
                   f"{r['max_s']:.3f} | {r['cpu_s']:.2f} | {r['faults']:,.0f} | {cells[0]} | {cells[1]} | {load} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="T,B")
  parser.add_argument("--dtypes", default="f32,bf16")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=2, help="timed steps per worker per round")
  parser.add_argument("--lever", action="append", default=[],
                      help="'label:ENV=VALUE ENV2=VALUE': an extra effjax variant with these variables")
  parser.add_argument("--only", type=lambda s: s.split(","), help="comma-separated variant labels to run")
  parser.add_argument("--out", default=os.path.join(HERE, "benchmark"), help="writes <out>.json and <out>.md")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker(json.loads(args.worker))
  levers = []
  for text in args.lever:
    label, _, assignments = text.partition(":")
    if not all("=" in a for a in assignments.split()):
      parser.error(f"--lever {text!r}: expected 'label:ENV=VALUE ...'")
    levers.append((label, dict(a.split("=", 1) for a in assignments.split())))
  base_env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
  base_env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, base_env.get("PYTHONPATH")) if p)
  start = time.time()
  groups = []
  for model in args.models.split(","):
    for dtype in args.dtypes.split(","):
      print(f"CRATE-{model} {dtype}:", file=sys.stderr, flush=True)
      rows, load = run_group(variants(model, dtype, levers, args.only), args.rounds, args.steps, base_env)
      groups.append(dict(model=model, dtype=dtype, rows=summarise(rows), load=load))
  info = dict(cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
              python=platform.python_version(),
              rounds=args.rounds, steps_per_round=args.steps, warmup_steps=WARMUP, wall_s=time.time() - start,
              date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
  text = (f"CRATE train step (forward + label-smoothed CE + backward + AdamW), 32×32×3, patch 4, 10 classes, "
          f"batch {BATCH}; {info['cpu_count']} CPU cores ({info['cpu']}), {info['date']}. Each variant in its own "
          f"process, {args.rounds} rounds × {args.steps} steps taking turns (rotating order) after {WARMUP} warm-up "
          f"steps. Ratios are PyTorch s/step ÷ effjax s/step (> 1: effjax faster). Load average per round is "
          f"the 1-minute load before→after the round.\n\n" + table(groups) + "\n")
  print(text)
  with open(args.out + ".md", "w") as f:
    f.write(text)
  with open(args.out + ".json", "w") as f:
    json.dump(dict(info, groups=groups), f, indent=1)
  print(f"wrote {args.out}.md and {args.out}.json")


if __name__ == "__main__":
  main()
