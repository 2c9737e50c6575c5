"""Ahead-of-time compilation of a config's training step for a TPU slice, on a CPU machine (libtpu).

    python -m effjax.aot --config configs/crate.py:variant=B --topology v5e:4x4 [--out DIR] [--mfu 0.4]
        [--train_examples N] [--config.a.b=value ...]

The trainer's own step (`train.build_train_step`: mesh from config.mesh, sharding rules, donated state,
remat, the compile options of the mesh's platform, i.e. none of the CPU's oneDNN options) is built on the
compile-only devices of `jax.experimental.topologies.get_topology_desc(topology)` and compiled by the real
TPU compiler. Kernel dispatch resolves as it would on that chip (`dispatch.target`): `auto` takes a Pallas
kernel only where the record validates it on hardware for that device kind. Printed and written to
DIR/<name>.json and a markdown row DIR/<name>.md:

  * compile success (or one line saying why not, exit status 1);
  * HBM per chip: the compiled program's arguments + outputs - aliased (donated) buffers + temporaries + code,
    against the chip's capacity; when it does not fit, one line names the knob that would make it fit
    (FSDP for state, remat or a smaller per-chip batch for activations) and the exit status is 1;
  * FLOPs per step and chip: XLA's cost analysis of the compiled step; where the step holds Mosaic (Pallas)
    calls, which cost analysis counts as zero, the step is compiled again with every op on its XLA path and
    that count is reported (`flops_source`);
  * roofline and estimate: t_roof = max(FLOPs / peak, bytes accessed / HBM bandwidth) per step; the estimate
    is max(FLOPs / (MFU · peak), t_roof) at the stated MFU (default 0.4), times the run's steps (config
    total_steps, or total_epochs x training examples / batch) and the chip count in chip-hours. f32 matmuls
    count against the bf16 peak: XLA:TPU's default precision runs them as one bf16 MXU pass.

Needs libtpu (`pip install -e '.[tpu]'`); no TPU is used. The example batch comes from the config alone
(`example_batch`), never from reading the dataset.
"""
import argparse
import ast
import dataclasses
import importlib.util
import json
import math
import os
import re
import sys

INSTALL = "pip install -e '.[tpu]'  (or: pip install 'libtpu==0.0.42.*')"


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures of one TPU generation."""
  name: str
  peak_bf16: float     # FLOP/s
  hbm_bytes: float
  hbm_bw: float        # bytes/s
  source: str


# Google Cloud TPU documentation, system architecture tables (peak compute per chip (bf16), HBM capacity and
# bandwidth). v4 states GiB; v5e, v5p and v6e state GB, read here as 10^9 bytes (the smaller reading).
CHIPS = {
    "v4": Chip("v4", 275e12, 32 * 2**30, 1200e9, "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("v5e", 197e12, 16e9, 819e9, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("v5p", 459e12, 95e9, 2765e9, "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("v6e", 918e12, 32e9, 1638e9, "https://cloud.google.com/tpu/docs/v6e"),
}

# Training examples and raw example shape of the tfds datasets the paper configs name, for when the dataset is
# not prepared on this machine (then there is no dataset_info.json to read, and tfds' builder code needs
# TensorFlow). None: the images vary in size (the configs' crop / resize ops fix it).
TFDS_DATASETS = {
    "imagenet2012": ((None, None, 3), 1_281_167),
    "cifar10": ((32, 32, 3), 50_000),
    "cifar100": ((32, 32, 3), 50_000),
    "mnist": ((28, 28, 1), 60_000),
    "imagenet21k": ((None, None, 3), None),  # size not recorded here: pass --train_examples for chip-hours
}
RAW_SIDE = 512  # side given to a variable-size image before the config's eval ops crop / resize it


class AotError(Exception):
  """A one-line reason the command cannot give its figures (exit status 1)."""


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def parse_topology(name: str):
  """"v5e:4x4" -> (Chip, (4, 4)); raises AotError naming the valid forms."""
  family, _, shape = name.partition(":")
  if family not in CHIPS or not re.fullmatch(r"\d+(x\d+){1,2}", shape):
    raise AotError(f"unknown topology {name!r}; expected <chip>:<AxB[xC]> with chip one of {list(CHIPS)}, "
                   "e.g. v5e:4x4 or v5p:4x4x8")
  return CHIPS[family], tuple(int(s) for s in shape.split("x"))


def topology_devices(name: str):
  """Compile-only devices of a slice (one per chip; v4 as megacore chips)."""
  chip, dims = parse_topology(name)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # a single compile-only "host"
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")    # no TPU is opened: other processes may load libtpu
  from jax.experimental import topologies
  kwargs = {"chip_config_name": "megacore"} if chip.name == "v4" else {}
  if math.prod(dims) < 4:  # fewer chips than one host's default 2x2x1: the slice is one (partial) host
    kwargs["chips_per_host_bounds"] = dims + (1,) * (3 - len(dims))
  devices = topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs).devices
  if len(devices) != math.prod(dims):
    raise AotError(f"topology {name} gave {len(devices)} devices, expected one per chip ({math.prod(dims)})")
  return devices


# ------------------------------------------------------------------------------------------- roofline

def roofline(chip: Chip, flops: float, bytes_accessed: float, mfu: float) -> dict:
  """Per-step times (s) of one chip: compute-bound, memory-bound, roofline, and the estimate at `mfu`."""
  if not 0 < mfu <= 1:
    raise AotError(f"--mfu must be in (0, 1], got {mfu}")
  t_compute, t_memory = flops / chip.peak_bf16, bytes_accessed / chip.hbm_bw
  t_roof = max(t_compute, t_memory)
  return {"t_compute_s": t_compute, "t_memory_s": t_memory, "t_roofline_s": t_roof,
          "t_step_s": max(flops / (mfu * chip.peak_bf16), t_roof)}


def run_estimate(step_time_s: float, steps: int | None, chips: int) -> dict:
  """Wall-clock hours and chip-hours of `steps` steps (None when the run length is unknown)."""
  if steps is None:
    return {"hours": None, "chip_hours": None}
  hours = step_time_s * steps / 3600
  return {"hours": hours, "chip_hours": hours * chips}


def hbm_needed(memory) -> int:
  """Bytes per chip of a compiled step's memory analysis (donated inputs are counted once)."""
  return int(memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
             + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)


