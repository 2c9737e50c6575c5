"""Input pipeline: a data source (by name) -> grain -> global batches sharded over the device mesh.

Training: a grain dataset over `GlobalOrder` (seeded shuffling over endless epochs; each process reads
its own slice of every global batch; per-example augmentation seeds), batched per process. Its state (the
number of global batches consumed) is saved with every checkpoint, so resume is exact on any process count.
Prefetch: a background thread takes the next batches from grain, assembles them into global device
arrays (host-to-device transfer included) and keeps `data.prefetch` of them ready while the current step
runs; batches waiting in the queue are not counted as consumed, so resume stays exact.
Evaluation: one deterministic pass; the last batch is padded with `mask = 0` examples so that every
process runs the same number of equally shaped batches. Each evaluation passes its own data config
(effjax/train_config.py:eval_spec).
"""
import inspect
import queue
import sys
import threading

import grain
import jax
import numpy as np

from effjax import components
from effjax.config import ConfigError
from effjax.data import ops


def make_source(data_config, split):
  """The random-access source named by data_config.source ("name" or "name:arg") for one split."""
  name, _, arg = data_config.source.partition(":")
  if not name:
    raise ValueError("config.data.source is empty; set it, e.g. --config.data.source=mnist5k")
  return components.load("data.sources", name).make(split, arg or None)


# ops whose output size does not depend on the input's
_SIZING_OPS = ("resize", "center_crop", "inception_crop", "patch3d")


def _fit_source_to_ops(source, parsed, pp_key):
  """Checks that a source of varying image sizes (info image_shape with None) is given one size by an op of
  `parsed` (config.data.<pp_key>), and lets a source that decodes JPEGs (`min_size`) decode at a reduced scale
  when the first op resizes to a fixed size (effjax/data/image.py, draft decoding)."""
  shape = source.info.get("image_shape")
  if shape and None in tuple(shape)[:2] and not any(name in _SIZING_OPS for name, _, _ in parsed):
    raise ConfigError(f"{source.info.get('name', 'the data source')} has images of varying sizes {tuple(shape)}; "
                      f"config.data.{pp_key} needs an op that gives them one size: resize(size=...), "
                      f"center_crop(size=...,resize_small=...) or inception_crop(size=...)")
  if not hasattr(source, "min_size") or not parsed:
    return
  name, fn, _ = parsed[0]
  options = {k: p.default for k, p in inspect.signature(fn.func).parameters.items() if p.default is not p.empty}
  options.update(fn.keywords)
  size = {"resize": options.get("size"), "resize_small": options.get("size"),
          "center_crop": options.get("resize_small") or None}.get(name)
  source.min_size = None if size is None else (size, size) if np.isscalar(size) else tuple(size)


class _Deterministic:
  """Applies deterministic ops, then `_finalize`."""

  def __init__(self, fns):
    self.fns = fns

  def __call__(self, example):
    for fn in self.fns:
      example = fn(example)
    return _finalize(example)


def _finalize(example):
  """Converts a remaining uint8 image to float32 in [0, 1] and labels to int32."""
  out = dict(example)
  if "image" in out and out["image"].dtype == np.uint8:
    out["image"] = out["image"].astype(np.float32) / 255.0
  if "label" in out:
    out["label"] = np.asarray(out["label"], np.int32)
  return out


