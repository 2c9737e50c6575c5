"""Trains the small CRATE of `configs/crate.py:runlocal` on the embedded MNIST subset (one CPU device) and
records accuracy, wall time, and the per-layer coding rate and sparsity at initialisation and after training.

  python experiments/crate/train_mnist.py [--workdir /tmp/crate_mnist] [--out experiments/crate]

Writes <out>/results.json, <out>/results.md (the table quoted in experiments/crate/README.md) and
<out>/coding_rate_init_vs_trained.png. The wall time covers compilation, training and the evaluations.
"""
import argparse
import json
import os
import platform
import shutil
import sys
import time

import jax

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from effjax import components, config as cfg, sharding, train  # noqa: E402
from effjax.data import pipeline  # noqa: E402
from effjax.evaluators import coding_rate  # noqa: E402


def init_metrics(config):
  """Coding rate / sparsity of the exact initial params the trainer starts from (same rng, same init)."""
  model = components.load("models", config.model_name).Model(**config.model)
  task = components.load("tasks", config.task_name).Task(config)
  batch_sharding = sharding.batch_sharding(sharding.make_mesh(config.mesh))
  batch = next(pipeline.eval_batches(config.data, config.eval_batch_size, batch_sharding))
  variables = task.init_variables(model, jax.random.PRNGKey(config.seed), batch)
  evaluator = coding_rate.Evaluator(config, task, model)
  return evaluator.run(variables, pipeline.eval_batches(config.data, config.eval_batch_size, batch_sharding),
                       step=0, workdir="")


def table(init, trained, depth):
  rows = ["| layer | coding rate R^c (init) | R^c (trained) | sparsity (init) | sparsity (trained) |",
          "|---:|---:|---:|---:|---:|"]
  for i in range(depth):
    k = f"layer{i}"
    rows.append(f"| {i + 1} | {init[f'coding_rate/{k}']:.1f} ± {init[f'coding_rate_std/{k}']:.1f} "
                f"| {trained[f'coding_rate/{k}']:.1f} ± {trained[f'coding_rate_std/{k}']:.1f} "
                f"| {init[f'sparsity/{k}']:.3f} | {trained[f'sparsity/{k}']:.3f} |")
  return "\n".join(rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/crate_mnist")
  parser.add_argument("--out", default=os.path.join(REPO, "experiments", "crate"))
  args = parser.parse_args()
  config = cfg.load_config_file(os.path.join(REPO, "configs/crate.py:runlocal"))
  config.progress_bar = False
  config.evaluator.coding_rate.max_examples = 1000  # the whole test split
  shutil.rmtree(args.workdir, ignore_errors=True)

  init = init_metrics(config)
  load_before = os.getloadavg()
  start = time.time()
  result = train.train_and_evaluate(config, args.workdir)
  wall = time.time() - start
  trained = {k[len("eval/"):]: v for k, v in result.items() if k.startswith("eval/")}
  depth = config.model.depth
  summary = {
      "config": "configs/crate.py:runlocal", "model": dict(config.model), "steps": result["step"],
      "test_accuracy": trained["accuracy"], "train_and_eval_wall_s": wall, "devices": jax.device_count(),
      "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
      "load_average_before_and_after": [load_before, os.getloadavg()],
      "init": init, "trained": {k: v for k, v in trained.items() if k.startswith(("coding_rate", "sparsity"))},
  }
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  coding_rate.plot_curves(None, os.path.join(args.out, "coding_rate_init_vs_trained.png"),
                          labels_and_metrics=[("init", init), (f"trained ({result['step']} steps)", trained)])
  md = (f"Small CRATE (`configs/crate.py:runlocal`: width {config.model.width}, depth {depth}, "
        f"{config.model.num_heads} heads, patch {config.model.patch_size}) trained {result['step']} steps on "
        f"mnist5k on {jax.device_count()} CPU device.\n\n"
        f"Test accuracy: **{100 * trained['accuracy']:.1f}%** (1,000 test images). Wall time of training and "
        f"evaluation (including compilation): **{wall:.0f} s**; load average before/after "
        f"{load_before[0]:.1f}/{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.\n\n"
        f"Per-layer coding rate (mean ± std over the 1,000 test images, ε = 0.01) and sparsity of the ISTA "
        f"output:\n\n{table(init, trained, depth)}\n")
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(md)
  print(md)


if __name__ == "__main__":
  main()
