"""Memory and time of one training step (forward + backward + AdamW update) of FIT vs ViT as the
number of tokens grows, on the CPU.

Each measurement runs in a fresh subprocess on one CPU device with batch 1 and images of
side √L·16 pixels (patch 16, RGB), so L = (side/16)² tokens. FIT groups the patches into windows of
w×w patches, w ∝ L^{1/6}, i.e. tokens per group n = w² ∝ L^{1/3} (the FIT paper's optimum), with a
constant number of latents per group. Per configuration we record

* compiled: XLA's `compiled.memory_analysis()` of the jitted step — arguments + outputs + temporaries
  − aliased (donated) bytes: the peak the step needs, known without running it;
* rss: the process's peak resident memory (`ru_maxrss`) after running the step (when it is run);
* step_s / step_cpu_s: median wall time / process CPU time (all threads) of the timed steps
  (compilation is done ahead of time, not timed). The machine is shared, so wall time is inflated by
  other jobs; CPU time is the more stable measure of work and is what the exponents are fitted to.

  python experiments/fit/benchmark.py curve   # FIT vs ViT, small width, 4K -> 160K tokens
  python experiments/fit/benchmark.py goal    # FIT, width 512, 13 layers, 160K tokens (one step)
  python experiments/fit/benchmark.py report  # results/*.jsonl -> results/table.md with fitted exponents

Results are appended to experiments/fit/results/<suite>.jsonl.
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
PATCH = 16

# (patch-grid side, FIT window side): n = w² tokens per group ≈ 4·L^{1/3}
GRID = [(64, 8), (120, 10), (192, 12), (280, 14), (400, 16)]
VIT_TIMED_SIDES = (32, 48, 64)  # ViT is timed only up to 4K tokens (its step grows as L²)

CURVE = dict(width=128, heads=4, latents=8, layers="(1)2(1)", vit_depth=4, mlp_ratio=4)
GOAL = dict(width=512, heads=8, latents=8, layers="(1)5(1)5(1)", mlp_ratio=4, chunk_groups=25,
            max_attention_logits=2**25)


def build(kind, side, window, cfg, remat):
  """(model, image shape) for one configuration."""
  from effjax.models import fit, vit
  if kind == "fit":
    model = fit.Model(num_classes=10, layers=cfg["layers"], patch_size=PATCH, group_size=window,
                      latents_per_group=cfg["latents"], width=cfg["width"], latent_width=cfg["width"],
                      num_heads=cfg["heads"], latent_num_heads=cfg["heads"], mlp_ratio=cfg["mlp_ratio"],
                      remat=remat, chunk_groups=cfg.get("chunk_groups", 0),
                      max_attention_logits=cfg.get("max_attention_logits", 0))
  else:
    model = vit.Model(num_classes=10, patch_size=PATCH, width=cfg["width"], depth=cfg["vit_depth"],
                      num_heads=cfg["heads"], mlp_dim=cfg["mlp_ratio"] * cfg["width"], pool="gap", remat=remat)
  return model, (1, side * PATCH, side * PATCH, 3)


def measure(kind, side, window, cfg, remat, run_steps):
  """One configuration in this process -> dict of measurements."""
  import jax
  import jax.numpy as jnp
  import optax

  model, shape = build(kind, side, window, cfg, remat)
  tx = optax.adamw(1e-4)

  def init(rng):
    params = model.init(rng, jnp.zeros(shape))["params"]
    # FIT's classifier head starts at zero, which would make the first step's encoder gradient exactly
    # zero; a small random head makes every step a real update (the compiled work is the same).
    head = params["head"]["kernel"]
    params["head"]["kernel"] = 0.02 * jax.random.normal(jax.random.fold_in(rng, 1), head.shape, head.dtype)
    return params, tx.init(params)

  def step(state, images, labels):
    params, opt = state

    def loss_fn(p):
      logits = model.apply({"params": p}, images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    encoder_grads = {k: v for k, v in grads.items() if k != "head"}
    return (optax.apply_updates(params, updates), opt), (loss, optax.tree.norm(encoder_grads))

  state_shape = jax.eval_shape(init, jax.random.PRNGKey(0))
  images_spec = jax.ShapeDtypeStruct(shape, jnp.float32)
  labels_spec = jax.ShapeDtypeStruct((1,), jnp.int32)
  t0 = time.time()
  compiled = jax.jit(step, donate_argnums=0).lower(state_shape, images_spec, labels_spec).compile()
  mem = compiled.memory_analysis()
  peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
  params = sum(x.size for x in jax.tree.leaves(state_shape[0]))
  out = dict(kind=kind, tokens=side * side, side_px=side * PATCH, window=window if kind == "fit" else None,
             tokens_per_group=window * window if kind == "fit" else side * side, remat=remat,
             params=int(params), compile_s=round(time.time() - t0, 1), compiled_peak_gb=peak / 2**30,
             temp_gb=mem.temp_size_in_bytes / 2**30, **{k: v for k, v in cfg.items()})
  if run_steps:
    state = jax.jit(init)(jax.random.PRNGKey(0))
    images = jax.random.uniform(jax.random.PRNGKey(1), shape)
    labels = jnp.zeros((1,), jnp.int32)
    times, cpu_times = [], []
    for _ in range(run_steps):
      t, c = time.time(), time.process_time()
      state, (loss, grad_norm) = compiled(state, images, labels)
      loss.block_until_ready()
      times.append(time.time() - t)
      cpu_times.append(time.process_time() - c)
    out.update(step_s=statistics.median(times), step_cpu_s=statistics.median(cpu_times), steps_timed=run_steps,
               loss=float(loss), grad_norm=float(grad_norm),
               rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30)
  return out


def run_child(suite, kind, side, window, remat, run_steps):
  """Measures in a fresh single-device subprocess and appends the JSON line to results/<suite>.jsonl."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "PYTHONPATH": os.path.dirname(os.path.dirname(HERE))}
  args = [sys.executable, __file__, "one", suite, kind, str(side), str(window), remat, str(run_steps)]
  proc = subprocess.run(args, env=env, capture_output=True, text=True)
  if proc.returncode != 0:
    print(proc.stderr[-2000:], file=sys.stderr)
    return None
  line = proc.stdout.strip().splitlines()[-1]
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, f"{suite}.jsonl"), "a") as f:
    f.write(line + "\n")
  print(line, flush=True)
  return json.loads(line)


