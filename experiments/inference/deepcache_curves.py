"""DeepCache on the FIT runlocal denoiser: sample quality vs sampling speed per cache interval.

  python -m effjax.main --config configs/fit_diffusion.py:runlocal --workdir runs/fit_diffusion
  python -m effjax.main --config configs/vit.py:runlocal --workdir runs/vit        # the judge of the samples
  JAX_PLATFORMS=cpu python experiments/inference/deepcache_curves.py --workdir runs/fit_diffusion \
      --classifier runs/vit --out experiments/inference/deepcache.json

For every interval k in `--intervals`, the class-conditional DDIM sampler (`--steps` steps, labels 0..9 cycling,
one noise seed for all k) runs with `cache_interval=k`: a full network call on steps i mod k = 0, the shallow
per-group path on the others (effjax/models/fit_denoiser.py). Quality, against the uncached sampler (k = 1) from the
same noise: pixel MSE and PSNR in [0, 1]; and the accuracy of the trained runlocal ViT on the samples (the fraction
classified as the label they were generated for). Cost: full calls per sample, XLA's flop estimate of one full and
one cached network call, and samples/s measured in the same process with all intervals taking turns over
`--rounds` rounds (median round). Runs unchanged on an accelerator. Writes the JSON, a plot and a grid of samples.
"""
import argparse
import json
import math
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from effjax import checkpoint, components, config as cfg  # noqa: E402
from effjax.evaluators import samples as samples_lib  # noqa: E402

MEAN, STD = 0.1307, 0.3081  # the ViT runlocal config's normalize()


def flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/fit_diffusion")
  parser.add_argument("--classifier", default="runs/vit", help="workdir of configs/vit.py:runlocal ('' = none)")
  parser.add_argument("--out", default=os.path.join(REPO, "experiments/inference/deepcache.json"))
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--intervals", default="1,2,3,4,5,10")
  parser.add_argument("--num", type=int, default=100)
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  intervals = [int(k) for k in args.intervals.split(",")]
  if intervals[0] != 1:
    raise SystemExit("effjax: error: --intervals must start with 1 (the uncached reference)")

  config = cfg.load_config_file(os.path.join(REPO, "configs/fit_diffusion.py:runlocal"))
  model = components.load("models", config.model_name).Model(**config.model)
  task = components.load("tasks", config.task_name).Task(config)
  variables = {"params": checkpoint.restore_params(os.path.join(args.workdir, "checkpoints"))}
  shape = (args.num, 28, 28, 1)
  labels = jnp.arange(args.num) % task.num_classes
  rng = jax.random.PRNGKey(0)
  samplers = {k: jax.jit(lambda v, k=k: task.sample(model, v, rng, shape, steps=args.steps, method="ddim",
                                                     labels=labels, cache_interval=k)) for k in intervals}
  samples = {k: np.asarray(fn(variables)) for k, fn in samplers.items()}

  judge = None
  if args.classifier:
    vconfig = cfg.load_config_file(os.path.join(REPO, "configs/vit.py:runlocal"))
    vit = components.load("models", vconfig.model_name).Model(**vconfig.model)
    vparams = {"params": checkpoint.restore_params(os.path.join(args.classifier, "checkpoints"))}
    judge = jax.jit(lambda x: vit.apply(vparams, (x - MEAN) / STD).argmax(-1))

  x = jnp.zeros((args.num, 28, 28, 1))
  t, cond = jnp.full((args.num,), 0.5), jax.nn.one_hot(labels, task.num_classes)
  lat_shape = jax.eval_shape(lambda: model.apply(variables, x, t, cond, None))[1].shape
  lat = jnp.zeros(lat_shape)
  (_, _), state = model.apply(variables, x, t, cond, lat, mutable=["latent_cache"])
  flops_full = flops(lambda v: model.apply(v, x, t, cond, lat), variables)
  flops_cached = flops(lambda v: model.apply(v, x, t, cond, lat, latent_cache=state["latent_cache"]), variables)

  rows = {}
  for k in intervals:
    full_calls = math.ceil(args.steps / k)
    mse = float(np.mean((samples[k] - samples[1]) ** 2))
    rows[k] = {"full_calls": full_calls, "cached_calls": args.steps - full_calls,
               "flops_per_sample": (full_calls * flops_full + (args.steps - full_calls) * flops_cached) / args.num,
               "mse_vs_uncached": mse, "psnr_vs_uncached_db": float("inf") if mse == 0 else -10 * math.log10(mse),
               "times": []}
    if judge is not None:
      rows[k]["classifier_accuracy"] = float(np.mean(np.asarray(judge(jnp.asarray(samples[k]))) == labels))
  for _ in range(args.rounds):
    for k, fn in samplers.items():
      start = time.perf_counter()
      fn(variables).block_until_ready()
      rows[k]["times"].append(time.perf_counter() - start)
  for k, row in rows.items():
    row["samples_per_s"] = args.num / float(np.median(row["times"]))
    row["speedup"] = float(np.median(rows[1]["times"]) / np.median(row["times"]))
    print(f"interval {k:3d}: {row['samples_per_s']:7.1f} samples/s (x{row['speedup']:.2f})  "
          f"PSNR {row['psnr_vs_uncached_db']:6.2f} dB  acc {row.get('classifier_accuracy', float('nan')):.3f}",
          flush=True)
  results = {"conditions": {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
                            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                            "jax": jax.__version__, "sampler": "ddim", "steps": args.steps, "num_samples": args.num,
                            "rounds": args.rounds, "config": "configs/fit_diffusion.py:runlocal",
                            "workdir": args.workdir, "classifier": args.classifier, "flops_full_call": flops_full,
                            "flops_cached_call": flops_cached, "load": os.getloadavg()[0]},
             "intervals": {str(k): v for k, v in rows.items()}}
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  base = os.path.splitext(args.out)[0]
  grid = np.concatenate([samples_lib.image_grid(samples[k][:10], columns=10) for k in intervals], axis=0)
  samples_lib.write_png(base + "_samples.png", grid)
  plot(results, base + ".png")


def plot(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = results["intervals"]
  speed = [r["samples_per_s"] for r in rows.values()]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  psnr = [min(r["psnr_vs_uncached_db"], 60.0) for r in rows.values()]
  axes[0].plot(speed, psnr, "o-")
  axes[0].set(xlabel="samples/s", ylabel="PSNR vs uncached (dB; k=1 drawn at 60)")
  if all("classifier_accuracy" in r for r in rows.values()):
    axes[1].plot(speed, [100 * r["classifier_accuracy"] for r in rows.values()], "o-")
  axes[1].set(xlabel="samples/s", ylabel="ViT accuracy on samples (%)")
  for ax in axes:
    for k, r, y in zip(rows, rows.values(), ax.lines[0].get_ydata() if ax.lines else []):
      ax.annotate(f"k={k}", (r["samples_per_s"], y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.grid(alpha=0.3)
  c = results["conditions"]
  fig.suptitle(f"DeepCache, FIT runlocal denoiser, DDIM {c['steps']} steps ({c['backend']})")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  main()
