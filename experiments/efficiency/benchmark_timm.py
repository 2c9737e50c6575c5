"""effjax against timm on CPU, side by side: training step and inference of the convolutional zoo at 224 px.

  python experiments/efficiency/benchmark_timm.py [--models convnext,ecaresnet] [--batch 8] [--steps 5]
      [--rounds 2] [--timm-python .venv-timm/bin/python] [--json out.jsonl]

For every model the two sides take turns (`--rounds` times each, effjax first) in separate child processes on the
same machine, float32, random inputs [B, 224, 224, 3] (timm: [B, 3, 224, 224]) and labels, batch `--batch`:

  train  one step of the framework's own training loop with the same terms: forward in training mode, softmax
         cross-entropy (no label smoothing, Mixup, drop path or EMA), backward, AdamW (lr 1e-3, weight decay 0.05,
         one group). effjax: `effjax.train.make_train_step` from the model's config (it also computes the logged
         grad / param / update norms), jitted with donation and the trainer's compile options; timm:
         `timm.create_model(name)`, `model.train()`, `torch.optim.AdamW`, `optimizer.zero_grad(set_to_none=True)`.
  infer  the forward pass in evaluation mode (effjax: the task's jitted predict; timm: `model.eval()` under
         `torch.inference_mode()`).

Each figure is the median of `--steps` steps after compilation and one warm-up step: wall time and the child's
CPU time (every thread; `time.process_time`), which moves less with the load of a shared machine. Each side runs
with what it gets by default: effjax re-executes itself with tcmalloc (or mimalloc) preloaded as `python -m
effjax.main` does; torch runs with glibc malloc and its default intra-op threads (one per core); XLA:CPU uses its
default thread pool. The ratio columns are timm time / effjax time (> 1: effjax is faster).

ConvNeXt-DCLS-T: effjax's `configs/convnext.py:dcls=True` (Gaussian DCLS, 26 taps over 23×23); on the timm side
timm's convnext_tiny with every depthwise convolution replaced by the official PyTorch layer `DCLS.construct.
modules.Dcls2d` (pip package DCLS, version "gauss", the same taps and size, native conv2d path on CPU), as the
official ConvNeXt-dcls repository builds it. The results are in TIMM.md beside this file.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# name -> (effjax config, timm model name)
MODELS = {
    "convnext": ("configs/convnext.py", "convnext_tiny"),
    "convnext_dcls": ("configs/convnext.py:dcls=True", "convnext_tiny+dcls"),
    "ecaresnet": ("configs/resnet.py", "ecaresnet50d"),
    "resnetrs": ("configs/resnet.py:variant=resnetrs50", "resnetrs50"),
    "inception_next": ("configs/inception_next.py", "inception_next_tiny"),
    "fasternet": ("configs/fasternet.py", "fasternet_t0"),
}
LR, WEIGHT_DECAY, SIZE = 1e-3, 0.05, 224


def _timed(fn, steps):
  """(median wall s, median CPU s) of `steps` calls of fn() after one warm-up call."""
  import statistics
  fn()
  walls, cpus = [], []
  for _ in range(steps):
    w, c = time.perf_counter(), time.process_time()
    fn()
    walls.append(time.perf_counter() - w)
    cpus.append(time.process_time() - c)
  return statistics.median(walls), statistics.median(cpus), walls


def effjax_steps(name, batch, compiler_options="trainer"):
  """(train_once, infer_once) of the effjax side of `name` (compiled; each call waits for its result). The train
  step compiles with `compiler_options` (default: the trainer's, runtime.compiler_options())."""
  import jax
  import jax.numpy as jnp

  from effjax import components, config as config_lib, optim, runtime, train
  sys.path.insert(0, HERE)
  import measure

  config = config_lib.load_config_file(os.path.join(REPO, MODELS[name][0]))
  config.model.drop_path_rate = 0.0
  config.task.update({k: 0.0 for k in ("label_smoothing", "mixup_alpha", "cutmix_alpha") if k in config.task})
  config.ema_decay = 0.0
  config.compute_dtype = "float32"
  config.optimizer.update(dict(name="adamw", lr=LR, weight_decay=WEIGHT_DECAY, grad_clip_norm=0.0,
                               decay_mask="all", layer_decay=1.0))
  model = components.load("models", config.model_name).Model(**config.model)
  task = components.load("tasks", config.task_name).Task(config)
  rng = jax.random.PRNGKey(0)
  b = {"image": jax.random.normal(rng, (batch, SIZE, SIZE, 3), jnp.float32),
       "label": jax.random.randint(jax.random.PRNGKey(1), (batch,), 0, task.num_classes)}
  variables = dict(measure._fill(jax.eval_shape(lambda r: task.init_variables(model, r, b), rng)))
  params = variables.pop("params")
  predict = jax.jit(lambda v, x: task.predict(model, v, x)).lower({"params": params, **variables}, b).compile()
  full = {"params": params, **variables}
  tx, schedule = optim.make_optimizer(config.optimizer, 1000, 100)
  step = train.make_train_step(config, model, task, tx, schedule, jnp.float32)
  state = {"step": jnp.zeros((), jnp.int32), "params": jax.tree.map(jnp.copy, params), "opt_state": tx.init(params),
           "model_state": variables, "ema_params": {}, "rng": jax.random.PRNGKey(3)}
  options = runtime.compiler_options() if compiler_options == "trainer" else compiler_options
  step_c = jax.jit(step, donate_argnums=0, compiler_options=options).lower(state, b).compile()
  holder = [state]

  def train_once():
    holder[0], metrics = step_c(holder[0], b)
    jax.block_until_ready(metrics["loss"])
    return metrics
  return train_once, lambda: jax.block_until_ready(predict(full, b))


def run_effjax(name, batch, steps):
  from effjax import runtime
  runtime.reexec_with_allocator()
  import jax
  train_once, infer_once = effjax_steps(name, batch)
  infer = _timed(infer_once, steps)  # first: the train steps donate the params the forward shares
  return {"train": _timed(train_once, steps), "infer": infer, "allocator": runtime.allocator(),
          "version": f"jax {jax.__version__}"}


def _timm_model(timm_name):
  import timm
  if not timm_name.endswith("+dcls"):
    return timm.create_model(timm_name, drop_path_rate=0.0)
  from DCLS.construct.modules import Dcls2d
  model = timm.create_model(timm_name[:-len("+dcls")], drop_path_rate=0.0)
  for stage in model.stages:
    for block in stage.blocks:
      dim = block.conv_dw.in_channels
      block.conv_dw = Dcls2d(dim, dim, kernel_count=26, dilated_kernel_size=23, padding=11, groups=dim,
                             version="gauss", use_implicit_gemm=False)
  return model


def run_timm(name, batch, steps):
  import logging

  import torch
  logging.disable(logging.WARNING)  # Dcls2d warns that its CUDA implicit GEMM is not available on CPU
  torch.manual_seed(0)
  model = _timm_model(MODELS[name][1])
  x = torch.randn(batch, 3, SIZE, SIZE)
  y = torch.randint(0, 1000, (batch,))
  model.eval()

  def infer_once():
    with torch.inference_mode():
      model(x)
  infer = _timed(infer_once, steps)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
  loss_fn = torch.nn.CrossEntropyLoss()

  def train_once():
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    opt.step()
  import timm
  return {"train": _timed(train_once, steps), "infer": infer, "allocator": "glibc (torch default)",
          "version": f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads"}


def child(side, name, batch, steps):
  out = (run_effjax if side == "effjax" else run_timm)(name, batch, steps)
  print("RESULT " + json.dumps(out), flush=True)


def _spawn(python, side, name, batch, steps):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_WORKER_HOSTNAMES="localhost",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  load = os.getloadavg()[0]
  start = time.perf_counter()
  proc = subprocess.run([python, os.path.abspath(__file__), "--child", side, "--models", name, "--batch", str(batch),
                         "--steps", str(steps)], capture_output=True, text=True, env=env)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"{side} {name} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
  res = json.loads(lines[-1][len("RESULT "):])
  res.update(side=side, model=name, load_before=load, load_after=os.getloadavg()[0],
             child_s=time.perf_counter() - start)
  return res


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default=",".join(MODELS))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--rounds", type=int, default=1, help="alternations per model (effjax, timm, effjax, timm, ...)")
  p.add_argument("--timm-python", default=os.path.join(REPO, ".venv-timm", "bin", "python"),
                 help="interpreter with torch, timm and DCLS installed (not effjax's environment)")
  p.add_argument("--json", default=None, help="append every child's result to this JSONL file")
  p.add_argument("--child", choices=("effjax", "timm"), help=argparse.SUPPRESS)
  a = p.parse_args()
  names = a.models.split(",")
  unknown = [n for n in names if n not in MODELS]
  if unknown:
    p.error(f"unknown models {unknown}; expected from {list(MODELS)}")
  if a.child:
    return child(a.child, names[0], a.batch, a.steps)
  if not os.path.exists(a.timm_python):
    p.error(f"--timm-python {a.timm_python} does not exist (python3 -m venv .venv-timm; "
            ".venv-timm/bin/pip install torch torchvision timm DCLS)")
  print(f"batch {a.batch}, {a.steps} timed steps, {os.cpu_count()} cores; ratio = timm / effjax (> 1: effjax faster)")
  print("| model | timm | effjax train ms (cpu) | timm train ms (cpu) | train ratio wall (cpu) | effjax infer ms (cpu) "
        "| timm infer ms (cpu) | infer ratio wall (cpu) | load |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
  for name in names:
    results = {"effjax": [], "timm": []}
    for _ in range(a.rounds):
      for side, python in (("effjax", sys.executable), ("timm", a.timm_python)):
        res = _spawn(python, side, name, a.batch, a.steps)
        results[side].append(res)
        if a.json:
          with open(a.json, "a") as fh:
            fh.write(json.dumps(res) + "\n")
    best = {s: {(k, i): min(r[k][i] for r in rs) for k in ("train", "infer") for i in (0, 1)}
            for s, rs in results.items()}
    e, t = best["effjax"], best["timm"]
    cells = []
    for k in ("train", "infer"):
      cells += [f"{1e3 * e[k, 0]:.0f} ({1e3 * e[k, 1]:.0f})", f"{1e3 * t[k, 0]:.0f} ({1e3 * t[k, 1]:.0f})",
                f"{t[k, 0] / e[k, 0]:.2f}× ({t[k, 1] / e[k, 1]:.2f}×)"]
    loads = [r["load_before"] for rs in results.values() for r in rs]
    print(f"| {name} | {MODELS[name][1]} | " + " | ".join(cells) + f" | {min(loads):.1f}-{max(loads):.1f} |",
          flush=True)


if __name__ == "__main__":
  main()
