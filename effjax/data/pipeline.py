"""Input pipeline: a data source (by name) -> grain -> global batches sharded over the device mesh.

Training: grain `DataLoader` with an `IndexSampler` sharded per process (each process reads its own
slice of every global batch), seeded shuffling over endless epochs, per-example ops with per-example
seeds, and a checkpointable iterator (its state is saved with every checkpoint, so resume is exact).
Evaluation: one deterministic pass; the last batch is padded with `mask = 0` examples so that every
process runs the same number of equally shaped batches.
"""
import dataclasses

import grain
import jax
import numpy as np

from effjax import components
from effjax.data import ops


def make_source(data_config, split):
  """The random-access source named by data_config.source ("name" or "name:arg") for one split."""
  name, _, arg = data_config.source.partition(":")
  if not name:
    raise ValueError("config.data.source is empty; set it, e.g. --config.data.source=mnist5k")
  return components.load("data.sources", name).make(split, arg or None)


class _Deterministic(grain.transforms.Map):
  def __init__(self, fns):
    self.fns = fns

  def map(self, example):
    for fn in self.fns:
      example = fn(example)
    return _finalize(example)


class _Random(grain.transforms.RandomMap):
  def __init__(self, fns):
    self.fns = fns

  def random_map(self, example, rng):
    for fn, is_random in self.fns:
      example = fn(example, rng) if is_random else fn(example)
    return _finalize(example)


def _finalize(example):
  """Converts a remaining uint8 image to float32 in [0, 1] and labels to int32."""
  out = dict(example)
  if "image" in out and out["image"].dtype == np.uint8:
    out["image"] = out["image"].astype(np.float32) / 255.0
  if "label" in out:
    out["label"] = np.asarray(out["label"], np.int32)
  return out


def _parse_ops(specs):
  return [ops.parse(s) for s in specs]


@dataclasses.dataclass
class TrainData:
  """An endless iterator of global training batches; `loader_iterator` is what checkpoints save."""
  loader_iterator: object
  sharding: jax.sharding.NamedSharding
  global_batch_size: int
  num_examples: int

  def __iter__(self):
    return self

  def __next__(self):
    return to_global(next(self.loader_iterator), self.sharding, self.global_batch_size)


def train_data(data_config, global_batch_size, sharding, seed):
  """Endless shuffled training batches; seeded, per-process sharded, checkpointable."""
  source = make_source(data_config, data_config.train_split)
  process_count, process_index = jax.process_count(), jax.process_index()
  if global_batch_size % process_count:
    raise ValueError(f"batch_size {global_batch_size} is not divisible by the {process_count} processes")
  if len(source) < global_batch_size:
    raise ValueError(f"batch_size {global_batch_size} exceeds the {len(source)} training examples")
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shuffle=True, seed=seed, num_epochs=None,
      shard_options=grain.sharding.ShardOptions(process_index, process_count, drop_remainder=True))
  parsed = _parse_ops(list(data_config.augment) + list(data_config.preprocess))
  train_ops = [_Random([(fn, is_random) for _, fn, is_random in parsed]),
               grain.transforms.Batch(global_batch_size // process_count, drop_remainder=True)]
  loader = grain.DataLoader(data_source=source, sampler=sampler, operations=train_ops,
                            worker_count=data_config.worker_count)
  return TrainData(iter(loader), sharding, global_batch_size, len(source))


def eval_batches(data_config, global_batch_size, sharding):
  """One pass over the eval split as global batches with a `mask` (1 = real example, 0 = padding)."""
  source = make_source(data_config, data_config.eval_split)
  count = len(source) if data_config.eval_examples < 0 else min(len(source), data_config.eval_examples)
  process_count, process_index = jax.process_count(), jax.process_index()
  local = global_batch_size // process_count
  fns = [fn for _, fn, is_random in _parse_ops(data_config.preprocess) if not is_random]
  prepare = _Deterministic(fns).map
  for start in range(0, count, global_batch_size):
    indices = start + process_index * local + np.arange(local)
    examples = [prepare(source[int(i) if i < count else 0]) for i in indices]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    batch["mask"] = (indices < count).astype(np.float32)
    yield to_global(batch, sharding, global_batch_size)


def to_global(local_batch, sharding, global_batch_size):
  """Process-local numpy batch -> global jax.Arrays sharded along the batch dimension."""
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (global_batch_size,) + x.shape[1:])
  return jax.tree.map(put, local_batch)


def info(data_config):
  """The train split's info dict (num_classes, image_shape, ...)."""
  return make_source(data_config, data_config.train_split).info