def fit_hint(config, state_bytes: float, temp_bytes: float, capacity: float, chips: int) -> str:
  """The knob that would make the step fit: FSDP when the train state alone is most of the memory, else
  remat (when the model has it and it is off) or a smaller per-chip batch through gradient accumulation."""
  if state_bytes >= temp_bytes or state_bytes > 0.8 * capacity:
    fsdp = any(s == "fsdp" for _, s in config.sharding_rules)
    if not fsdp and chips > 1:
      return ("shard the train state over the chips: --config.sharding_rules=\"(('.*', 'fsdp'),)\" "
              f"(state is {_gib(state_bytes)} per chip replicated)")
    return f"use more chips (a larger slice): the train state alone is {_gib(state_bytes)} per chip"
  remat = config.model.get("remat")
  if remat is not None and remat == "none":
    return "rematerialise activations: --config.model.remat=full (or dots)"
  per_chip = config.batch_size // config.grad_accum_steps // chips
  return (f"a smaller per-chip batch: --config.grad_accum_steps={2 * config.grad_accum_steps} "
          f"({per_chip} -> {per_chip // 2} examples per chip and micro-batch)")


def _gib(b):
  return f"{b / 2**30:.2f} GiB" if b >= 2**29 else f"{b / 2**20:.1f} MiB"


# ------------------------------------------------------------------------------------- example batch

def example_batch(config, num_devices):
  """(ShapeDtypeStructs of one evaluation batch of `num_devices` examples as the trainer sees it, the number
  of training examples or None): a raw example of the data source's shapes, through config.data.pp_eval."""
  import jax
  import numpy as np

  from effjax.data import ops, pipeline
  name, _, arg = config.data.source.partition(":")
  if name == "tfds":
    raw, num_train = _tfds_example(arg, config.data.train_split)
  elif name == "nifti":
    raw, num_train = _nifti_example(arg, config.data.pp_train), None
  else:  # embedded and generated sources: in memory, cheap to open
    raw = pipeline.make_source(config.data, config.data.eval_split)[0]
    num_train = len(pipeline.make_source(config.data, config.data.train_split))
  example = pipeline._Deterministic([fn for _, fn, _ in (ops.parse(s) for s in config.data.pp_eval)])(raw)
  example["mask"] = np.float32(1)
  spec = {k: jax.ShapeDtypeStruct((num_devices,) + np.shape(v), np.asarray(v).dtype) for k, v in example.items()}
  return spec, num_train


