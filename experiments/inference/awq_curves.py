"""AWQ weight-only quantization: test accuracy vs images/s of trained ViT and CRATE (runlocal, mnist5k).

  python -m effjax.main --config configs/vit.py:runlocal --workdir runs/vit
  python -m effjax.main --config configs/crate.py:runlocal --workdir runs/crate
  JAX_PLATFORMS=cpu python experiments/inference/awq_curves.py --workdirs vit=runs/vit,crate=runs/crate \
      --out experiments/inference/awq.json

Per model: the float model and every (bits, group, scaling) setting in SETTINGS, quantized from the newest
checkpoint with a calibration batch of the first `--calib` training images (AWQ's scale search, or round-to-nearest
with s = 1), evaluated on the 1,000 mnist5k test images. Throughput is measured in the same process, all settings of
a model taking turns over `--rounds` rounds (each round times `--iters` jitted forward passes of a `--batch`-image
batch per setting); the median round is reported (and the best). Accuracy moves in 1-image steps (0.1%), so
the relative error of the test-set logits against the float model's is reported too. The quantized path is the XLA
reference (dequantize, then one matmul), so on a CPU it is not expected to be faster than float: the figures show
its cost, not a kernel's gain. With `--standard`, the standard variants (ViT-Ti/16, CRATE-T/16 at 224x224, random
weights) are timed the same way for float32, int8 and int4 (groups of 64) AWQ. Runs unchanged on an accelerator.
Writes the JSON (with the conditions) and a PNG plot beside it.
"""
import argparse
import functools
import json
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
from effjax.data.sources import mnist5k  # noqa: E402
from effjax.layers import awq  # noqa: E402

SETTINGS = [  # (label, bits, group_size, AWQ search)
    ("int8 RTN", 8, 0, False), ("int8 AWQ", 8, 0, True),
    ("int4 g32 RTN", 4, 32, False), ("int4 g32 AWQ", 4, 32, True),
    ("int4 RTN", 4, 0, False), ("int4 AWQ", 4, 0, True),
    ("int3 g32 RTN", 3, 32, False), ("int3 g32 AWQ", 3, 32, True),
]
MEAN, STD = 0.1307, 0.3081  # the runlocal configs' normalize()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdirs", default="vit=runs/vit,crate=runs/crate",
                      help="name=workdir,...; name picks configs/<name>.py:runlocal")
  parser.add_argument("--out", default=os.path.join(REPO, "experiments/inference/awq.json"))
  parser.add_argument("--calib", type=int, default=64)
  parser.add_argument("--batch", type=int, default=250)
  parser.add_argument("--rounds", type=int, default=9)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--standard", default="vit=Ti/16,crate=T/16",
                      help="standard variants timed at 224x224 with random weights (images/s only; '' = none)")
  parser.add_argument("--standard-batch", type=int, default=8)
  parser.add_argument("--impl", default="xla", choices=("xla", "pallas"),
                      help="quantized matmul: XLA dequantize-then-dot, or the Pallas kernel (accelerators)")
  args = parser.parse_args()
  test_x, test_y = split_arrays("test")
  calib_x = split_arrays("train")[0][:args.calib]
  results = {"conditions": {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
                            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                            "jax": jax.__version__, "impl": args.impl, "batch": args.batch, "rounds": args.rounds,
                            "iters": args.iters,
                            "calibration_images": args.calib, "test_images": len(test_y),
                            "load_before": os.getloadavg()[0]}, "models": {}}
  for item in args.workdirs.split(","):
    name, workdir = item.split("=")
    config = cfg.load_config_file(os.path.join(REPO, f"configs/{name}.py:runlocal"))
    model = components.load("models", config.model_name).Model(**config.model)
    variables = {"params": checkpoint.restore_params(os.path.join(workdir, "checkpoints"))}
    runs = {"float32": (variables, None)}
    for label, bits, group, search in SETTINGS:
      runs[label] = awq.awq_quantize(model, variables, jnp.asarray(calib_x), bits=bits, group_size=group,
                                     search=search)
    apply = lambda v, x, q: model.apply(v, x) if q is None else awq.quantized_apply(model, v, q, x, impl=args.impl)
    fns = {label: jax.jit(functools.partial(apply, q=q)) for label, (v, q) in runs.items()}
    rows, logits = {}, {}
    for label, (v, q) in runs.items():
      logits[label] = np.concatenate([np.asarray(fns[label](v, test_x[i:i + args.batch]))
                                      for i in range(0, len(test_y), args.batch)])
      weight_bytes = sum(a.nbytes for a in jax.tree.leaves(v["params"]))
      if q is not None:  # codes counted at their bit width (packed size); deltas, zeros and 1/s at 4 bytes
        bits = next(s[1] for s in SETTINGS if s[0] == label)
        weight_bytes += sum(a.size * (bits / 8 if a.dtype in (jnp.uint4, jnp.uint8) else a.dtype.itemsize)
                            for a in jax.tree.leaves(q))
      ref = logits["float32"]
      rows[label] = {"accuracy": float(np.mean(logits[label].argmax(-1) == test_y)),
                     "agreement_with_float": float(np.mean(logits[label].argmax(-1) == ref.argmax(-1))),
                     "logit_rel_error": float(np.linalg.norm(logits[label] - ref) / np.linalg.norm(ref)),
                     "weight_bytes": int(weight_bytes)}
    for label, t in timed(fns, runs, jnp.asarray(test_x[:args.batch]), args).items():
      rows[label]["times"] = t
    for label, row in rows.items():
      row["images_per_s"] = args.batch / float(np.median(row["times"]))
      row["images_per_s_best_round"] = args.batch / float(np.min(row["times"]))
      print(f"{name:6s} {label:14s} acc {row['accuracy']:.4f}  logit err {row['logit_rel_error']:.4f}  "
            f"{row['images_per_s']:9.1f} img/s (best {row['images_per_s_best_round']:9.1f})  "
            f"weights {row['weight_bytes'] / 1024:.1f} KiB", flush=True)
    results["models"][name] = {"config": f"configs/{name}.py:runlocal", "workdir": workdir, "settings": rows}
  for item in filter(None, args.standard.split(",")):
    name, variant = item.split("=")
    results.setdefault("standard", {})[f"{name} {variant}"] = standard(name, variant, args)
  results["conditions"]["load_after"] = os.getloadavg()[0]
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  plot(results, os.path.splitext(args.out)[0] + ".png")


