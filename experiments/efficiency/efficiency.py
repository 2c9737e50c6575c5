"""One efficiency table for every classifier in effjax: cost of the standard variants, accuracy on equal terms.

  python experiments/efficiency/efficiency.py --out experiments/efficiency [--models vit,fasternet] [--tiny]

For every entry of ENTRIES (one line per model: name, standard config + resolution, runlocal config):

Cost columns, on the standard variant at its standard resolution (3 channels, random inputs):
  params         number of parameters (leaves of the "params" collection)
  GFLOPs/img     XLA cost analysis of the compiled forward pass (evaluation mode) at `--batch`, divided by it
  (table.json also holds train_gflops_per_image_xla, the same for the train step; not in the table: XLA counts
  a depthwise convolution's kernel gradient as if dense, e.g. 90x the true FLOPs at 96 channels)
  train memory   compiled memory_analysis of that train step at `--batch`: argument + temp + output bytes less
                 the aliased (donated state) bytes, i.e. the step's buffers with the donated state counted once;
                 the components and XLA's own peak estimate are in table.json
  train / infer img/s   `--batch` / median wall time of `--timed-steps` steps after compilation and one
                 warm-up step (train: the trainer's step function; infer: the task's predict, jitted)
Accuracy columns, on the runlocal variant (embedded MNIST subset, mnist5k: 4,000 train / 1,000 test images),
trained through the shared trainer (effjax.train.train_and_evaluate) with one recipe for every model (RECIPE,
`equalise`): the same optimizer, schedule, batch, augmentation and number of images seen. The runlocal
variant's params and forward GFLOPs, its measured training throughput (median over the trainer's logging
windows after the first) and the wall time of the run are reported beside the accuracy.

Writes OUT/table.md, OUT/table.json (rewritten after every model, so an interrupted run keeps its rows) and
OUT/pareto.png (accuracy against the runlocal variant's forward GFLOPs and training throughput, Pareto front
highlighted; report.py; the measurements are in measure.py). A failing model gets its error in its row; the
others go on and the exit status is 1.
`--tiny` runs the whole code path in seconds (the tests use it): the runlocal configs stand in for the standard
variants, and there are few training and timed steps.
"""
import argparse
import collections
import os
import sys
import time
import traceback

import measure
import report as report_lib

from effjax import config as config_lib, runtime

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

Entry = collections.namedtuple("Entry", "name label variant standard resolution runlocal")

# One line per classifier: name (for --models), label, standard variant, its config and input side, runlocal config.
ENTRIES = (
    Entry("vit", "ViT", "Ti/16", "configs/vit.py", 224, "configs/vit.py:runlocal"),
    Entry("dilated_vit", "Dilated ViT", "CIFAR", "configs/dformer_dilated_vit.py", 32,
          "configs/dformer_dilated_vit.py:runlocal"),
    Entry("crate", "CRATE", "B/16", "configs/crate.py", 224, "configs/crate.py:runlocal"),
    Entry("crate_alpha", "CRATE-α", "B/16", "configs/crate_alpha.py:stage=finetune", 224,
          "configs/crate_alpha.py:runlocal"),
    Entry("fit", "FIT", "classifier", "configs/fit.py", 224, "configs/fit.py:runlocal"),
    Entry("terminator", "Terminator", "2D CIFAR", "configs/terminator.py", 32, "configs/terminator.py:runlocal"),
    Entry("convnext", "ConvNeXt", "T", "configs/convnext.py", 224, "configs/convnext.py:runlocal"),
    Entry("convnext_dcls", "ConvNeXt-DCLS", "T", "configs/convnext.py:dcls=True", 224,
          "configs/convnext.py:runlocal,dcls=True"),
    Entry("ecaresnet", "ECA-ResNet", "50d", "configs/resnet.py", 224, "configs/resnet.py:runlocal"),
    Entry("resnetrs", "ResNet-RS", "50", "configs/resnet.py:variant=resnetrs50", 224,
          "configs/resnet.py:runlocal,gate=se"),
    Entry("scse_resnet", "scSE-ResNet", "50d", "configs/resnet.py:gate=scse", 224,
          "configs/resnet.py:runlocal,gate=scse"),
    Entry("inception_next", "InceptionNeXt", "T", "configs/inception_next.py", 224,
          "configs/inception_next.py:runlocal"),
    Entry("fasternet", "FasterNet", "T0", "configs/fasternet.py", 224, "configs/fasternet.py:runlocal"),
    Entry("halonet", "HaloNet", "26t", "configs/halonet.py", 256, "configs/halonet.py:runlocal"),
    Entry("tvconv", "TVConv MobileNetV2", "x1_0", "configs/tvconv.py", 96, "configs/tvconv.py:runlocal"),
)  # P3D classifies clips [B, T, H, W, C], not images: it is not in this table

