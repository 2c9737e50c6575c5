"""Writes tests/data/recipe_timm.npz: timm's RandAugment and RandomErasing on fixed inputs, with every random number
they drew, and timm's BinaryCrossEntropy on fixed logits and soft targets. Never run by the test suite.

Needs an environment of its own and a timm checkout (its three pure-python files are loaded by path, timm is not
installed), e.g.
  python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch==2.13.0 numpy pillow==<the project's Pillow>
  /tmp/refenv/bin/python tests/data/make_recipe_goldens.py /path/to/pytorch-image-models <its commit>

The random numbers timm draws (python `random`, `np.random.choice`, torch's normal_) are recorded in order, as
(kind, value) pairs and arrays, so that tests/test_recipes.py can hand the same numbers to effjax's ops and compare
the outputs by value. Kinds: 0 a uniform [0, 1) draw, 1 a normal draw, 2 an integer, 3 a uniform (a, b) draw,
4 an array of normal draws (the next entry of `arrays`, HWC).
Layout: <case>/input, <case>/output, <case>/kinds, <case>/values, <case>/array<i>, and meta (JSON: versions,
each case's arguments); BCE cases bce<i>/logits, bce<i>/targets, bce<i>/loss.
"""
import importlib.util
import json
import os
import random
import sys

import numpy as np
import PIL
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipe_timm.npz")


def load(repo, name, folder="data"):
  spec = importlib.util.spec_from_file_location(name, os.path.join(repo, "timm", folder, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class Recorder:
  """Stands in for python's `random` module inside a timm module: draws from a seeded Random, logging each draw."""

  def __init__(self, seed, log):
    self.r, self.log = random.Random(seed), log

  def random(self):
    v = self.r.random()
    self.log.append((0, v))
    return v

  def gauss(self, mu, sigma):
    v = self.r.gauss(mu, sigma)
    self.log.append((1, v))
    return v

  def choice(self, seq):
    i = self.r.randrange(len(seq))
    self.log.append((2, i))
    return seq[i]

  def randint(self, a, b):
    v = self.r.randint(a, b)
    self.log.append((2, v))
    return v

  def uniform(self, a, b):
    v = self.r.uniform(a, b)
    self.log.append((3, v))
    return v


def image(h, w, seed):
  """A uint8 RGB image with smooth structure, edges and noise in every channel."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w]
  base = np.stack([x * 255 / w, y * 255 / h, 128 + 100 * np.sin(x / 3 + y / 5)], -1)
  base[h // 3:h // 2, w // 4:w // 2] = rng.integers(0, 256, 3)
  return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def main(repo, commit):
  aa, erasing = load(repo, "auto_augment"), load(repo, "random_erasing")
  from PIL import Image
  out, meta = {}, {"pillow": PIL.__version__, "torch": torch.__version__, "cases": {}}
  meta["timm_commit"] = commit

  def save(name, inp, outp, log, arrays, args):
    out[f"{name}/input"], out[f"{name}/output"] = inp, outp
    out[f"{name}/kinds"] = np.array([k for k, _ in log], np.int32)
    out[f"{name}/values"] = np.array([v for _, v in log], np.float64)
    for i, a in enumerate(arrays):
      out[f"{name}/array{i}"] = a
    meta["cases"][name] = args

  # RandAugment. "forced" cases pick op i (n=1, p=1) so that every op and sign is covered; the others draw freely.
  hparams = dict(translate_const=100, img_mean=(124, 116, 104), interpolation=Image.BICUBIC)
  cases = []
  for increasing in (True, False):
    for i in range(15):
      cases.append((f"ra_{'inc' if increasing else 'plain'}_op{i}",
                    f"rand-m9-mstd0.5-n1-p1.0{'-inc1' if increasing else ''}", "bicubic", i))
  for s in range(6):
    cases.append((f"ra_free{s}", "rand-m9-mstd0.5-inc1", "bicubic", None))
  for s in range(4):
    cases.append((f"ra_random_interp{s}", "rand-m7-n3-mstd1.0-inc1", "random", None))
  cases.append(("ra_no_noise", "rand-m9-n4-p1.0", "bicubic", None))
  for k, (name, policy, method, forced) in enumerate(cases):
    log = []
    aa.random = Recorder(k, log)
    hp = dict(hparams) if method != "random" else {kk: v for kk, v in hparams.items() if kk != "interpolation"}
    ra = aa.rand_augment_transform(policy, hp)
    rng = np.random.default_rng(100 + k)

    def choice(ops, n, replace=True, p=None):
      idx = [forced] * n if forced is not None else list(rng.integers(len(ops), size=n))
      log.extend((2, i) for i in idx)
      return [ops[i] for i in idx]
    aa.np.random.choice = choice
    inp = image(24, 32, k)
    outp = np.asarray(ra(Image.fromarray(inp)))
    save(name, inp, outp, log, [], dict(policy=policy, method=method))

  # RandomErasing on a normalized CHW tensor (saved HWC).
  for k, (prob, mode, count) in enumerate([(1.0, "pixel", 1)] * 4 + [(1.0, "rand", 1), (1.0, "const", 1),
                                                                     (0.25, "pixel", 1), (0.25, "pixel", 1),
                                                                     (1.0, "pixel", 2)]):
    log, arrays = [], []
    erasing.random = Recorder(1000 + k, log)
    get_pixels = erasing._get_pixels

    def recording_pixels(*args, **kwargs):
      pixels = get_pixels(*args, **kwargs)
      if args[0] or args[1]:  # per-pixel or per-channel normal draws
        log.append((4, len(arrays)))
        arrays.append(pixels.permute(1, 2, 0).numpy().copy())
      return pixels
    erasing._get_pixels = recording_pixels
    torch.manual_seed(k)
    op = erasing.RandomErasing(probability=prob, mode=mode, min_count=count, max_count=count, device="cpu")
    inp = ((image(20, 28, 50 + k) / 255.0 - 0.45) / 0.25).astype(np.float32)
    outp = op(torch.from_numpy(inp).permute(2, 0, 1).contiguous()).permute(1, 2, 0).numpy()
    erasing._get_pixels = get_pixels
    save(f"erase{k}", inp, outp, log, arrays, dict(prob=prob, mode=mode, count=count))

  # BinaryCrossEntropy on dense soft targets (as timm's Mixup produces them: smoothed one-hots mixed with the batch
  # reversed), without and with the RSB A1 target threshold 0.2.
  bce = load(repo, "binary_cross_entropy", "loss")
  rng = np.random.default_rng(7)
  for k, thresh in enumerate((None, 0.2, None)):
    logits = rng.normal(0, 3, (6, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 6)
    smooth = 0.1 if k != 1 else 0.0
    onehot = np.full((6, 10), smooth / 10, np.float32)
    onehot[np.arange(6), labels] = 1 - smooth + smooth / 10
    lam = 0.7
    targets = (lam * onehot + (1 - lam) * onehot[::-1]).astype(np.float32)
    loss = bce.BinaryCrossEntropy(smoothing=0.0, target_threshold=thresh)(torch.from_numpy(logits),
                                                                          torch.from_numpy(targets))
    out[f"bce{k}/logits"], out[f"bce{k}/targets"], out[f"bce{k}/loss"] = logits, targets, loss.numpy()
    meta["cases"][f"bce{k}"] = dict(target_threshold=thresh)

  np.savez_compressed(OUT, meta=json.dumps(meta), **out)
  print(f"wrote {OUT}: {len(meta['cases'])} cases")


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "unknown")
