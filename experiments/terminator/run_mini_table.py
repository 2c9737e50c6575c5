"""CPU mini-table for the 1D Terminator: sMNIST and pMNIST on the embedded 5,000-image MNIST subset.

  python experiments/terminator/run_mini_table.py [--datasets smnist,pmnist] [--steps 400] \
      [--out experiments/terminator]

Trains `configs/terminator.py:dataset=<d>,runlocal` through the shared trainer (all local CPU devices
as one data-parallel mesh), then writes <out>/results.json, <out>/results.md (the table quoted in the
README) and <out>/hyper_kernels.png: the global hyper-kernels W_g that the slow networks generate,
at initialisation and after training. Wall times include compilation and evaluation.
"""
import argparse
import json
import os
import platform
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from effjax import checkpoint, components, config as cfg, train  # noqa: E402


def global_hyper_kernels(config, params, length):
  """The blocks' global hyper-kernels [L, C_i] (they depend on the slow-net params only)."""
  model = components.load("models", config.model_name).Model(**config.model)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, length, 1))))
  variables = {**jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables), "params": params}
  _, kernels = model.apply(variables, jnp.zeros((2, length, 1)), return_hyper_kernels=True)
  return [np.asarray(k) for k in kernels]


def init_params(config, length):
  model = components.load("models", config.model_name).Model(**config.model)
  return jax.jit(lambda: model.init(jax.random.PRNGKey(config.seed), jnp.zeros((2, length, 1))))()["params"]


def plot(kernels_init, kernels_trained, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(2, 4, figsize=(10, 5.4))
  for row, (kernels, name) in enumerate([(kernels_init, "init"), (kernels_trained, "trained")]):
    panels = [(kernels[0][:, 0], "block 0, ch 0"), (kernels[1][:, 0], "block 1, ch 0"),
              (kernels[1][:, 5], "block 1, ch 5"), (kernels[1].mean(-1), "block 1, channel mean")]
    for col, (k, title) in enumerate(panels):
      ax = axes[row, col]
      ax.imshow(k.reshape(28, 28), cmap="RdBu_r")
      ax.set_title(f"{title} ({name})", fontsize=8)
      ax.axis("off")
  fig.suptitle("sMNIST global hyper-kernels W_g over the 784 sequence positions (shown as 28×28)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--datasets", default="smnist,pmnist")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--workdir", default="/tmp/terminator_mini")
  parser.add_argument("--out", default=os.path.join(REPO, "experiments", "terminator"))
  args = parser.parse_args()
  results = {}
  for dataset in args.datasets.split(","):
    config = cfg.load_config_file(os.path.join(REPO, f"configs/terminator.py:dataset={dataset},runlocal"))
    config.total_steps = args.steps
    config.eval_every_steps = -1
    config.progress_bar = False
    workdir = os.path.join(args.workdir, dataset)
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.time()
    metrics = train.train_and_evaluate(config, workdir)
    wall = time.time() - start
    results[dataset] = {"eval_accuracy": metrics["eval/accuracy"], "eval_loss": metrics["eval/loss"],
                        "train_ce": metrics.get("train/ce"), "train_slow_loss": metrics.get("train/slow_loss"),
                        "steps": metrics["step"], "batch_size": config.batch_size, "wall_s": wall}
    print(dataset, json.dumps(results[dataset]), flush=True)
    if dataset == "smnist":
      trained = checkpoint.restore_params(os.path.join(workdir, "checkpoints"))
      plot(global_hyper_kernels(config, init_params(config, 784), 784),
           global_hyper_kernels(config, trained, 784), os.path.join(args.out, "hyper_kernels.png"))
  env = {"devices": jax.device_count(), "platform": platform.platform(), "jax": jax.__version__}
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({"results": results, "env": env}, f, indent=2)
  rows = ["| task | test accuracy | test CE | steps × batch | wall time (CPU) |", "|---|---:|---:|---:|---:|"]
  for d, r in results.items():
    rows.append(f"| {d} (mnist5k, 1,000 test images) | {100 * r['eval_accuracy']:.1f}% | {r['eval_loss']:.3f} "
                f"| {r['steps']} × {r['batch_size']} | {r['wall_s'] / 60:.1f} min |")
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write("\n".join(rows) + "\n")
  print("\n".join(rows))


if __name__ == "__main__":
  main()
