"""JPEG decoding + the ImageNet recipes: effjax's ops against torchvision's, in one process, taking turns.

  python experiments/data/vs_torchvision.py [--examples 200] [--rounds 3]

Needs torch and torchvision beside effjax's dependencies (not project dependencies; experiments/data/README.md
says how the environment was made). Photos: four scikit-image photographs resized to 375×500 / 500×375 and to
1024×768 / 768×1024, JPEG quality 90. Each measurement runs one recipe on one photo size in this process, pinned to
one CPU, with torch limited to one thread, and counts examples per CPU-second; the rounds alternate the
implementations so that a change of machine load hits all of them alike, and the table gives the median.
  eval:  decode, resize shorter side to 256, centre crop 224, normalise to float32
  train: decode, random resized crop 224, flip, RandAugment(2, 9), normalise to float32
effjax: `effjax.data.image.decode` (with draft decoding where the pipeline asks for it: the eval recipe) and
`effjax.data.ops`; "full decode": the same without draft decoding. torchvision PIL: the ImageFolder path (PIL
decode, transforms v1 on PIL images, ToTensor). torchvision tensor: `torchvision.io.decode_jpeg` and transforms v2
on uint8 tensors (antialiased resize).
"""
import argparse
import io
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from effjax.data import image as image_lib, ops, pipeline  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMALIZE = f"normalize(mean={MEAN},std={STD})".replace(" ", "")
RECIPES = {"eval": ("center_crop(size=224,resize_small=256)", NORMALIZE),
           "train": ("inception_crop(size=224)", "flip", "randaugment(num_layers=2,magnitude=9)", NORMALIZE)}
SIZES = {"375x500": ((500, 375), (375, 500)), "1024x768": ((1024, 768), (768, 1024))}  # PIL (width, height)


def jpegs(sizes, count=8):
  import skimage.data
  photos = [skimage.data.coffee(), skimage.data.rocket(), skimage.data.astronaut(), skimage.data.chelsea()]
  out = []
  for i in range(count):
    buffer = io.BytesIO()
    Image.fromarray(photos[i % 4]).resize(sizes[i % 2], Image.BILINEAR).save(buffer, format="JPEG", quality=90)
    out.append(buffer.getvalue())
  return out


def effjax_recipe(name, draft=True):
  parsed = [ops.parse(s) for s in RECIPES[name]]

  class Source:  # what the pipeline sets on the tfds source
    info, min_size = {}, None
  source = Source()
  if draft:
    pipeline._fit_source_to_ops(source, parsed, "pp_eval")

  def run(data, rng):
    example = {"image": image_lib.decode(data, 3, source.min_size)}
    for _, fn, is_random in parsed:
      example = fn(example, rng) if is_random else fn(example)
    return example["image"]
  return run


def torchvision_recipe(name, tensors):
  import torch
  import torchvision
  if tensors:
    from torchvision.transforms import v2
    geometry = ([v2.Resize(256, antialias=True), v2.CenterCrop(224)] if name == "eval" else
                [v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(), v2.RandAugment(2, 9)])
    transform = v2.Compose(geometry + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    return lambda data, rng: transform(torchvision.io.decode_jpeg(torch.frombuffer(data, dtype=torch.uint8)))
  from torchvision import transforms as T
  geometry = ([T.Resize(256), T.CenterCrop(224)] if name == "eval" else
              [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.RandAugment(2, 9)])
  transform = T.Compose(geometry + [T.ToTensor(), T.Normalize(MEAN, STD)])
  return lambda data, rng: transform(Image.open(io.BytesIO(data)).convert("RGB"))


def per_cpu_second(run, data, count):
  for j in range(4):
    run(data[j % len(data)], np.random.default_rng(j))
  start = time.process_time()
  for j in range(count):
    run(data[j % len(data)], np.random.default_rng(j))
  return count / (time.process_time() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=200)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  import torch
  import torchvision
  torch.set_num_threads(1)
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {Image.__version__}; "
        f"load average {os.getloadavg()[0]:.1f} at the start")
  impls = {"effjax": effjax_recipe, "effjax, full decode": lambda n: effjax_recipe(n, draft=False),
           "torchvision PIL": lambda n: torchvision_recipe(n, False),
           "torchvision tensor": lambda n: torchvision_recipe(n, True)}
  print("| recipe | photos | " + " | ".join(impls) + " | effjax / best torchvision |")
  print("|---|---|" + "---|" * (len(impls) + 1))
  for name in RECIPES:
    for label, sizes in SIZES.items():
      data = jpegs(sizes)
      runs = {impl: make(name) for impl, make in impls.items()}
      rates = {impl: [] for impl in impls}
      for _ in range(args.rounds):
        for impl, run in runs.items():
          rates[impl].append(per_cpu_second(run, data, args.examples))
      median = {impl: statistics.median(r) for impl, r in rates.items()}
      best = max(v for k, v in median.items() if k.startswith("torchvision"))
      print(f"| {name} | {label} | " + " | ".join(f"{median[k]:.0f}" for k in impls) +
            f" | {median['effjax'] / best:.2f} |", flush=True)
  print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
  main()