class GlobalOrder:
  """Endless random access over this process's share of a global, seeded example order.

  Global position g = step·B + i (B = global batch) holds record perm_e[(g mod N) // R] of epoch e = g // N,
  where perm_e is a seeded permutation drawn afresh every epoch, and its augmentation uses a generator
  seeded by (seed, g). R = `repeats` > 1 is repeated augmentation (Hoffer et al. 2020; timm's RepeatAugSampler:
  each epoch is the permutation with every index repeated R times, cut to N): R differently augmented copies
  of each of the first N/R records of perm_e, at adjacent positions. Process p of P reads positions
  b·B + p·(B/P) + r, r < B/P, of every batch b, so global batches (and therefore losses) do not depend on the
  number of processes or devices.
  """

  def __init__(self, source, ops_list, seed, global_batch, process_index, process_count, repeats=1, stages=()):
    self.source, self.ops, self.seed, self.repeats = source, ops_list, seed, repeats
    self.global_batch, self.local_batch = global_batch, global_batch // process_count
    self.offset = process_index * self.local_batch
    self.stages = stages  # ((until_epoch, ops_list), ...): see ops_at
    self._perms = {}

  def ops_at(self, batch):
    """The ops of global batch `batch`: those of the first stage whose until_epoch is above the epoch (in
    fractions, position / N) of the batch's first example, else `ops_list`. Whole batches switch together, so
    every batch has one shape (progressive resolution: FasterNet trains at 192 px before epoch 280)."""
    epoch = batch * self.global_batch / len(self.source)
    return next((ops_list for until, ops_list in self.stages if epoch < until), self.ops)

  def __len__(self):
    return sys.maxsize

  def _permutation(self, epoch):
    if epoch not in self._perms:
      self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.source))}
    return self._perms[epoch]

  def __getitem__(self, j):
    batch, r = divmod(j, self.local_batch)
    position = batch * self.global_batch + self.offset + r
    epoch, k = divmod(position, len(self.source))
    example = self.source[int(self._permutation(epoch)[k // self.repeats])]
    rng = np.random.default_rng([self.seed, 1, position])
    for _, fn, is_random in self.ops_at(batch):
      example = fn(example, rng) if is_random else fn(example)
    return _finalize(example)


class TrainData:
  """An endless iterator of global training batches with a global, process-count-free state.

  The state is {"next_batch": n}: the number of global batches consumed. Batch n is the same global batch
  for any number of processes (see GlobalOrder), so a state saved by P processes resumes on any other P.
  With prefetch > 0 a background thread prepares the next `prefetch` batches (grain + device transfer).
  `element_spec`: {key: jax.ShapeDtypeStruct} of one example of the next batch (the training batch's shapes, which
  may differ from evaluation's, e.g. ResNet-RS trains at 160 px and evaluates at 224, and change between the stages
  of config.data.pp_train_schedule); `spec_at(batch)` gives it for global batch `batch`.
  """

  def __init__(self, make_iterator, sharding, global_batch_size, num_examples, info, prefetch=0, spec_at=None):
    self.make_iterator, self.sharding, self.prefetch = make_iterator, sharding, prefetch
    self.spec_at = spec_at
    self.global_batch_size, self.num_examples, self.info = global_batch_size, num_examples, info
    self.next_batch, self.loader_iterator = 0, None  # made at the first next()
    self._thread = self._queue = self._stop = None

  @property
  def element_spec(self):
    return self.spec_at(self.next_batch)

  def __iter__(self):
    return self

  def __next__(self):
    if self.loader_iterator is None:  # closed: continue at next_batch
      self.loader_iterator = self.make_iterator(self.next_batch)
    if self.prefetch == 0:
      batch = self._convert(next(self.loader_iterator))
    else:
      if self._thread is None:
        self._queue, self._stop = queue.Queue(self.prefetch), threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True, name="effjax-prefetch")
        self._thread.start()
      batch, error = self._queue.get()
      if error is not None:
        raise error
    self.next_batch += 1
    return batch

  def _convert(self, batch):
    return to_global(batch, self.sharding, self.global_batch_size)

  def _fill(self):
    error = None
    while not self._stop.is_set() and error is None:
      try:
        item = (self._convert(next(self.loader_iterator)), None)
      except Exception as e:  # raised in the consumer
        item = error = (None, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue

  def get_state(self):
    return {"next_batch": self.next_batch}

  def set_state(self, state):
    """Continues at global batch state["next_batch"] (a fresh grain iterator starting there)."""
    self.close()
    self.next_batch = int(state["next_batch"])

  def close(self):
    """Stops the prefetch thread and the grain iterator (and its worker processes, which would otherwise leak
    their shared memory); prepared batches are dropped and a later next() continues at next_batch."""
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = None
    if self.loader_iterator is not None:
      getattr(self.loader_iterator, "close", lambda: None)()
      self.loader_iterator = None


def train_data(data_config, global_batch_size, sharding, seed):
  """Endless shuffled training batches: seeded, per-process, resumable at any batch (see GlobalOrder)."""
  source = make_source(data_config, data_config.train_split)
  process_count, process_index = jax.process_count(), jax.process_index()
  if global_batch_size % process_count:
    raise ValueError(f"batch_size {global_batch_size} is not divisible by the {process_count} processes")
  if len(source) < global_batch_size:
    raise ValueError(f"batch_size {global_batch_size} exceeds the {len(source)} training examples")
  ops_list = [ops.parse(s) for s in data_config.pp_train]
  stages = _train_stages(data_config.get("pp_train_schedule", ()))
  sizes = []  # JPEG draft decoding keeps the largest size any stage resizes to (None: full size)
  for key, parsed in [("pp_train", ops_list)] + [(f"pp_train_schedule[{i}]", p) for i, (_, p) in enumerate(stages)]:
    _fit_source_to_ops(source, parsed, key)
    sizes.append(getattr(source, "min_size", None))
  if stages and hasattr(source, "min_size"):
    source.min_size = None if None in sizes else tuple(map(max, *sizes))
  repeats = data_config.get("repeated_augmentation", 1)
  if repeats < 1:
    raise ConfigError(f"config.data.repeated_augmentation must be >= 1, got {repeats}")
  order = GlobalOrder(source, ops_list, seed, global_batch_size, process_index, process_count, repeats, stages)
  batches = grain.MapDataset.source(order).batch(order.local_batch, drop_remainder=True)
  make_iterator = lambda start: loader(batches[start:], data_config.worker_count)

  def spec_at(batch):
    example = order[batch * order.local_batch]
    return {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in example.items()}
  return TrainData(make_iterator, sharding, global_batch_size, len(source), source.info, data_config.prefetch,
                   spec_at)


def _train_stages(schedule):
  """config.data.pp_train_schedule ((until_epoch, pp_train), ...) -> ((until_epoch, parsed ops), ...), checked."""
  stages, previous = [], 0.0
  for i, entry in enumerate(schedule):
    if len(entry) != 2 or isinstance(entry[1], str):
      raise ConfigError(f"config.data.pp_train_schedule[{i}] must be (until_epoch, (op, ...)), got {entry!r}")
    until, pp = entry
    if not until > previous:
      raise ConfigError(f"config.data.pp_train_schedule: until_epoch values must be positive and increasing, "
                        f"got {until} after {previous}")
    stages.append((float(until), [ops.parse(s) for s in pp]))
    previous = until
  return tuple(stages)


def loader(batches, worker_count):
  """grain iterator over a MapDataset of this process's numpy batches (0 workers: in this process)."""
  dataset = batches.to_iter_dataset()
  if worker_count > 0:
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(dataset)


def eval_batches(data_config, global_batch_size, sharding, source=None):
  """One pass over the eval split as global batches with a `mask` (1 = real example, 0 = padding).

  `source` is the eval split's source when the caller already holds it (made from data_config if None).
  """
  source = make_source(data_config, data_config.eval_split) if source is None else source
  count = len(source) if data_config.eval_examples < 0 else min(len(source), data_config.eval_examples)
  process_count, process_index = jax.process_count(), jax.process_index()
  local = global_batch_size // process_count
  parsed = [ops.parse(s) for s in data_config.pp_eval]
  random = [name for name, _, is_random in parsed if is_random]
  if random:
    raise ConfigError(f"evaluation preprocessing must be deterministic; {random} are random (move them to pp_train)")
  _fit_source_to_ops(source, parsed, "pp_eval")
  prepare = _Deterministic([fn for _, fn, _ in parsed])
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

