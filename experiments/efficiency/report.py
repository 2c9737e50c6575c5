"""The efficiency table's outputs: table.md, table.json and the accuracy-vs-cost Pareto plot (see efficiency.py)."""
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

TIMM_RESULTS = "timm_idle.jsonl"  # benchmark_timm.py --json on an idle machine, beside table.md


def _fmt(value, spec, scale=1.0):
  return "—" if value is None else format(value * scale, spec)


def _speed(c, kind):
  """"median img/s (fastest–slowest step)" from the cost entry's per-step times, or the bare median."""
  times = c.get(f"{kind}_step_s")
  if not times or len(times) < 2:
    return _fmt(c.get(f"{kind}_img_s"), ".1f")
  return f"{c[f'{kind}_img_s']:.1f} ({c['batch'] / max(times):.1f}–{c['batch'] / min(times):.1f})"


def _timm_ratios(path):
  """{effjax entry name: (train, infer) timm time / effjax time} from benchmark_timm.py's JSONL (fastest runs)."""
  if not os.path.exists(path):
    return {}
  runs = [json.loads(line) for line in open(path) if line.strip()]
  best = {}
  for r in runs:
    for kind in ("train", "infer"):
      key = (r["model"], r["side"], kind)
      best[key] = min(best.get(key, float("inf")), r[kind][0])
  return {m: tuple(best[m, "timm", k] / best[m, "effjax", k] for k in ("train", "infer"))
          for m, _, _ in best if (m, "timm", "train") in best and (m, "effjax", "train") in best}


def _get(row, *keys):
  for k in keys:
    row = row.get(k) if isinstance(row, dict) else None
  return row


def markdown(report, timm=None):
  """table.md; timm: _timm_ratios of benchmark_timm.py's results (its own run), shown beside the cost columns."""
  s, m, timm = report["settings"], report["machine"], timm or {}
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
      f"{s['timed_steps']} steps after one warm-up step (in brackets: from the slowest and the fastest step). "
      "vs timm: timm's step time ÷ effjax's, train / infer, measured side by side by benchmark_timm.py in its own "
      "run (TIMM.md; > 1: effjax faster).", "",
      "| model | variant | config | input | params (M) | GFLOPs/img | train memory (MiB) | train img/s | "
      "infer img/s | vs timm |",
      "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
  for r in report["rows"]:
    c = r.get("cost") or {}
    shape = "×".join(str(x) for x in c["input_shape"]) if c else f"{r['resolution']}²"
    variant, config = ("runlocal", r["runlocal"]) if s["tiny"] else (r["variant"], r["standard"])
    lines.append(f"| {r['label']} | {variant} | `{config}` | {shape} | "
                 f"{_fmt(c.get('params'), '.2f', 1e-6)} | {_fmt(c.get('gflops_per_image'), '.3f')} | "
                 f"{_fmt(c.get('train_memory_bytes'), ',.0f', 2**-20)} | {_speed(c, 'train')} | "
                 f"{_speed(c, 'infer')} | "
                 + (f"{timm[r['name']][0]:.2f}× / {timm[r['name']][1]:.2f}×" if r.get("name") in timm else "—") + " |")
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


# label offsets (points) tried in turn until the label overlaps no other label or point
_OFFSETS = [(5, 4, "left"), (5, -11, "left"), (-5, 4, "right"), (-5, -11, "right"), (5, 14, "left"),
            (5, -21, "left"), (-5, 14, "right"), (-5, -21, "right"), (5, 24, "left"), (-5, 24, "right"),
            (5, -31, "left"), (-5, -31, "right")]


def _place_labels(fig, ax, xs, ys, labels):
  """Annotates each point with the first offset of _OFFSETS whose text box is clear of the other labels and of the
  points (the last offset if none is); a thin line joins a moved label to its point."""
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  points = [ax.transData.transform((x, y)) for x, y in zip(xs, ys)]
  taken = []
  for (x, y), label in sorted(zip(zip(xs, ys), labels), key=lambda p: -p[0][1]):
    for i, (dx, dy, ha) in enumerate(_OFFSETS):
      text = ax.annotate(label, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=8,
                         arrowprops=dict(arrowstyle="-", color="0.6", lw=0.5) if i > 3 else None)
      box = text.get_window_extent(renderer).expanded(1.05, 1.15)
      clear = not any(box.overlaps(b) for b in taken) and not any(box.contains(*p) for p in points)
      inside = ax.get_window_extent(renderer).contains(box.x0, box.y0) and \
          ax.get_window_extent(renderer).contains(box.x1, box.y1)
      if (clear and inside) or i == len(_OFFSETS) - 1:
        taken.append(box)
        break
      text.remove()


def plot(report, path):
  """Accuracy against the runlocal variant's forward GFLOPs/img and training img/s; Pareto front in red."""
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
      ax.legend(loc="lower left")
    ax.set_xscale("log")
    if xs:  # room for the points and their labels
      ax.set_xlim(min(xs) / 1.5, max(xs) * 2.0)
      ax.set_ylim(min(ys) - 3.0, max(ys) + 3.0)
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    _place_labels(fig, ax, xs, ys, [r["label"] for r in rows])
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
    f.write(markdown(report, _timm_ratios(os.path.join(out, TIMM_RESULTS))))
