"""Compiles every Mosaic (TPU Pallas) kernel of effjax/kernels for real, ahead of time, for TPU slices.

    python experiments/aot/kernels.py [--topologies v4:2x2x1,v5e:2x2,v5p:2x2x1,v6e:2x2] [--update_record]

Each case is one op at a model family's shapes (per chip), forward and backward (value and gradients of a
random projection of the output), with impl="pallas" resolved as on the target chip (`dispatch.target`), so
the compiled program holds the Mosaic kernels themselves. Mosaic kernels cannot be partitioned by XLA, so
every case runs inside `shard_map` (check_vma=False) over a 1-D mesh of the slice's chips: batch-sharded
inputs, replicated weights whose gradients are summed over the chips. Prints one line per (case, chip) and writes
experiments/aot/kernels.json; `--update_record` writes the per-(kernel, chip) summary to
effjax/kernels/aot.json: "compiles for <chip> (AOT)", a record that `dispatch` never reads. Only
effjax/kernels/validated.json (hardware runs, `effjax.kernels.check`) makes `impl="auto"` take a kernel.
"""
import argparse
import datetime
import importlib.metadata
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from effjax import aot
from effjax.kernels import attention_patterns as ap, dcls, dispatch, hyperzzw
from effjax.kernels.attention import attention
from effjax.kernels.depthwise_conv import depthwise_conv
from effjax.kernels.subspace_attention import subspace_attention

HERE = pathlib.Path(__file__).parent
RECORD = pathlib.Path(dispatch.__file__).with_name("aot.json")
TOPOLOGIES = ("v4:2x2x1", "v5e:2x2", "v5p:2x2x1", "v6e:2x2")
BF16 = jnp.bfloat16


def _attn(pattern, key_mask=False):
  def f(q, k, v):
    km = jnp.ones(q.shape[:2], bool) if key_mask else None
    return attention(q, k, v, pattern=pattern, key_mask=km, impl="pallas")
  return f


def _qkv(b, length, heads, dim):
  return [((b, length, heads, dim), BF16, True)] * 3


# (family, kernel op, case, fn, [(per-chip shape, dtype, batch-sharded)]): shapes of the paper configs
CASES = [
    ("CRATE-B/16", "subspace_attention", "L=197 H=12 D=64",
     lambda w: subspace_attention(w, impl="pallas"), [((8, 197, 12, 64), BF16, True)]),
    ("CRATE-α-B/16, ViT-B/16", "attention", "full L=197 H=12 D=64", _attn(ap.full()), _qkv(8, 197, 12, 64)),
    ("FIT (224, window 7x7)", "attention", "grid_local (14,14)/(7,7) L=196 H=8 D=64",
     _attn(ap.grid_local((14, 14), (7, 7))), _qkv(8, 196, 8, 64)),
    ("FIT-LM", "attention", "causal L=1024 H=8 D=64 + key mask", _attn(ap.causal(), key_mask=True),
     _qkv(4, 1024, 8, 64)),
    ("D-Former (Synapse 64x128x128)", "attention", "grid_local (32,32,32)/(2,8,8) H=3 D=32",
     _attn(ap.grid_local((32, 32, 32), (2, 8, 8))), _qkv(1, 32768, 3, 32)),
    ("D-Former (Synapse 64x128x128)", "attention", "grid_dilated (32,32,32)/(16,4,4) H=3 D=32",
     _attn(ap.grid_dilated((32, 32, 32), (16, 4, 4))), _qkv(1, 32768, 3, 32)),
    ("ConvNeXt-T", "depthwise_conv", "7x7 at 56x56x96",
     lambda x, w: depthwise_conv(x, w, impl="pallas"), [((8, 56, 56, 96), BF16, True), ((7, 7, 96), BF16, False)]),
    ("InceptionNeXt-T", "depthwise_conv", "1x11 band at 56x56x12",
     lambda x, w: depthwise_conv(x, w, impl="pallas"), [((8, 56, 56, 12), BF16, True), ((1, 11, 12), BF16, False)]),
    ("Terminator (CIFAR)", "depthwise_conv", "9x9 local hyper-kernel at 32x32x48",
     lambda x, w: depthwise_conv(x, w, impl="pallas"), [((16, 32, 32, 48), BF16, True), ((9, 9, 48), BF16, False)]),
    ("Terminator (CIFAR)", "hyperzzw_global", "32x32 maps C=48, 3 maps",
     lambda w, z, v: hyperzzw.hyperzzw_global(w, z, v, impl="pallas")[0],
     [((32, 32, 48), BF16, False), ((16, 32, 32, 48), BF16, True), ((16, 32, 32, 144), BF16, True)]),
    ("ConvNeXt-T + DCLS", "dcls", "gauss O=96 I=1 KC=26 dks=17x17",
     lambda wt, p, s: dcls.construct_kernel(wt, p, s, (17, 17), "gauss", impl="pallas"),
     [((96, 1, 26), jnp.float32, False), ((2, 96, 1, 26), jnp.float32, False), ((2, 96, 1, 26), jnp.float32, False)]),
]


