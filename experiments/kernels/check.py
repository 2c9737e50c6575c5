"""One command that validates and times every Pallas kernel on the machine it runs on.

    python experiments/kernels/check.py --out DIR [--update_record] [--budget_s 420]

On a GPU or TPU it compiles every kernel for real (no interpret mode) and
  1. compares values and gradients with the XLA references on several shapes (ragged lengths, bf16, f32);
  2. times forward and forward+backward against the XLA path (and, for full and causal attention, against
     `jax.nn.dot_product_attention`, cuDNN on GPU) with benchmark.py's cases and timer;
  3. runs one training step (loss, gradients, SGD update) of each family (CRATE, D-Former, FIT-AR,
     Terminator) with impl="xla" and impl="pallas" and compares losses, updated parameters and step times;
and writes DIR/rows.jsonl (every row as soon as it exists), DIR/check.json (everything), DIR/check.md (the
tables) and DIR/validated.json: one entry per record case (op, pattern class, dtype, head-dim range; see
`dispatch`) with the setup (platform, device, jax, jaxlib, runtime version, kernel source hash), passed and
speedup (min XLA / Pallas fwd+bwd time over its timed cases). `--update_record` merges those entries into the
committed record `effjax/kernels/validated.json`, which is what makes `impl="auto"` pick a kernel there, and
only when everything ran and passed (correctness, timing and the family steps).
Sizes are bounded for one H200 within 8 minutes; `--budget_s` skips whatever would start later. The exit status
is 1 when anything asked for was skipped or failed (each listed on stderr and in check.md), else 0.

On CPU it runs the same code in interpret mode at tiny shapes (one timed case per op): a smoke test
(tests/experiments/test_kernel_check.py); its timings mean nothing and it never writes the committed record.
"""
import argparse
import json
import pathlib
import sys
import time

import benchmark
import jax
import jax.numpy as jnp
import numpy as np
import optax

from effjax.kernels import attention_patterns as ap, dcls, dispatch, hyperzzw
from effjax.kernels.attention import attention, attention_reference
from effjax.kernels.depthwise_conv import depthwise_conv, depthwise_conv_reference
from effjax.kernels.subspace_attention import subspace_attention, subspace_attention_reference

TOL = {"float32": 2e-3, "bfloat16": 3e-2}   # relative L2 error of values and of each gradient (TF32 / bf16 MXU)
CPU_TOL = {"float32": 1e-4, "bfloat16": 3e-2}


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _loss(f, cot_seed=99):
  """sum(f(*args) · w) for a fixed random cotangent w of f's output shape."""
  def loss(*args):
    out = f(*args).astype(jnp.float32)
    return jnp.sum(out * benchmark.normal(out.shape, jnp.float32, cot_seed))
  return loss


def _value_and_grads(f, args):
  loss = _loss(f)
  return jax.jit(lambda *a: (f(*a), jax.grad(loss, tuple(range(len(a))))(*a)))(*args)


# ---------------------------------------------------------------------------------------------- cases
# A case: (kernel, name, args, pallas fn, reference fn, record case); functions take the (differentiable) args.

