"""One efficiency table for every classifier in effjax: cost of the standard variants, accuracy on equal terms.

  python -m effjax.efficiency --out experiments/efficiency [--models vit,fasternet] [--tiny]

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
highlighted). A failing model gets its error in its row; the others go on and the exit status is 1.
`--tiny` runs the whole code path in seconds (the tests use it): the runlocal configs stand in for the standard
variants, and there are few training and timed steps.
"""
import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
  from effjax import config as config_lib
  return config_lib.load_config_file(os.path.join(REPO, spec))


def count_params(params):
  import jax
  import numpy as np
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def _fill(abstract):
  """Concrete values for abstract variables, without compiling the model's initialiser (seconds per model): the
  cost figures depend on shapes only. Params ~ N(0, 0.02²), other collections (e.g. batch statistics) ones."""
  import jax
  import numpy as np
  rng = np.random.default_rng(0)

  def fill(path, s):
    if not np.issubdtype(s.dtype, np.floating):
      return np.zeros(s.shape, s.dtype)
    if getattr(path[0], "key", None) == "params":
      return (0.02 * rng.standard_normal(s.shape)).astype(s.dtype)
    return np.ones(s.shape, s.dtype)
  return jax.tree.map(jax.numpy.asarray, jax.tree_util.tree_map_with_path(fill, abstract))


def _median_time(fn, steps):
  """Median wall seconds of `steps` calls of fn() (each waits for its result) after one warm-up call."""
  import jax
  import numpy as np
  jax.block_until_ready(fn())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def measure_costs(config, input_shape, timed_steps, train_step=True):
  """Cost of `config`'s model on random inputs of `input_shape` [B, H, W, C] (float32, one device).

  Returns params and forward GFLOPs per image; with train_step also the train step's GFLOPs per image (as XLA
  counts them: see the module docstring) and
  compiled memory (bytes) and, when timed_steps > 0, training and inference images/s (median of timed_steps
  steps after one warm-up step).
  """
  import jax
  import jax.numpy as jnp

  from effjax import components, optim, runtime, train
  model = components.load("models", config.model_name).Model(**config.model)
  task = components.load("tasks", config.task_name).Task(config)
  batch_size = input_shape[0]
  rng = jax.random.PRNGKey(0)
  batch = {"image": jax.random.normal(rng, input_shape, jnp.float32),
           "label": jax.random.randint(jax.random.PRNGKey(1), (batch_size,), 0, task.num_classes)}
  variables = dict(_fill(jax.eval_shape(lambda r: task.init_variables(model, r, batch), rng)))
  params = variables.pop("params")
  out = {"params": count_params(params), "batch": batch_size, "input_shape": list(input_shape[1:])}

  predict = jax.jit(lambda v, b: task.predict(model, v, b))
  full = {"params": params, **variables}
  start = time.perf_counter()
  predict_c = predict.lower(full, batch).compile()
  out["gflops_per_image"] = _flops(predict_c) / batch_size / 1e9
  if not train_step:
    return out

  tx, schedule = optim.make_optimizer(config.optimizer, 1000, 100)
  step = train.make_train_step(config, model, task, tx, schedule, train.COMPUTE_DTYPES[config.compute_dtype])
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
           "model_state": variables, "ema_params": {}, "rng": jax.random.PRNGKey(3)}
  step_c = jax.jit(step, donate_argnums=0, compiler_options=runtime.compiler_options()).lower(state, batch).compile()
  out["compile_s"] = time.perf_counter() - start
  out["train_gflops_per_image_xla"] = _flops(step_c) / batch_size / 1e9
  m = step_c.memory_analysis()
  out["train_memory"] = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "temp", "output", "alias")}
  out["train_memory_bytes"] = (out["train_memory"]["argument"] + out["train_memory"]["temp"]
                               + out["train_memory"]["output"] - out["train_memory"]["alias"])
  if timed_steps > 0:  # inference first: the train steps donate (delete) the params they share with `full`
    out["infer_img_s"] = batch_size / _median_time(lambda: predict_c(full, batch), timed_steps)
    holder = [state]

    def train_once():
      holder[0], metrics = step_c(holder[0], batch)
      return metrics["loss"]
    out["train_img_s"] = batch_size / _median_time(train_once, timed_steps)
  return out