def curve():
  """FIT timed at every size of GRID; ViT timed at VIT_TIMED_SIDES and compiled (memory only) on GRID."""
  for side, window in GRID:
    run_child("curve", "fit", side, window, "full", 2)
  for side in VIT_TIMED_SIDES:
    run_child("curve", "vit", side, 0, "full", 2)
  for side, window in GRID[1:]:
    run_child("curve", "vit", side, window, "full", 0)


def goal():
  """FIT with width 512 and 13 layers at 160K tokens: one real training step.

  Local layers, READ and WRITE run 25 groups at a time and attention is computed in chunks of at most
  2^25 logits (both exact; see FIT.chunk_groups / max_attention_logits): XLA:CPU does not fuse
  attention or reuse the temporaries of a whole layer over 160K tokens, so without this the step needs
  ~65 GB (compiled) instead of ~9 GB.
  """
  run_child("goal", "fit", 400, 16, "full", 2)


def fit_exponent(points):
  """Least-squares slope of log y against log x."""
  import numpy as np
  x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
  return float(np.polyfit(x, y, 1)[0])


def report():
  rows, lines = [], []
  for suite in ("curve", "goal"):
    path = os.path.join(RESULTS, f"{suite}.jsonl")
    if os.path.exists(path):
      rows += [dict(json.loads(l), suite=suite) for l in open(path) if l.strip()]
  lines.append("| suite | model | tokens L | image px | tokens/group | layers | width | params | compiled peak GB | "
               "peak RSS GB | step wall s | step CPU s |")
  lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    layers = r["layers"] if r["kind"] == "fit" else f"{r.get('vit_depth')} (plain)"
    fmt = lambda k, f: f.format(r[k]) if r.get(k) is not None else "—"
    lines.append(f"| {r['suite']} | {r['kind'].upper()} | {r['tokens']:,} | {r['side_px']}² | "
                 f"{r['tokens_per_group']:,} | {layers} | {r['width']} | {r['params']:,} | "
                 f"{r['compiled_peak_gb']:.2f} | {fmt('rss_gb', '{:.2f}')} | "
                 f"{fmt('step_s', '{:.2f}')} | {fmt('step_cpu_s', '{:.2f}')} |")
  lines.append("")
  for kind in ("fit", "vit"):
    curve_rows = [r for r in rows if r["suite"] == "curve" and r["kind"] == kind]
    timed = [(r["tokens"], r["step_cpu_s"]) for r in curve_rows if r.get("step_cpu_s")]
    mem = [(r["tokens"], r["compiled_peak_gb"]) for r in curve_rows]
    if len(timed) >= 2:
      lines.append(f"- {kind.upper()}: step CPU time ∝ L^{fit_exponent(timed):.2f} "
                   f"(fit over L = {', '.join(f'{t:,}' for t, _ in timed)})")
    if len(mem) >= 2:
      lines.append(f"- {kind.upper()}: compiled peak memory ∝ L^{fit_exponent(mem):.2f} "
                   f"(fit over L = {', '.join(f'{t:,}' for t, _ in mem)})")
  text = "\n".join(lines) + "\n"
  with open(os.path.join(RESULTS, "table.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  command = sys.argv[1] if len(sys.argv) > 1 else "report"
  if command == "one":
    suite, kind, side, window, remat, run_steps = sys.argv[2:8]
    cfg = GOAL if suite == "goal" else CURVE
    print(json.dumps(measure(kind, int(side), int(window), cfg, remat, int(run_steps))))
  elif command in ("curve", "goal", "report"):
    {"curve": curve, "goal": goal, "report": report}[command]()
  else:
    raise SystemExit(f"unknown command {command!r}; expected curve, goal or report")