def sharded_value_and_grad(fn, specs, mesh):
  """shard_map over mesh axis "data" of (sum(fn(*args) · fixed cotangent), grads), replicated grads summed."""
  in_specs = tuple(P("data") if sharded else P() for _, _, sharded in specs)

  def per_chip(*args):
    def loss(*a):
      out = fn(*a).astype(jnp.float32)
      cot = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)  # a fixed, non-trivial projection
      return jnp.sum(out * cot)
    value, grads = jax.value_and_grad(loss, argnums=tuple(range(len(args))))(*args)
    grads = tuple(g if s else jax.lax.psum(g, "data") for g, (_, _, s) in zip(grads, specs))
    return jax.lax.psum(value, "data"), grads

  # check_vma=False: the kernels' pallas_call out_shapes carry no per-axis variance (jax 0.10.2 asks for
  # `manual_axis_type` on them under the default check_vma=True; see experiments/aot/README.md)
  return jax.shard_map(per_chip, mesh=mesh, in_specs=in_specs, out_specs=(P(), in_specs), check_vma=False)


def compile_case(case, devices):
  """Compiles one case for `devices`; returns (compiled, seconds, number of Mosaic calls in the program)."""
  _, _, _, fn, specs = case
  mesh = jax.sharding.Mesh(devices, ("data",))
  n = len(devices)
  args = [jax.ShapeDtypeStruct(((shape[0] * n,) + shape[1:]) if sharded else shape, dtype,
                               sharding=NamedSharding(mesh, P("data") if sharded else P()))
          for shape, dtype, sharded in specs]
  start = time.time()
  with dispatch.target("tpu", devices[0].device_kind):
    lowered = jax.jit(sharded_value_and_grad(fn, specs, mesh)).lower(*args)
  compiled = lowered.compile()
  return compiled, time.time() - start, compiled.as_text().count("tpu_custom_call")


def run(topologies, cases=CASES, log=print):
  """One entry per (case, topology): compiled or the first line of the compiler's error."""
  entries = []
  for topology in topologies:
    devices = aot.topology_devices(topology)
    chip = aot.parse_topology(topology)[0].name
    for case in cases:
      family, kernel, name = case[:3]
      entry = {"kernel": kernel, "family": family, "case": name, "chip": chip, "topology": topology,
               "platform": "tpu", "device_kind": devices[0].device_kind, "jax": jax.__version__}
      try:
        _, seconds, calls = compile_case(case, devices)
        entry.update(compiled=calls > 0, mosaic_calls=calls, compile_s=round(seconds, 1))
        if not calls:
          entry["error"] = "the compiled program holds no Mosaic call (the op took its XLA path)"
      except Exception as e:  # the compiler's refusal is the result
        entry.update(compiled=False, error=(str(e).strip().splitlines() or [type(e).__name__])[0][:300])
      log(f"{chip:4s} {kernel:18s} {family:32s} {name:45s} "
          + (f"compiled, {entry['mosaic_calls']} Mosaic calls, {entry['compile_s']} s" if entry["compiled"]
             else f"FAILED: {entry['error']}"))
      entries.append(entry)
  return entries


def summary(entries):
  """Per (kernel, chip): compiles for that chip (AOT) when every case of the kernel compiled."""
  out = {}
  for e in entries:
    key = (e["kernel"], e["chip"])
    s = out.setdefault(key, {"kernel": e["kernel"], "chip": e["chip"], "device_kind": e["device_kind"],
                             "platform": "tpu", "jax": e["jax"], "aot_compiles": True, "cases": []})
    s["aot_compiles"] &= e["compiled"]
    s["cases"].append(e["case"] + ("" if e["compiled"] else " (FAILED)"))
  return list(out.values())


def markdown(entries, meta):
  """One row per case, one column per chip: compile seconds and Mosaic calls, or FAILED."""
  chips = list(dict.fromkeys(e["chip"] for e in entries))
  rows = {}
  for e in entries:
    cell = f"yes ({e['mosaic_calls']} calls, {e['compile_s']:.0f} s)" if e["compiled"] else "**FAILED**"
    rows.setdefault((e["kernel"], e["family"], e["case"]), {})[e["chip"]] = cell
  lines = [f"Compiled with jax {meta['jax']}, libtpu {meta['libtpu']} on {meta['date']} (forward + backward, "
           "per-chip shapes, inside shard_map; seconds on a shared 2-core CPU).", "",
           "| kernel | family | case | " + " | ".join(f"{c} (AOT)" for c in chips) + " |",
           "|---|---|---|" + "---|" * len(chips)]
  for (kernel, family, case), cells in rows.items():
    lines.append(f"| {kernel} | {family} | {case} | " + " | ".join(cells.get(c, "") for c in chips) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
  parser.add_argument("--update_record", action="store_true", help=f"write the summary to {RECORD}")
  args = parser.parse_args(argv)
  if not aot.libtpu_available():
    sys.exit(f"effjax: error: TPU compilation needs libtpu, which is not installed: {aot.INSTALL}")
  entries = run(args.topologies.split(","))
  meta = {"jax": jax.__version__, "libtpu": importlib.metadata.version("libtpu"),
          "date": datetime.date.today().isoformat()}
  (HERE / "kernels.json").write_text(json.dumps({**meta, "entries": entries}, indent=1) + "\n")
  (HERE / "kernels.md").write_text(markdown(entries, meta))
  if args.update_record:
    RECORD.write_text(json.dumps({**meta, "note": "compiles for <chip> (AOT) only; hardware validation is "
                                  "validated.json", "kernels": summary(entries)}, indent=1) + "\n")
  failed = [e for e in entries if not e["compiled"]]
  print(f"{len(entries) - len(failed)} of {len(entries)} compiled")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