def runlocal_input_shape(config):
  """[B, H, W, C] of the evaluation images of `config`'s data (B = the number of devices)."""
  import jax

  from effjax import sharding
  from effjax.data import pipeline
  mesh = sharding.make_mesh(config.mesh)
  batch = next(pipeline.eval_batches(config.data, mesh.size, sharding.batch_sharding(mesh)))
  return tuple(jax.tree.map(lambda x: x.shape, batch)["image"])


def train_accuracy(config):
  """Trains `config` through the shared trainer in a fresh workdir; accuracy, wall time and throughput."""
  import numpy as np

  from effjax import metrics as metrics_lib, train
  with tempfile.TemporaryDirectory(prefix="effjax_efficiency_") as workdir:
    start = time.perf_counter()
    result = train.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - start
    rows = [r for r in metrics_lib.read_jsonl(workdir) if "train/examples_per_s" in r]
  speeds = [r["train/examples_per_s"] for r in rows[1:]] or [r["train/examples_per_s"] for r in rows]
  return {"accuracy": float(result["eval/accuracy"]), "steps": int(result["step"]), "train_wall_s": wall,
          "train_img_s": float(np.median(speeds)), "final_train_loss": float(result.get("train/loss", float("nan")))}


def machine():
  """CPU, cores, load, allocator, XLA_FLAGS, the train step's compiler options and versions of this process."""
  import jax

  from effjax import runtime
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
  except OSError:
    pass
  return {"cpu": cpu, "cpu_count": os.cpu_count(),
          "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
          "platform": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
          "devices": f"{jax.device_count()} × {jax.devices()[0].platform}", "allocator": runtime.allocator(),
          "LD_PRELOAD": os.environ.get("LD_PRELOAD", ""), "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
          "train_step_compiler_options": runtime.compiler_options() or {},
          "load_average_before": list(os.getloadavg())}


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
    local_shape = runlocal_input_shape(runlocal)
    if settings["tiny"]:
      row["resolution"] = local_shape[1]
    shape = (settings["batch"],) + ((local_shape[1:]) if settings["tiny"] else (entry.resolution, entry.resolution, 3))
    phase = "standard costs"
    start = time.perf_counter()
    row["cost"] = measure_costs(standard, shape, settings["timed_steps"])
    c = row["cost"]
    log(f"  standard: {c['params'] / 1e6:.2f} M params, {c['gflops_per_image']:.3f} GFLOPs/img, train memory "
        f"{c['train_memory_bytes'] / 2**20:.0f} MiB, {c.get('train_img_s', 0):.1f} train / "
        f"{c.get('infer_img_s', 0):.1f} infer img/s ({time.perf_counter() - start:.0f} s)")
    phase = "runlocal costs"
    row["runlocal_cost"] = (dict(c) if settings["tiny"]  # the same config and shape: nothing new to measure
                            else measure_costs(runlocal, (settings["batch"],) + local_shape[1:], 0, train_step=False))
    phase = "training"
    start = time.perf_counter()
    row["accuracy"] = train_accuracy(runlocal)
    a = row["accuracy"]
    log(f"  runlocal: {row['runlocal_cost']['params'] / 1e3:.1f} K params, {a['steps']} steps: accuracy "
        f"{100 * a['accuracy']:.2f}%, {a['train_img_s']:.0f} img/s ({time.perf_counter() - start:.0f} s)")
  except Exception as e:  # one model's failure must not lose the others' rows
    row["error"] = f"{phase}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    log(f"  FAILED in {phase}: {type(e).__name__}: {e}")
    traceback.print_exc(file=sys.stderr)
  return row


# ---------------------------------------------------------------- output

def _fmt(value, spec, scale=1.0):
  return "—" if value is None else format(value * scale, spec)


def _get(row, *keys):
  for k in keys:
    row = row.get(k) if isinstance(row, dict) else None
  return row


