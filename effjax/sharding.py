"""Device mesh from the config and regex sharding rules for parameters.

config.mesh = (("data", -1),) gives a 1-D mesh over all devices; (("data", 2), ("fsdp", 4)) a 2-D one.
config.sharding_rules = ((regex, strategy), ...) maps each parameter path ("block0/attn/query/kernel")
to the first matching strategy:
  "replicate"  every device holds the whole array (pure data parallelism);
  "fsdp"       the largest dimension divisible by the mesh's size along the fsdp axes is split over
               them (ZeRO-3 style fully sharded data parallelism); small arrays stay replicated.
Batches are always split along their first dimension over every mesh axis.
"""
import re

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

STRATEGIES = ("replicate", "fsdp")
FSDP_MIN_SIZE = 2 ** 10  # arrays smaller than this stay replicated under "fsdp"


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
  """Mesh with axis types Auto from (name, size) pairs; one size may be -1 (the remaining devices).

  On a single process an explicit mesh smaller than the device count uses the first devices.
  """
  devices = jax.devices() if devices is None else devices
  names = tuple(name for name, _ in mesh_config)
  sizes = [size for _, size in mesh_config]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh {tuple(mesh_config)}: at most one axis size may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 not in sizes and known < len(devices) and jax.process_count() == 1:
    devices = devices[:known]  # an explicit smaller mesh uses the first devices (e.g. 1-device runs)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"config.mesh {tuple(mesh_config)} does not divide the {len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"config.mesh {tuple(mesh_config)} needs {int(np.prod(sizes))} devices, "
                     f"but {len(devices)} are available")
  return jax.make_mesh(tuple(sizes), names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) dimension split over every mesh axis."""
  return NamedSharding(mesh, P(mesh.axis_names))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def path_str(path) -> str:
  """Key path -> "a/b/c", the names the sharding rules' and init_from.skip's regexes match."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def _fsdp_spec(shape, mesh, axes):
  size = int(np.prod([mesh.shape[a] for a in axes]))
  if int(np.prod(shape)) < FSDP_MIN_SIZE or size == 1:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % size == 0:
      spec = [None] * len(shape)
      spec[dim] = axes if len(axes) > 1 else axes[0]
      return P(*spec)
  return P()


def param_shardings(shapes, mesh, rules):
  """Pytree of NamedShardings for a pytree of ShapeDtypeStructs, from (regex, strategy) rules."""
  compiled = []
  for pattern, strategy in rules:
    if strategy not in STRATEGIES:
      raise ValueError(f"sharding rule ({pattern!r}, {strategy!r}): strategy must be one of {STRATEGIES}")
    try:
      compiled.append((re.compile(pattern), strategy))
    except re.error as e:
      raise ValueError(f"sharding rule ({pattern!r}, {strategy!r}): the pattern is not a regular expression: {e}") \
          from None
  fsdp_axes = tuple(a for a in mesh.axis_names if a == "fsdp") or tuple(mesh.axis_names)

  def one(path, leaf):
    name = path_str(path)
    for regex, strategy in compiled:
      if regex.search(name):
        spec = _fsdp_spec(leaf.shape, mesh, fsdp_axes) if strategy == "fsdp" else P()
        return NamedSharding(mesh, spec)
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map_with_path(one, shapes)
