"""Accuracy vs images/s of token reduction (ToMe, DiffRate; effjax/layers/token_reduction.py) on a trained model.

  JAX_PLATFORMS=cpu python experiments/inference/tome.py --workdir runs/vit --rates 0,2,4,8 \
      --json experiments/inference/tome_vit.json
  python experiments/inference/tome.py --variant vit:B/16 --rates 0,8,16 --batch 16   # random weights, 224², speed only

--workdir: a run of effjax.main (its config.json and newest checkpoint); accuracy is measured on the config's eval
split. --variant family:variant instead builds a standard model with random weights (no accuracy). Every rate r
is one point per method (r = 0: the model without reduction): "tome" merges r tokens per layer (ToMe's constant
schedule); "diffrate" uses DiffRate's operators at the same token counts (each layer prunes ⌊r/2⌋ tokens by class
attention, then merges the rest of r): hand-set rates, not rates searched by DiffRate's objective; --searched adds
the kept counts that DiffRate's search (configs/diffrate.py) learned, one point per search run.
Images/s: one jitted forward per point on a fixed eval batch, the points taking turns in --rounds rounds in this
process (the median per point), so every point sees the same machine state. Runs unchanged on an accelerator
(the default JAX backend).
"""
import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from effjax import checkpoint, components
from effjax.data import pipeline
from effjax.layers import token_reduction


def reduction(method: str, r: int, depth: int, tokens: int) -> dict:
  """config.model.reduction of one point: none at r = 0, ToMe with constant r, or DiffRate kept counts removing
  the same tokens."""
  if r == 0:
    return dict(method="none")
  if method == "tome":
    return dict(method="tome", r=r)
  prune, merge, n = [], [], tokens
  for _ in range(depth):
    step = min(r, (n - 1) // 2)  # ToMe's cap: at most half of the non-class tokens
    prune.append(n - step // 2)
    merge.append(n - step)
    n -= step
  return dict(method="diffrate", prune_keep=prune, merge_keep=merge)


def layer_mflops(red: dict, depth: int, tokens: int, width: int) -> float:
  """DiffRate's FLOPs count of the layers (token_reduction.flops: 4NC² + 2N²C + 8NC² per layer) in MFLOPs."""
  if red["method"] == "none":
    kept = [(tokens, tokens)] * depth
  elif red["method"] == "tome":
    kept, n = [], tokens
    for r in token_reduction.tome_schedule(depth, red["r"]):
      n -= min(r, (n - 1) // 2)
      kept.append((n, n))
  else:
    kept = list(zip(red["prune_keep"], red["merge_keep"]))
  return float(token_reduction.flops([(float(p), float(m)) for p, m in kept], tokens, width)) / 1e6


def load_run(workdir):
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  params = checkpoint.restore_params(os.path.join(workdir, "checkpoints"))
  return config, params


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", help="trained run (config.json + checkpoints/)")
  ap.add_argument("--variant", help="family:variant with random weights, e.g. vit:B/16 or crate:B/16 (speed only)")
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--methods", default="tome,diffrate", help="tome and/or diffrate, comma-separated")
  ap.add_argument("--rates", default="0,2,4,8")
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--reps", type=int, default=3, help="forwards per timing")
  ap.add_argument("--searched", default="", help="comma-separated runs of configs/diffrate.py (DiffRate's search on "
                  "this --workdir's model): one point each at its learned kept counts")
  ap.add_argument("--json", help="write the points here")
  args = ap.parse_args(argv)
  if bool(args.workdir) == bool(args.variant):
    sys.exit("effjax: error: give exactly one of --workdir and --variant")
  load_start = os.getloadavg()
  rates = [int(r) for r in args.rates.split(",")]
  methods = args.methods.split(",")
  if not set(methods) <= {"tome", "diffrate"}:
    sys.exit(f"effjax: error: --methods must name tome and/or diffrate, got {args.methods!r}")

  if args.workdir:
    config, params = load_run(args.workdir)
    family, model_kw = config["model_name"], dict(config["model"])
    data = ml_collections.ConfigDict(config["data"])
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    batches = list(pipeline.eval_batches(data, args.batch, sharding))
    timing_images = batches[0]["image"]
  else:
    family, variant = args.variant.split(":")
    model_kw = dict(variant=variant, num_classes=1000)
    timing_images = jax.random.normal(jax.random.PRNGKey(0), (args.batch, args.image_size, args.image_size, 3))
    batches, params = [], None
  module = components.load("models", family)
  model_kw.pop("reduction", None)
  base = module.Model(**model_kw)
  if params is None:
    params = jax.jit(base.init)(jax.random.PRNGKey(0), timing_images[:1])["params"]
  depth = base.depth
  patch = base.patch_size if isinstance(base.patch_size, int) else base.patch_size[0]
  n_tokens = (timing_images.shape[1] // patch) * (timing_images.shape[2] // patch) + 1

  todo = [("none", 0, None)] * (0 in rates) + [(m, r, reduction(m, r, depth, n_tokens)) for m in methods
                                                 for r in rates if r]
  for run in filter(None, args.searched.split(",")):
    search_config, search_params = load_run(run)
    prune, merge = token_reduction.learned_keeps(search_params, n_tokens - 1)
    todo.append((f"diffrate-searched:{search_config['task']['target']}", 0,
                 dict(method="diffrate", prune_keep=prune, merge_keep=merge)))
  points = []
  for method, r, red in todo:
    red = red or reduction(method, r, depth, n_tokens)
    model = module.Model(**model_kw, reduction=red)
    fwd = jax.jit(lambda p, x, model=model: model.apply({"params": p}, x))
    correct = count = 0
    for b in batches:
      logits = fwd(params, b["image"])
      correct += float(((jnp.argmax(logits, -1) == b["label"]) * b["mask"]).sum())
      count += float(b["mask"].sum())
    jax.block_until_ready(fwd(params, timing_images))
    points.append(dict(method=method, r=r, reduction=red, mflops=layer_mflops(red, depth, n_tokens, base.width),
                       accuracy=correct / count if count else None, times=[],
                       fwd=fwd))
  for _ in range(args.rounds):  # the points take turns
    for pt in points:
      start = time.perf_counter()
      for _ in range(args.reps):
        out = pt["fwd"](params, timing_images)
      jax.block_until_ready(out)
      pt["times"].append((time.perf_counter() - start) / args.reps)
  rows = []
  for pt in points:
    sec = float(np.median(pt.pop("times")))
    pt.pop("fwd")
    rows.append({**pt, "images_per_s": args.batch / sec, "batch": args.batch})
    acc = "" if pt["accuracy"] is None else f"  accuracy {pt['accuracy']:.4f}"
    print(f"{pt['method']:24s} r={pt['r']:3d}{acc}  {args.batch / sec:9.1f} images/s", flush=True)
  result = dict(source=args.workdir or args.variant, device=str(jax.devices()[0]),
                machine=platform.processor() or platform.machine(), load=[load_start, os.getloadavg()],
                rounds=args.rounds, reps=args.reps, image_shape=list(timing_images.shape[1:]), tokens=n_tokens,
                depth=depth, command="python " + " ".join(sys.argv), points=rows)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