def markdown(report):
  s, m = report["settings"], report["machine"]
  budget = f"{s['budget_images']:,} images ({s['steps']} steps of {s['batch_size']})"
  lines = [
      "# effjax efficiency table", "",
      f"Command: `{report['command']}`  ",
      f"Date: {report['date']}; wall time {report['wall_s']:.0f} s.  ",
      f"Machine: {m['cpu']}, {m['cpu_count']} cores ({m['usable_cores']} usable), {m['devices']}; jax {m['jax']}, "
      f"python {m['python']}; allocator {m['allocator']} (LD_PRELOAD={m['LD_PRELOAD'] or 'unset'}); "
      f"XLA_FLAGS={m['XLA_FLAGS'] or 'unset'}; train-step compiler options "
      f"{', '.join(f'{k}={v}' for k, v in m.get('train_step_compiler_options', {}).items()) or 'none'}; "
      f"load average (1/5/15 min) before "
      f"{'/'.join(f'{x:.1f}' for x in m['load_average_before'])}, after "
      f"{'/'.join(f'{x:.1f}' for x in m.get('load_average_after', []))}.", "",
      "**The cost columns use each model's standard variant at its standard resolution; the accuracy columns use "
      "its small `runlocal` variant on the embedded MNIST subset.**" + (
          " (`--tiny`: here the runlocal variants stand in for the standard ones.)" if s["tiny"] else ""), "",
      f"## Cost of the standard variants (float32, batch {s['batch']}, one CPU process)", "",
      f"GFLOPs/img: XLA cost analysis of the compiled forward at batch {s['batch']}, per image (a multiply-add "
      "counts 2). Train memory: compiled memory_analysis of the train step, argument + temp + output − aliased "
      "(donated) bytes. img/s: batch ÷ median wall time of "
      f"{s['timed_steps']} steps after one warm-up step.", "",
      "| model | variant | config | input | params (M) | GFLOPs/img | train memory (MiB) | train img/s | "
      "infer img/s |",
      "|---|---|---|---|---:|---:|---:|---:|---:|"]
  for r in report["rows"]:
    c = r.get("cost") or {}
    shape = "×".join(str(x) for x in c["input_shape"]) if c else f"{r['resolution']}²"
    variant, config = ("runlocal", r["runlocal"]) if s["tiny"] else (r["variant"], r["standard"])
    lines.append(f"| {r['label']} | {variant} | `{config}` | {shape} | "
                 f"{_fmt(c.get('params'), '.2f', 1e-6)} | {_fmt(c.get('gflops_per_image'), '.3f')} | "
                 f"{_fmt(c.get('train_memory_bytes'), ',.0f', 2**-20)} | {_fmt(c.get('train_img_s'), '.1f')} | "
                 f"{_fmt(c.get('infer_img_s'), '.1f')} |")
  lines += [
      "", "## Accuracy after an equal training budget (runlocal variants, mnist5k)", "",
      f"Every model: {budget} through `effjax.train.train_and_evaluate`, {s['recipe']['optimizer']} "
      f"(lr {s['recipe']['lr']}, weight decay {s['recipe']['weight_decay']}, b1/b2 {s['recipe']['b1']}/"
      f"{s['recipe']['b2']}), {s['recipe']['schedule']} with {s['warmup_steps']} warm-up steps to "
      f"{s['recipe']['end_lr_factor']}× the peak, gradient clipping at {s['recipe']['grad_clip_norm']}, "
      f"label smoothing {s['recipe']['label_smoothing']}, no Mixup/CutMix/EMA, augmentation "
      f"{', '.join(s['recipe']['augmentation'])} before the model's own evaluation preprocessing; seed 0. "
      "Test accuracy on the 1,000 test images. Train img/s: the trainer's median over its logging windows "
      "(after the first); wall: the whole run including compilation and the evaluation.", "",
      "| model | runlocal config | input | params (K) | GFLOPs/img | train img/s | wall (s) | test accuracy (%) |",
      "|---|---|---|---:|---:|---:|---:|---:|"]
  for r in report["rows"]:
    c, a = r.get("runlocal_cost") or {}, r.get("accuracy") or {}
    shape = "×".join(str(x) for x in c["input_shape"]) if c else "—"
    lines.append(f"| {r['label']} | `{r['runlocal']}` | {shape} | {_fmt(c.get('params'), ',.1f', 1e-3)} | "
                 f"{_fmt(c.get('gflops_per_image'), '.4f')} | {_fmt(a.get('train_img_s'), '.0f')} | "
                 f"{_fmt(a.get('train_wall_s'), '.0f')} | {_fmt(a.get('accuracy'), '.2f', 100)} |")
  errors = [r for r in report["rows"] if "error" in r]
  if errors:
    lines += ["", "## Errors", ""] + [f"- {r['label']}: {r['error']}" for r in errors]
  return "\n".join(lines) + "\n"