def _attention_cases(big, dtype):
  b, h, d, n = (2, 4, 64, 1000) if big else (1, 2, 8, 40)
  q, k, v = (benchmark.normal((b, n, h, d), dtype, s) for s in range(3))
  km = jnp.asarray(np.random.default_rng(3).random((b, n)) > 0.1)
  grid = (20, 50) if big else (5, 8)
  window = max(n // 8, 1)
  patterns = [("full+keymask", ap.full(), km), ("causal", ap.causal(), None),
              (f"local({window})", ap.local(window), km), ("dilated(4)", ap.dilated(4), None),
              (f"grid_local{grid}", ap.grid_local(grid, (4, 4)), km)]
  return [("attention", f"{name} L={n} {dtype.__name__}", (q, k, v),
           lambda q, k, v, p=p, m=m: attention(q, k, v, pattern=p, key_mask=m, impl="pallas"),
           lambda q, k, v, p=p, m=m: attention_reference(q, k, v, pattern=p, key_mask=m),
           dispatch.case("attention", ap.pattern_class(p), dtype, d))
          for name, p, m in patterns]


def correctness_cases(big, dtypes=("float32", "bfloat16")):
  cases = []
  for dtype in (getattr(jnp, d) for d in dtypes):
    cases += _attention_cases(big, dtype)
    w = benchmark.normal((4, 197, 4, 64) if big else (1, 20, 2, 8), dtype, 4)
    cases.append(("subspace_attention", f"L={w.shape[1]} {dtype.__name__}", (w,),
                  lambda w: subspace_attention(w, impl="pallas"), subspace_attention_reference,
                  dispatch.case("subspace_attention", "full", dtype, w.shape[-1])))
    for xs, ks, dil in ([((2, 64, 64, 128), (7, 7), 2), ((1, 8, 16, 16, 128), (3, 3, 3), 1)] if big else
                        [((1, 8, 8, 4), (3, 3), 2), ((1, 4, 4, 4, 4), (3, 3, 3), 1)]):
      x, kern = benchmark.normal(xs, dtype, 5), benchmark.normal(ks + xs[-1:], dtype, 6)
      cases.append(("depthwise_conv", f"x{xs} k{ks} d{dil} {dtype.__name__}", (x, kern),
                    lambda x, k, dil=dil: depthwise_conv(x, k, dilation=dil, impl="pallas"),
                    lambda x, k, dil=dil: depthwise_conv_reference(x, k, dilation=dil),
                    dispatch.case("depthwise_conv", f"{len(ks)}d", dtype)))
    z = benchmark.normal((4, 32, 32, 64) if big else (1, 8, 8, 4), dtype, 7)
    vs = benchmark.normal(z.shape[:-1] + (3 * z.shape[-1],), dtype, 8)
    cases.append(("hyperzzw_global", f"z{z.shape} 3 maps {dtype.__name__}", (z[0], z, vs),
                  lambda w, z, v: hyperzzw.hyperzzw_global(w, z, v, impl="pallas")[0],
                  lambda w, z, v: hyperzzw.hyperzzw_global(w, z, v, impl="xla")[0],
                  dispatch.case("hyperzzw_global", "2d", dtype)))
  o, i, kc, dks = (64, 64, 26, (17, 17)) if big else (2, 2, 3, (5, 5))
  for version in ("v1", "gauss"):
    args = tuple(benchmark.normal(shape, jnp.float32, seed) * scale
                 for shape, seed, scale in (((o, i, kc), 9, 1), ((2, o, i, kc), 10, 2), ((2, o, i, kc), 11, 1)))
    cases.append(("dcls", f"{version} O={o} I={i} KC={kc} dks={dks}", args,  # f32 parameters
                  lambda *a, v=version: dcls.construct_kernel(*a, dks, v, impl="pallas"),
                  lambda *a, v=version: dcls.construct_kernel_reference(*a, dks, v),
                  dispatch.case("dcls", version, jnp.float32)))
  return cases


def family_steps(big):
  """(family, model maker impl -> flax module, inputs, labels shape) for one training step each."""
  from effjax.models import crate, dformer, fit_ar, terminator
  r = np.random.default_rng(12)
  img = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
  if big:
    return [
        ("crate", lambda i: crate.Model(num_classes=10, patch_size=4, width=384, depth=6, num_heads=6, impl=i),
         img(32, 64, 64, 3)),
        ("dformer", lambda i: dformer.Model(width=48, impl=i), img(2, 32, 96, 96, 1)),
        ("fit_ar", lambda i: fit_ar.Model(vocab_size=256, seq_len=2048, group_size=64, impl=i),
         jnp.asarray(r.integers(0, 256, (8, 2048)))),
        ("terminator", lambda i: terminator.Model(num_classes=10, branch=dict(impl=i)), img(16, 32, 32, 3)),
    ]
  tiny_branch = dict(global_hidden=4, local_hidden=4, channel_hidden=4, interact_channel_hidden=4,
                     interact_spatial_hidden=4, omega_0=30.0, local_sizes=(3, 3, 3, 3))
  return [
      ("crate", lambda i: crate.Model(num_classes=3, patch_size=4, width=8, depth=1, num_heads=2, impl=i),
       img(1, 8, 8, 1)),
      ("dformer", lambda i: dformer.Model(num_classes=2, width=4, depths=(2, 2), num_heads=(1, 1), patch_size=(1, 4, 4),
                                          group_size=(2, 2, 2), intervals=(2, 1), impl=i), img(1, 4, 16, 16, 1)),
      ("fit_ar", lambda i: fit_ar.Model(layers="(1)1(1)", latents_per_group=2, width=8, latent_width=8, num_heads=2,
                                        latent_num_heads=2, mlp_ratio=1, vocab_size=7, seq_len=8, group_size=4,
                                        impl=i), jnp.asarray(r.integers(0, 7, (1, 8)))),
      ("terminator", lambda i: terminator.Model(num_classes=3, expansions=(2,), skips=((),), global_layers=(1,),
                                                dropout=(0.0,), norm_groups=2, branch=dict(tiny_branch, impl=i)),
       img(2, 8, 8, 3)),
  ]


# ---------------------------------------------------------------------------------------------- runners

def _error(e):
  return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def check_correctness(case, tol):
  kernel, name, args, pallas, ref, key = case
  row = dict(kernel=kernel, case=name, key=key)
  try:
    (out, grads), (out_r, grads_r) = _value_and_grads(pallas, args), _value_and_grads(ref, args)
    row["value_err"] = rel(out, out_r)
    row["grad_err"] = max(rel(g, gr) for g, gr in zip(grads, grads_r))
    row["passed"] = max(row["value_err"], row["grad_err"]) <= tol[str(jnp.dtype(args[0].dtype))]
  except Exception as e:  # a kernel that does not compile is a failed check, reported, not a crash
    row.update(passed=False, error=_error(e))
  return row


def timing(big, repeats, within_budget):
  """benchmark.py's rows (ms, TFLOP/s, speed-up over XLA, or the error of an impl that failed) of its cases at
  full size (CPU: its first case of each group at tiny size)."""
  rows = []
  for group in benchmark.GROUPS.values():
    for case in group("full") if big else group("tiny")[:1]:
      if within_budget(f"time {case.op} {case.label}"):
        rows += benchmark.benchmark([case], benchmark.IMPLS, repeats)
  return rows


def _train_step(model, variables, x):
  """One SGD step on sum of squared outputs; returns (loss, new params)."""
  mutable = [c for c in variables if c != "params"]

  def loss_fn(params):
    out = model.apply({**variables, "params": params}, x, train=True, mutable=mutable,
                      rngs={"dropout": jax.random.key(1)})
    out = out[0] if mutable else out
    return sum(jnp.mean(jnp.square(o.astype(jnp.float32))) for o in jax.tree.leaves(out))

  loss, grads = jax.value_and_grad(loss_fn)(variables["params"])
  updates, _ = optax.sgd(1e-3).update(grads, optax.sgd(1e-3).init(variables["params"]))
  return loss, optax.apply_updates(variables["params"], updates)


def check_family(family, make, x, repeats):
  row = dict(family=family)
  try:
    variables = jax.jit(lambda: make("xla").init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x))()
    results = {}
    for impl in ("xla", "pallas"):
      step = jax.jit(lambda v, x, m=make(impl): _train_step(m, v, x))
      results[impl] = step(variables, x)
      row[f"{impl}_step_ms"] = benchmark.median_time(step, (variables, x), repeats) * 1e3
    (lx, px), (lp, pp) = results["xla"], results["pallas"]
    row["loss_err"] = rel(lp, lx)
    flat = lambda t: np.concatenate([np.ravel(np.asarray(a, np.float32)) for a in jax.tree.leaves(t)])
    row["params_err"] = rel(flat(pp), flat(px))
    row["pallas_vs_xla"] = row["xla_step_ms"] / row["pallas_step_ms"]
  except Exception as e:
    row["error"] = _error(e)
  return row