def _tfds_example(arg, train_split):
  import numpy as np
  dataset = arg.partition(":")[0]
  info = _prepared_tfds_info(arg)
  if info is not None:
    features = info.features
    shape = tuple(features["image"].shape)
    num_train = info.splits[train_split].num_examples if train_split in info.splits else None
  elif dataset in TFDS_DATASETS:
    shape, num_train = TFDS_DATASETS[dataset]
  else:
    raise AotError(f"tfds dataset {dataset!r} is not prepared here and its shapes are not in effjax.aot."
                   f"TFDS_DATASETS {sorted(TFDS_DATASETS)}; prepare it or set TFDS_DATA_DIR")
  shape = tuple(RAW_SIDE if s is None else s for s in shape)
  return {"image": np.zeros(shape, np.uint8), "label": np.int32(0)}, num_train


def _prepared_tfds_info(arg):
  """The DatasetInfo of a dataset prepared in the TFDS data dir (metadata only), or None."""
  data_dir = os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
  if not os.path.isdir(os.path.join(data_dir, arg.partition(":")[0])):
    return None
  import tensorflow_datasets as tfds
  try:
    return tfds.core.read_only_builder.builder_from_files(arg, data_dir=data_dir).info
  except Exception:  # not prepared there (tfds raises several types)
    return None


def _nifti_example(arg, pp_train):
  """A NIfTI source's example: image float32 [D, H, W, 1] and label int32 [D, H, W] at the source's crop, or with
  crop=full (whole volumes) at the training patch of pp_train's patch3d op."""
  import inspect

  import numpy as np

  from effjax.data import ops
  from effjax.data.sources import nifti
  crop = str(nifti.options(arg).crop)
  patches = [fn for name, fn, _ in map(ops.parse, pp_train) if name == "patch3d"]
  if crop == "full" and patches:
    size = patches[0].keywords.get("size", inspect.signature(patches[0].func).parameters["size"].default)
    crop = "x".join(str(int(s)) for s in size)
  if not re.fullmatch(r"\d+x\d+x\d+", crop):
    raise AotError(f"nifti source {arg!r} needs crop=DxHxW (or crop=full with a patch3d op in data.pp_train) to "
                   "give its shapes without reading volumes")
  dims = tuple(int(s) for s in crop.split("x"))
  return {"image": np.zeros(dims + (1,), np.float32), "label": np.zeros(dims, np.int32)}


# --------------------------------------------------------------------------------------------- compile

