"""Input-pipeline throughput: examples/s of the ImageNet training and evaluation recipes from JPEG bytes.

  python experiments/data/benchmark.py [--examples 600] [--workers 1,2]

Images: four scikit-image photographs resized to 375×500 (landscape) and 500×375 (portrait), JPEG quality
90, so every example is decoded from bytes as a tfds ArrayRecord image is (effjax/data/sources/tfds.py).
Recipes (the ops of configs/crate.py and crate_finetune.py; normalisation to float32 included):
  train: decode, inception_crop(224), flip, randaugment(2, 9), normalize
  eval:  decode, center_crop(224, resize_small=256), normalize
"Per core" runs the recipe in this process pinned to one CPU and counts examples per CPU-second; "N grain
workers" counts examples per wall-clock second read in batches of 32 through effjax.data.pipeline's loader
(GlobalOrder + grain mp_prefetch, the trainer's path, which adds ~0.15 ms per example of bookkeeping), so
it depends on how busy the machine is.
"""
import argparse
import io
import os
import sys
import time

import grain
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from effjax.data import image as image_lib, ops, pipeline  # noqa: E402

RECIPES = {
    "train": ("inception_crop(size=224)", "flip", "randaugment(num_layers=2,magnitude=9)",
              "normalize(mean=(0.485,0.456,0.406),std=(0.229,0.224,0.225))"),
    "eval": ("center_crop(size=224,resize_small=256)", "normalize(mean=(0.485,0.456,0.406),std=(0.229,0.224,0.225))"),
}


class JpegSource:
  """Random access to JPEG-encoded photographs, decoded on access (as the tfds source does)."""

  def __init__(self, count):
    import skimage.data
    photos = [skimage.data.coffee(), skimage.data.rocket(), skimage.data.astronaut(), skimage.data.chelsea()]
    self.jpegs = []
    for i in range(count):
      size = (500, 375) if i % 2 == 0 else (375, 500)  # PIL sizes are (width, height)
      buffer = io.BytesIO()
      Image.fromarray(photos[i % len(photos)]).resize(size, Image.BILINEAR).save(buffer, format="JPEG", quality=90)
      self.jpegs.append(buffer.getvalue())
    self.info = {}

  def __len__(self):
    return len(self.jpegs)

  def __getitem__(self, i):
    return {"image": image_lib.decode(self.jpegs[i]), "label": i % 4}


def per_core(source, recipe, count):
  """Examples per CPU-second of the recipe (decode + ops; random ops with a per-example generator, as the
  pipeline seeds them) in this process, pinned to one CPU. CPU time, so that other processes sharing the
  CPU do not count."""
  parsed = [ops.parse(s) for s in recipe]

  def prepare(j):
    example, rng = source[j % len(source)], np.random.default_rng([0, 1, j])
    for _, fn, is_random in parsed:
      example = fn(example, rng) if is_random else fn(example)
    return example

  prepare(0)
  start = time.process_time()
  for j in range(count):
    prepare(j)
  return count / (time.process_time() - start)


def with_workers(source, recipe, count, workers):
  """Examples/s through the trainer's grain loader with `workers` processes (batches of 32)."""
  order = pipeline.GlobalOrder(source, [ops.parse(s) for s in recipe], 0, 32, 0, 1)
  iterator = pipeline.loader(grain.MapDataset.source(order).batch(32, drop_remainder=True), workers)
  for _ in range(2 * max(workers, 1)):  # start-up: workers spawn and fill their buffers
    next(iterator)
  batches = max(count // 32, 1)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * 32 / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=600, help="examples timed per measurement")
  parser.add_argument("--workers", default="1,2", help="grain worker counts, comma separated")
  args = parser.parse_args()
  from absl import flags
  flags.FLAGS(sys.argv[:1])  # grain's multiprocessing reads absl flags
  source = JpegSource(64)
  workers = [int(w) for w in args.workers.split(",") if w]
  affinity = os.sched_getaffinity(0)
  columns = [f"{w} grain worker" + "s" * (w > 1) for w in workers]
  print(f"| recipe | per core | {' | '.join(columns)} |")
  print(f"|---|---|{'---|' * len(workers)}")
  for name, recipe in RECIPES.items():
    os.sched_setaffinity(0, {min(affinity)})
    one = per_core(source, recipe, args.examples)
    os.sched_setaffinity(0, affinity)
    rates = [with_workers(source, recipe, args.examples, w) for w in workers]
    print(f"| {name} | {one:.0f} | {' | '.join(f'{r:.0f}' for r in rates)} |", flush=True)


if __name__ == "__main__":
  main()