# The one training recipe of the accuracy columns (and the optimizer of the cost columns' train step).
RECIPE = dict(batch_size=128, budget_images=128_000, optimizer="adamw", lr=2e-3, weight_decay=1e-4, b1=0.9,
              b2=0.999, schedule="warmup_cosine", warmup_fraction=0.1, end_lr_factor=0.0, grad_clip_norm=1.0,
              augmentation=("random_crop(pad=2)",), label_smoothing=0.0)
TINY = dict(batch=8, timed_steps=1, batch_size=16, budget_images=16 * 4)


def equalise(config, batch_size, steps, warmup_steps):
  """`config` with RECIPE's optimizer, schedule, augmentation and loss settings, `steps` steps of `batch_size`.

  What stays the model's own: its architecture (incl. dropout / drop-path), its task's loss terms beyond
  cross-entropy (e.g. the Terminator's slow loss and norm penalty) and its input geometry (the ops of
  data.pp_eval, e.g. a resize to 32 px); training preprocessing is RECIPE's augmentation followed by them.
  Evaluation: accuracy only, once at the end; one checkpoint at the end; no progress bar.
  """
  c = config.copy_and_resolve_references()
  c.batch_size, c.total_steps, c.total_epochs, c.grad_accum_steps = batch_size, steps, -1.0, 1
  o = c.optimizer
  o.name, o.lr, o.weight_decay, o.b1, o.b2 = (RECIPE[k] for k in ("optimizer", "lr", "weight_decay", "b1", "b2"))
  o.schedule, o.end_lr_factor, o.grad_clip_norm = RECIPE["schedule"], RECIPE["end_lr_factor"], RECIPE["grad_clip_norm"]
  o.warmup_steps, o.warmup_epochs, o.grad_noise_eta, o.decay_mask = warmup_steps, 0.0, 0.0, "no_bias_norm"
  for key, value in (("label_smoothing", RECIPE["label_smoothing"]), ("mixup_alpha", 0.0), ("cutmix_alpha", 0.0)):
    if key in c.task:
      c.task[key] = value
  c.data.pp_train = tuple(RECIPE["augmentation"]) + tuple(c.data.pp_eval)
  c.compute_dtype, c.ema_decay, c.seed = "float32", 0.0, 0
  c.evaluators, c.eval_every_steps = ("classification",), -1
  c.checkpoint_every_steps, c.log_every_steps, c.progress_bar = steps, max(1, min(50, steps // 4)), False
  return c


def load(spec):
  """The ConfigDict of "configs/<file>.py[:arg]" (a path relative to the repository)."""
  return config_lib.load_config_file(os.path.join(REPO, spec))


def run_entry(entry, settings, log):
  """The row of one entry; a failing phase records its error in row["error"] and skips what depends on it."""
  row = dict(entry._asdict())
  phase = "config"
  try:
    runlocal = load(entry.runlocal)
    standard = runlocal if settings["tiny"] else load(entry.standard)
    runlocal = equalise(runlocal, settings["batch_size"], settings["steps"], settings["warmup_steps"])
    standard = equalise(standard, settings["batch_size"], settings["steps"], settings["warmup_steps"])
    phase = "runlocal input"
    local_shape = measure.runlocal_input_shape(runlocal)
    if settings["tiny"]:
      row["resolution"] = local_shape[1]
    shape = (settings["batch"],) + ((local_shape[1:]) if settings["tiny"] else (entry.resolution, entry.resolution, 3))
    phase = "standard costs"
    start = time.perf_counter()
    row["cost"] = measure.costs(standard, shape, settings["timed_steps"])
    c = row["cost"]
    log(f"  standard: {c['params'] / 1e6:.2f} M params, {c['gflops_per_image']:.3f} GFLOPs/img, train memory "
        f"{c['train_memory_bytes'] / 2**20:.0f} MiB, {c.get('train_img_s', 0):.1f} train / "
        f"{c.get('infer_img_s', 0):.1f} infer img/s ({time.perf_counter() - start:.0f} s)")
    phase = "runlocal costs"
    row["runlocal_cost"] = (dict(c) if settings["tiny"]  # the same config and shape: nothing new to measure
                            else measure.costs(runlocal, (settings["batch"],) + local_shape[1:], 0, train_step=False))
    phase = "training"
    start = time.perf_counter()
    row["accuracy"] = measure.train_accuracy(runlocal)
    a = row["accuracy"]
    log(f"  runlocal: {row['runlocal_cost']['params'] / 1e3:.1f} K params, {a['steps']} steps: accuracy "
        f"{100 * a['accuracy']:.2f}%, {a['train_img_s']:.0f} img/s ({time.perf_counter() - start:.0f} s)")
  except Exception as e:  # one model's failure must not lose the others' rows
    row["error"] = f"{phase}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    log(f"  FAILED in {phase}: {type(e).__name__}: {e}")
    traceback.print_exc(file=sys.stderr)
  return row


# ---------------------------------------------------------------- command line

def parse_models(text):
  """The entries named in "a,b" (all when empty); raises ValueError naming the unknown ones and the valid ones."""
  if not text:
    return list(ENTRIES)
  names = [n.strip() for n in text.split(",") if n.strip()]
  by_name = {e.name: e for e in ENTRIES}
  unknown = [n for n in names if n not in by_name]
  if unknown:
    raise ValueError(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(by_name)}")
  return [by_name[n] for n in names]


def main(argv=None):
  parser = argparse.ArgumentParser(prog="experiments/efficiency/efficiency.py", description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="directory for table.md, table.json and pareto.png")
  parser.add_argument("--models", default="", help=f"comma-separated subset of: {', '.join(e.name for e in ENTRIES)}")
  parser.add_argument("--tiny", action="store_true", help="seconds-long run of the whole code path (tests)")
  parser.add_argument("--batch", type=int, help="batch of the cost columns (default 32; tiny 8)")
  parser.add_argument("--timed-steps", type=int, help="timed steps per throughput figure (default 5; tiny 1)")
  parser.add_argument("--budget-images", type=int, help=f"training images per model (default "
                      f"{RECIPE['budget_images']:,}; tiny {TINY['budget_images']})")
  args = parser.parse_args(argv)
  try:
    entries = parse_models(args.models)
  except ValueError as e:
    sys.stderr.write(f"efficiency: error: {e}\n")
    return 2
  tiny = args.tiny
  settings = {"tiny": tiny, "batch": args.batch or (TINY["batch"] if tiny else 32),
              "timed_steps": args.timed_steps if args.timed_steps is not None else (TINY["timed_steps"] if tiny else 5),
              "batch_size": TINY["batch_size"] if tiny else RECIPE["batch_size"],
              "budget_images": args.budget_images or (TINY["budget_images"] if tiny else RECIPE["budget_images"]),
              "recipe": RECIPE}
  settings["steps"] = settings["budget_images"] // settings["batch_size"]
  settings["warmup_steps"] = int(RECIPE["warmup_fraction"] * settings["steps"])
  if settings["budget_images"] < settings["batch_size"]:
    sys.stderr.write(f"efficiency: error: --budget-images {settings['budget_images']} is below one batch "
                     f"({settings['batch_size']})\n")
    return 2

  def log(line):
    print(line, flush=True)
  args_text = " ".join(sys.argv[1:] if argv is None else argv)
  report = {"command": f"python experiments/efficiency/efficiency.py {args_text}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "settings": settings,
            "machine": measure.machine(), "rows": [], "wall_s": 0.0}
  start = time.perf_counter()
  for i, entry in enumerate(entries):
    log(f"[{i + 1}/{len(entries)}] {entry.name} ({entry.label})")
    report["rows"].append(run_entry(entry, settings, log))
    report["machine"]["load_average_after"] = list(os.getloadavg())
    report["wall_s"] = time.perf_counter() - start
    report_lib.write(report, args.out)
  try:
    report_lib.plot(report, os.path.join(args.out, "pareto.png"))
  except Exception as e:  # the tables are written already
    log(f"plot failed: {type(e).__name__}: {e}")
    report["plot_error"] = str(e)
  failed = [r["name"] for r in report["rows"] if "error" in r]
  log(f"wrote {args.out}/table.md, table.json, pareto.png in {report['wall_s']:.0f} s"
      + (f"; FAILED: {', '.join(failed)}" if failed else ""))
  return 1 if failed or "plot_error" in report else 0


if __name__ == "__main__":
  runtime.reexec_with_allocator()  # as `python -m effjax.main` does (EFFJAX_RUNTIME=off to skip)
  sys.exit(main())