# ---------------------------------------------------------------------------------------------- report

def _fmt(x, spec=".3g"):
  return "—" if x is None else format(x, spec)


def markdown(result):
  lines = [f"# Kernel check: {result['platform']} ({result['device_kind']}), JAX {result['jax']}", "",
           f"interpret mode: {result['interpret']}; wall time {result['wall_s']:.0f} s; "
           f"skipped for the time budget: {result['skipped'] or 'nothing'}", "",
           "## Values and gradients vs the XLA reference", "", "| kernel | case | value err | grad err | pass |",
           "|---|---|---|---|---|"]
  for r in result["correctness"]:
    verdict = "yes" if r["passed"] else "NO " + r.get("error", "skipped (budget)" if r.get("skipped") else "")
    lines.append(f"| {r['kernel']} | {r['case']} | {_fmt(r.get('value_err'))} | {_fmt(r.get('grad_err'))} | "
                 f"{verdict} |")
  lines += ["", "## Time (benchmark.py's cases; median ms)", "", "| kernel | case | pass | impl | ms | TFLOP/s | "
            "speed-up vs xla |", "|---|---|---|---|---|---|---|"]
  for r in result["timing"]:
    if "error" in r:
      lines.append(f"| {r['op']} | {r['case']} | {r['pass_']} | {r['impl']} | error: {r['error']} | | |")
    else:
      lines.append(f"| {r['op']} | {r['case']} | {r['pass_']} | {r['impl']} | {_fmt(r['ms'])} | "
                   f"{_fmt(r['tflops'])} | {_fmt(r['speedup'], '.2f')} |")
  lines += ["", "## One training step per family (impl xla vs pallas)", "",
            "| family | xla ms | pallas ms | xla/pallas | loss rel err | params rel err |", "|---|---|---|---|---|---|"]
  for r in result["families"]:
    if "error" in r:
      lines.append(f"| {r['family']} | error: {r['error']} | | | | |")
    else:
      lines.append(f"| {r['family']} | {r['xla_step_ms']:.3g} | {r['pallas_step_ms']:.3g} | {r['pallas_vs_xla']:.2f} | "
                   f"{r['loss_err']:.2g} | {r['params_err']:.2g} |")
  lines += ["", "## Validation record", "", "| kernel | pattern | dtype | head dims | passed | speedup (min XLA/Pallas "
            "fwd+bwd) |", "|---|---|---|---|---|---|"]
  lines += [f"| {r['kernel']} | {r['pattern']} | {r['dtype']} | {r['head_dim'] or '—'} | {r['passed']} | "
            f"{r['speedup']:.2f} |" for r in result["record"]]
  lines += ["", "## Failures", ""] + [f"- {line}" for line in result["failures"] or ["none"]]
  return "\n".join(lines) + "\n"