def pareto_front(points):
  """Indices of the points (cost, accuracy, higher_cost_is_better) no other point beats on both axes."""
  front = []
  for i, (cost, acc, better_high) in enumerate(points):
    sign = -1 if better_high else 1
    if not any((sign * c2 <= sign * cost and a2 >= acc) and (sign * c2 < sign * cost or a2 > acc)
               for j, (c2, a2, _) in enumerate(points) if j != i):
      front.append(i)
  return front


def plot(report, path):
  """Accuracy against the runlocal variant's forward GFLOPs/img and training img/s; Pareto front in red."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = [r for r in report["rows"] if _get(r, "accuracy", "accuracy") is not None
          and _get(r, "runlocal_cost", "gflops_per_image") is not None]
  fig, axes = plt.subplots(1, 2, figsize=(13, 5))
  for ax, (xlabel, key, better_high) in zip(axes, (
      ("forward GFLOPs per image (runlocal variant, log)", ("runlocal_cost", "gflops_per_image"), False),
      ("training images/s on CPU (runlocal variant, log)", ("accuracy", "train_img_s"), True))):
    xs = [_get(r, *key) for r in rows]
    ys = [100 * r["accuracy"]["accuracy"] for r in rows]
    front = set(pareto_front([(x, y, better_high) for x, y in zip(xs, ys)]))
    ax.scatter(xs, ys, c=["tab:red" if i in front else "tab:gray" for i in range(len(rows))], zorder=3)
    line = sorted((xs[i], ys[i]) for i in front)
    if line:
      ax.plot(*zip(*line), color="tab:red", lw=1, zorder=2, label="Pareto front")
      ax.legend(loc="lower right")
    for x, y, r in zip(xs, ys, rows):
      ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    if xs:  # room for the points and their labels
      ax.set_xlim(min(xs) / 1.5, max(xs) * 2.0)
      ax.set_ylim(min(ys) - 2.0, max(ys) + 2.0)
    ax.set_xlabel(xlabel + (" → better" if better_high else " ← better"))
    ax.set_ylabel("mnist5k test accuracy (%)")
    ax.grid(alpha=0.3)
  s = report["settings"]
  fig.suptitle(f"Accuracy after {s['budget_images']:,} training images (equal recipe) vs cost; runlocal variants")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(report, out):
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "table.json"), "w") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(markdown(report))


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
  parser = argparse.ArgumentParser(prog="python -m effjax.efficiency", description=__doc__.splitlines()[0])
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
    sys.stderr.write(f"effjax.efficiency: error: {e}\n")
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
    sys.stderr.write(f"effjax.efficiency: error: --budget-images {settings['budget_images']} is below one batch "
                     f"({settings['batch_size']})\n")
    return 2

  def log(line):
    print(line, flush=True)
  report = {"command": "python -m effjax.efficiency " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "settings": settings,
            "machine": machine(), "rows": [], "wall_s": 0.0}
  start = time.perf_counter()
  for i, entry in enumerate(entries):
    log(f"[{i + 1}/{len(entries)}] {entry.name} ({entry.label})")
    report["rows"].append(run_entry(entry, settings, log))
    report["machine"]["load_average_after"] = list(os.getloadavg())
    report["wall_s"] = time.perf_counter() - start
    write(report, args.out)
  try:
    plot(report, os.path.join(args.out, "pareto.png"))
  except Exception as e:  # the tables are written already
    log(f"plot failed: {type(e).__name__}: {e}")
    report["plot_error"] = str(e)
  failed = [r["name"] for r in report["rows"] if "error" in r]
  log(f"wrote {args.out}/table.md, table.json, pareto.png in {report['wall_s']:.0f} s"
      + (f"; FAILED: {', '.join(failed)}" if failed else ""))
  return 1 if failed or "plot_error" in report else 0


if __name__ == "__main__":
  from effjax import runtime
  runtime.reexec_with_allocator()  # as `python -m effjax.main` does (EFFJAX_RUNTIME=off to skip)
  sys.exit(main())