def compile_config(config, topology: str, *, name: str = "", mfu: float = 0.4,
                   train_examples: int | None = None) -> dict:
  """Compiles `config`'s train step for `topology`; returns the figures (see the module docstring).

  name: how the figures name the config (e.g. its file spec). Raises AotError with one line when the config
  cannot be compiled or does not fit the chip's HBM; the figures gathered so far are in its `result` attribute.
  """
  import jax
  import ml_collections

  from effjax import sharding, train
  from effjax.kernels import dispatch
  chip, dims = parse_topology(topology)
  devices = topology_devices(topology)
  config = ml_collections.ConfigDict(config)
  config.lock()
  mesh = sharding.make_mesh(config.mesh, devices=list(devices))
  train.validate(config, mesh.size)
  batch, num_train = example_batch(config, mesh.size)
  num_train = train_examples or num_train
  if config.total_steps > 0:
    steps = int(config.total_steps)
  elif num_train:
    steps = train.total_steps(config, num_train)
  else:
    steps = None
  steps_per_epoch = max(num_train // config.batch_size, 1) if num_train else 1
  result = {"config": name or config.model_name, "model": config.model_name, "topology": topology,
            "chips": mesh.size, "chip": chip.name, "device_kind": devices[0].device_kind,
            "mesh": {k: int(v) for k, v in mesh.shape.items()}, "batch_size": config.batch_size,
            "per_chip_batch": config.batch_size / mesh.size, "grad_accum_steps": config.grad_accum_steps,
            "compute_dtype": config.compute_dtype, "steps": steps, "train_examples": num_train,
            "input": {k: list(v.shape[1:]) for k, v in batch.items() if k != "mask"}, "jax": jax.__version__}

  def lower(target_platform):
    built = train.build_train_step(config, mesh, batch, steps or 1, steps_per_epoch)
    with dispatch.target(target_platform, devices[0].device_kind):
      return built, built.step.lower(built.abstract_state, built.batch_spec)

  built, lowered = lower("tpu")
  state_bytes = sum(s.size * s.dtype.itemsize / _shards(s.sharding, s.shape)
                    for s in jax.tree.leaves(built.abstract_state))
  try:
    compiled = lowered.compile()
  except Exception as e:  # the TPU compiler's own refusal (e.g. over HBM) is the answer, in one line
    message = (str(e).strip().splitlines() or [type(e).__name__])[0]
    result.update(compiled=False, error=message, state_bytes_per_chip=int(state_bytes))
    if "RESOURCE_EXHAUSTED" in message and "HBM" in message:
      hint = fit_hint(config, state_bytes, float("inf"), chip.hbm_bytes, mesh.size)  # temporaries overflowed
      raise _with(AotError(f"{result['config']} does not fit {topology}: {message}; to fit: {hint}"),
                  result) from None
    raise _with(AotError(f"TPU compilation of {result['config']} for {topology} failed: {message}"),
                result) from None
  memory = compiled.memory_analysis()
  cost = _cost(compiled)
  flops, source = cost.get("flops", 0.0), "xla cost analysis"
  mosaic = "tpu_custom_call" in compiled.as_text()
  if mosaic:  # cost analysis counts a Mosaic call as 0 FLOPs: count the same step on its XLA paths
    flops, source = _cost(lower("cpu")[1].compile()).get("flops", 0.0), "xla cost analysis of the XLA-path step"
  needed = hbm_needed(memory)
  result.update(
      compiled=True, mosaic_kernels=mosaic, hbm_needed_bytes=needed, hbm_capacity_bytes=chip.hbm_bytes,
      fits=needed <= chip.hbm_bytes, state_bytes_per_chip=int(state_bytes),
      memory={k: int(getattr(memory, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                                  "alias_size_in_bytes", "temp_size_in_bytes",
                                                  "generated_code_size_in_bytes")},
      flops_per_step_per_chip=flops, flops_source=source, bytes_accessed_per_chip=cost.get("bytes accessed", 0.0),
      mfu=mfu, chip_figures=dataclasses.asdict(chip))
  result.update(roofline(chip, flops, result["bytes_accessed_per_chip"], mfu))
  result.update(run_estimate(result["t_step_s"], steps, mesh.size))
  if not result["fits"]:
    hint = fit_hint(config, state_bytes, memory.temp_size_in_bytes, chip.hbm_bytes, mesh.size)
    raise _with(AotError(f"{result['config']} does not fit {topology}: needs "
                         f"{_gib(needed)} of HBM per chip, the chip has {_gib(chip.hbm_bytes)}; to fit: {hint}"),
                result)
  return result


def _shards(named_sharding, shape):
  """How many pieces `named_sharding` cuts an array of `shape` into (1 when replicated)."""
  return math.prod(shape) / max(math.prod(named_sharding.shard_shape(shape)), 1) if shape else 1


def _cost(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return dict(cost or {})


def _with(error, result):
  error.result = result
  return error


# ------------------------------------------------------------------------------------------------ output

def summary(r: dict) -> str:
  """The printed figures of one compiled config."""
  lines = [f"compiled {r['config']} for {r['topology']} ({r['chips']} x {r['device_kind']}, "
           f"mesh {r['mesh']}, batch {r['batch_size']} = {r['per_chip_batch']:g} per chip, {r['compute_dtype']})",
           f"HBM per chip: {_gib(r['hbm_needed_bytes'])} needed of {_gib(r['hbm_capacity_bytes'])} "
           f"({'fits' if r['fits'] else 'DOES NOT FIT'}; train state {_gib(r['state_bytes_per_chip'])}, "
           f"temporaries {_gib(r['memory']['temp_size_in_bytes'])})",
           f"FLOPs per step per chip: {r['flops_per_step_per_chip']:.4g} ({r['flops_source']}); "
           f"HBM bytes accessed: {r['bytes_accessed_per_chip']:.4g}",
           f"roofline per step: {r['t_roofline_s'] * 1e3:.2f} ms (compute {r['t_compute_s'] * 1e3:.2f} ms at "
           f"{r['chip_figures']['peak_bf16'] / 1e12:g} TFLOP/s bf16, memory {r['t_memory_s'] * 1e3:.2f} ms at "
           f"{r['chip_figures']['hbm_bw'] / 1e9:g} GB/s; {r['chip_figures']['source']})",
           f"estimate at MFU {r['mfu']:g}: {r['t_step_s'] * 1e3:.2f} ms per step"]
  if r["steps"] is None:
    lines.append("full run: unknown length (total_epochs with an unknown dataset size; pass --train_examples)")
  else:
    lines.append(f"full run: {r['steps']:,} steps = {r['hours']:.3g} h on {r['chips']} chips = "
                 f"{r['chip_hours']:,.4g} chip-hours")
  return "\n".join(lines)


MD_HEADER = ("| config | topology | per-chip batch | fits | HBM / chip (GiB) | GFLOP / step / chip | est. step (ms) "
             "| steps | chip-hours |\n|---|---|---|---|---|---|---|---|---|")


def markdown_row(r: dict) -> str:
  if not r.get("compiled"):
    return (f"| `{r['config']}` | {r['topology']} | {r['per_chip_batch']:g} | no: {r.get('error', '')[:80]} "
            "| | | | | |")
  hours = "n/a" if r["chip_hours"] is None else f"{r['chip_hours']:,.0f}"
  steps = "n/a" if r["steps"] is None else f"{r['steps']:,}"
  return (f"| `{r['config']}` | {r['topology']} | {r['per_chip_batch']:g} | {'yes' if r['fits'] else '**no**'} "
          f"| {r['hbm_needed_bytes'] / 2**30:.2f} / {r['hbm_capacity_bytes'] / 2**30:.1f} "
          f"| {r['flops_per_step_per_chip'] / 1e9:,.0f} | {r['t_step_s'] * 1e3:.1f} | {steps} | {hours} |")


def file_name(config_spec: str, topology: str) -> str:
  """"configs/crate.py:variant=B", "v5e:4x4" -> "crate.py_variant=B_v5e_4x4"."""
  path, _, arg = config_spec.partition(":")
  return re.sub(r"[^A-Za-z0-9=._-]+", "_", f"{os.path.basename(path)}:{arg}@{topology}")


def write(result: dict, out: str) -> str:
  """Writes OUT/<name>.json and OUT/<name>.md (the table header and this config's row); returns the name."""
  os.makedirs(out, exist_ok=True)
  name = file_name(result["config"], result["topology"])
  with open(os.path.join(out, name + ".json"), "w") as f:
    json.dump(result, f, indent=1, default=str)
  with open(os.path.join(out, name + ".md"), "w") as f:
    f.write(MD_HEADER + "\n" + markdown_row(result) + "\n")
  return name


def load_config(spec: str, overrides):
  """The config of "file.py[:arg]" with `--config.a.b=value` overrides applied (unknown keys: ConfigError)."""
  from effjax.config import ConfigError, load_config_file
  from effjax.config_overrides import closest_key
  config = load_config_file(spec)
  for item in overrides:
    if not item.startswith("--config.") or "=" not in item:
      raise ConfigError(f"unexpected argument {item!r}; overrides look like --config.a.b=value")
    key, value = item[len("--config."):].split("=", 1)
    hint = closest_key(config, key)
    if hint:
      raise ConfigError(f"unknown config key 'config.{key}'; {hint}")
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    node, parts = config, key.split(".")
    for part in parts[:-1]:
      node = node[part]
    node[parts[-1]] = value
  return config


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m effjax.aot", description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True, help="configs/<file>.py[:key=value,...]")
  parser.add_argument("--topology", required=True, help="TPU slice, e.g. v5e:4x4, v4:2x2x2, v5p:4x4x8, v6e:2x4")
  parser.add_argument("--out", default="", help="directory for <name>.json and <name>.md")
  parser.add_argument("--mfu", type=float, default=0.4, help="model FLOP utilisation of the estimate")
  parser.add_argument("--train_examples", type=int, default=0, help="training-set size when the data source "
                      "cannot say (for total_epochs)")
  args, overrides = parser.parse_known_args(argv)
  try:
    parse_topology(args.topology)
    if not libtpu_available():
      raise AotError(f"TPU compilation needs libtpu, which is not installed: {INSTALL}")
    config = load_config(args.config, overrides)
    result = compile_config(config, args.topology, name=args.config, mfu=args.mfu,
                            train_examples=args.train_examples or None)
  except (AotError, ValueError) as e:  # ConfigError and a data source's "not available here" are ValueErrors
    result = getattr(e, "result", None)
    if result is not None and args.out:
      write(result, args.out)
    sys.stderr.write(f"effjax: error: {e}\n")
    return 1
  print(summary(result))
  if args.out:
    print(f"wrote {os.path.join(args.out, write(result, args.out))}.json/.md")
  return 0


if __name__ == "__main__":
  sys.exit(main())