def records(correctness, timing, checked):
  """One entry per record case (`dispatch.case`) met by a correctness or timed case: passed when every
  correctness case of it ran and passed, speedup the minimum XLA / Pallas fwd+bwd time ratio over its timed
  cases (0 when none ran, so that "auto" never takes an untimed case)."""
  keys = {json.dumps(r["key"], sort_keys=True): r["key"] for r in correctness + timing}
  out = []
  for text, key in sorted(keys.items()):
    rows = [r for r in correctness if json.dumps(r["key"], sort_keys=True) == text]
    speeds = [0.0 if "error" in r else r["speedup"] for r in timing
              if json.dumps(r["key"], sort_keys=True) == text and r["impl"] == "pallas" and r["pass_"] == "fwd+bwd"]
    out.append(dict(key, **dispatch.setup(key["kernel"]), passed=bool(rows) and all(r["passed"] for r in rows),
                    speedup=min(speeds) if speeds else 0.0, checked=checked))
  return out


def update_record(new, path=None):
  """Merges `new` entries into the committed record, replacing entries with the same case and setup."""
  path = pathlib.Path(dispatch.RECORD if path is None else path)
  keys = {dispatch.record_key(r) for r in new}
  old = json.loads(path.read_text()) if path.exists() else []
  merged = [r for r in old if dispatch.record_key(r) not in keys] + list(new)
  path.write_text(json.dumps(sorted(merged, key=dispatch.record_key), indent=1) + "\n")