def timed(fns, runs, batch, args):
  """{label: [seconds per call per round]}: every setting taking turns, `args.rounds` rounds of `args.iters` calls."""
  for label, (v, _) in runs.items():
    fns[label](v, batch).block_until_ready()
  times = {label: [] for label in runs}
  for _ in range(args.rounds):
    for label, (v, _) in runs.items():
      start = time.perf_counter()
      for _ in range(args.iters):
        out = fns[label](v, batch)
      out.block_until_ready()
      times[label].append((time.perf_counter() - start) / args.iters)
  return times


def standard(name, variant, args):
  """images/s of a standard variant (random weights, 224x224x3, 1000 classes): float32, int8 and int4 g64 AWQ."""
  model = components.load("models", name).Model(variant=variant, num_classes=1000)
  images = jax.random.normal(jax.random.PRNGKey(0), (args.standard_batch, 224, 224, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), images)
  runs = {"float32": (variables, None)}
  for label, bits, group in (("int8 AWQ", 8, 0), ("int4 g64 AWQ", 4, 64)):
    runs[label] = awq.awq_quantize(model, variables, images, bits=bits, group_size=group)
  apply = lambda v, x, q: model.apply(v, x) if q is None else awq.quantized_apply(model, v, q, x, impl=args.impl)
  fns = {label: jax.jit(functools.partial(apply, q=q)) for label, (v, q) in runs.items()}
  rows = {label: {"images_per_s": args.standard_batch / float(np.median(t)), "times": t}
          for label, t in timed(fns, runs, images, args).items()}
  for label, row in rows.items():
    print(f"{name} {variant} {label:14s} {row['images_per_s']:8.2f} img/s (batch {args.standard_batch})", flush=True)
  return rows


def split_arrays(split):
  """mnist5k `split` -> (normalized images float32 [N, 28, 28, 1], labels [N])."""
  src = mnist5k.make(split)
  return (src.arrays["image"].astype(np.float32) / 255.0 - MEAN) / STD, src.arrays["label"]


def plot(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(results["models"]), figsize=(6 * len(results["models"]), 4.5), squeeze=False)
  for ax, (name, res) in zip(axes[0], results["models"].items()):
    for label, row in res["settings"].items():
      ax.scatter(row["images_per_s"], 100 * row["accuracy"], marker="o" if "AWQ" in label else "s")
      ax.annotate(label, (row["images_per_s"], 100 * row["accuracy"]), fontsize=8, xytext=(3, 3),
                  textcoords="offset points")
    ax.set(title=f"{name} runlocal, mnist5k test ({results['conditions']['backend']})", xlabel="images/s",
           ylabel="top-1 accuracy (%)")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  main()