def failures(result, tol):
  """Everything the check was asked to do that did not run or did not pass, one line each."""
  out = [f"skipped for the time budget: {what}" for what in result["skipped"]]
  out += [f"{r['kernel']} {r['case']}: " + (r.get("error") or f"value err {r['value_err']:.2g}, grad err "
                                            f"{r['grad_err']:.2g}")
          for r in result["correctness"] if not r["passed"] and not r.get("skipped")]
  out += [f"time {r['op']} {r['case']} {r['pass_']} {r['impl']}: {r['error']}"
          for r in result["timing"] if "error" in r]
  for r in result["families"]:
    if "error" in r:
      out.append(f"step {r['family']}: {r['error']}")
    elif max(r["loss_err"], r["params_err"]) > tol:
      out.append(f"step {r['family']}: pallas differs from xla (loss {r['loss_err']:.2g}, params "
                 f"{r['params_err']:.2g})")
  return out


def run(out_dir, *, budget_s=420.0, repeats=None, update=False, dtypes=("float32", "bfloat16"), families=None,
        timed=True):
  """Runs the whole check; returns the result dict (also written to out_dir as it goes).

  dtypes: of the correctness cases; families: names of the training steps to run (default all); timed: run the
  timing cases. Whatever would start after budget_s is not run but listed in `skipped` (its correctness cases
  as failed rows), and counts as a failure. update: merge the record into the committed one, only when
  nothing failed or was skipped.
  """
  start = time.time()
  big = dispatch.platform() in dispatch.BACKENDS
  if update and not big:
    raise ValueError("--update_record needs a GPU or TPU: interpret-mode results validate nothing")
  repeats = repeats or (10 if big else 1)
  tol = TOL if big else CPU_TOL
  skipped = []
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)

  def within_budget(what):
    if time.time() - start < budget_s:
      return True
    skipped.append(what)
    return False

  def log(row):  # every row as soon as it exists, so that a killed run still leaves its results
    with open(out / "rows.jsonl", "a") as f:
      f.write(json.dumps(row) + "\n")
    return row

  correctness = [log(check_correctness(c, tol)) if within_budget(f"{c[0]} {c[1]}") else
                 dict(kernel=c[0], case=c[1], key=c[5], passed=False, skipped=True)
                 for c in correctness_cases(big, tuple(dtypes))]
  timing_rows = [log(r) for r in timing(big, repeats, within_budget)] if timed else []
  families = [log(check_family(f, m, x, repeats)) for f, m, x in family_steps(big)
              if (families is None or f in families) and within_budget(f"step {f}")]
  checked = time.strftime("%Y-%m-%d", time.gmtime())
  result = dict(platform=dispatch.platform(), device_kind=dispatch.device_kind(), jax=jax.__version__,
                interpret=not big, wall_s=time.time() - start, skipped=skipped, correctness=correctness,
                timing=timing_rows, families=families, record=records(correctness, timing_rows, checked))
  result["failures"] = failures(result, tol["float32"])
  result["record_updated"] = bool(update and not result["failures"])
  (out / "check.json").write_text(json.dumps(result, indent=1) + "\n")
  (out / "check.md").write_text(markdown(result))
  (out / "validated.json").write_text(json.dumps(result["record"], indent=1) + "\n")
  if result["record_updated"]:
    update_record(result["record"])
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="directory for check.json, check.md and validated.json")
  parser.add_argument("--budget_s", type=float, default=420.0, help="start no new item after this many seconds")
  parser.add_argument("--repeats", type=int, default=0, help="timed runs per measurement (default 10, CPU 1)")
  parser.add_argument("--update_record", action="store_true", help="merge the entries into validated.json")
  args = parser.parse_args(argv)
  result = run(args.out, budget_s=args.budget_s, repeats=args.repeats or None, update=args.update_record)
  print(markdown(result))
  for line in result["failures"]:
    print(f"effjax: check failed: {line}", file=sys.stderr)
  if args.update_record and not result["record_updated"]:
    print("effjax: error: the record was not updated: the check did not run and pass everything", file=sys.stderr)
  return 1 if result["failures"] else 0


if __name__ == "__main__":
  raise SystemExit(main())
