"""Recipe features against their reference implementations by value: timm's RandAugment ("rand-m9-mstd0.5-inc1")
and RandomErasing, given the random numbers timm drew (tests/data/make_recipe_goldens.py), and bicubic resizing
against Pillow's, the filter torchvision and timm use."""
import numpy as np
import pytest
from PIL import Image

from effjax.data import image as image_lib, ops, randaugment

from conftest import load_golden

KINDS = {"random": 0, "normal": 1, "integers": 2, "uniform": 3}


class Replay:
  """A numpy-Generator stand-in that hands out recorded draws in order, checking that each is the kind asked for."""

  def __init__(self, golden, name):
    self.kinds, self.values = golden[f"{name}/kinds"].tolist(), golden[f"{name}/values"].tolist()
    self.golden, self.name, self.i = golden, name, 0

  def _next(self, kind):
    assert self.i < len(self.kinds), f"{self.name}: more draws than timm made"
    k, v = self.kinds[self.i], self.values[self.i]
    self.i += 1
    if kind == "normal" and k == 4:
      return self.golden[f"{self.name}/array{int(v)}"]
    assert k == KINDS[kind], f"{self.name}: draw {self.i - 1} is {kind}, timm drew kind {k}"
    return v

  def random(self):
    return self._next("random")

  def normal(self, loc=0.0, scale=1.0, size=None):
    return self._next("normal")

  def uniform(self, low, high):
    return self._next("uniform")

  def integers(self, low, high=None, size=None):
    if size is None:
      return int(self._next("integers"))
    return np.array([int(self._next("integers")) for _ in range(size)])

  def done(self):
    assert self.i == len(self.kinds), f"{self.name}: effjax drew {self.i} numbers, timm {len(self.kinds)}"


@pytest.fixture(scope="module")
def timm_golden():
  return load_golden("recipe_timm")


def _cases(golden, prefix):
  return [name for name in golden[1]["cases"] if name.startswith(prefix)]


def test_timm_randaugment_matches_timm(timm_golden):
  golden, meta = timm_golden
  names = _cases(timm_golden, "ra_")
  assert len(names) >= 30
  for name in names:
    args = meta["cases"][name]
    rng = Replay(golden, name)
    out = ops.parse(f"timm_randaugment(policy={args['policy']},method={args['method']})")[1](
        {"image": golden[f"{name}/input"]}, rng)["image"]
    rng.done()
    np.testing.assert_array_equal(out, golden[f"{name}/output"], err_msg=name)


def test_timm_randaugment_changes_images_and_covers_every_op(timm_golden):
  golden, _ = timm_golden
  changed = [name for name in _cases(timm_golden, "ra_") if (golden[f"{name}/input"] != golden[f"{name}/output"]).any()]
  forced = [n for n in changed if "_op" in n]
  assert len(forced) >= 28  # of 30 forced single ops (inc and plain): only a no-op draw may leave an image unchanged
  rng = np.random.default_rng(0)
  image = golden["ra_free0/input"]
  outs = {ops.timm_randaugment({"image": image}, np.random.default_rng(s))["image"].tobytes() for s in range(8)}
  assert len(outs) >= 6 and rng is not None


def test_random_erasing_matches_timm(timm_golden):
  golden, meta = timm_golden
  names = _cases(timm_golden, "erase")
  erased = 0
  for name in names:
    args = meta["cases"][name]
    rng = Replay(golden, name)
    spec = f"random_erasing(prob={args['prob']},mode={args['mode']},count={args['count']})"
    out = ops.parse(spec)[1]({"image": golden[f"{name}/input"]}, rng)["image"]
    rng.done()
    np.testing.assert_allclose(out, golden[f"{name}/output"], rtol=0, atol=1e-6, err_msg=name)
    erased += bool((golden[f"{name}/input"] != golden[f"{name}/output"]).any())
  assert erased >= 6


def test_random_erasing_needs_a_normalized_image():
  with pytest.raises(ValueError, match="after normalize"):
    ops.parse("random_erasing")[1]({"image": np.zeros((8, 8, 3), np.uint8)}, np.random.default_rng(0))
  with pytest.raises(ValueError, match="mode"):
    ops.parse("random_erasing(mode=blue)")


def test_timm_policy_parsing():
  assert randaugment.parse_timm_policy("rand-m9-mstd0.5-inc1") == dict(
      num_layers=2, magnitude=9.0, magnitude_std=0.5, increasing=True, prob=0.5, magnitude_max=10.0)
  assert randaugment.parse_timm_policy("rand-n3-m7-p1.0")["num_layers"] == 3
  for bad in ("augmix-m5", "rand-q3", "rand-inc0"):
    with pytest.raises(ValueError, match="policy"):
      ops.parse(f"timm_randaugment(policy={bad})")


def test_bicubic_resizes_are_pillows():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
  want = np.asarray(Image.fromarray(image).resize((24, 20), Image.BICUBIC))
  np.testing.assert_array_equal(ops.resize({"image": image}, size=(20, 24), method="bicubic")["image"], want)
  bilinear = ops.resize({"image": image}, size=(20, 24))["image"]
  assert np.abs(bilinear.astype(int) - want).mean() > 1  # a different filter
  # the fused center crop gives the same pixels as resize_small then crop, bicubic too
  fused = ops.center_crop({"image": image}, size=16, resize_small=20, method="bicubic")["image"]
  small = ops.resize_small({"image": image}, size=20, method="bicubic")["image"]
  top, left = (small.shape[0] - 16) // 2, (small.shape[1] - 16) // 2
  assert np.abs(fused.astype(int) - small[top:top + 16, left:left + 16]).max() <= 1
  with pytest.raises(ValueError, match="method"):
    ops.parse("resize(method=random)")


def test_random_interpolation_draws_both_filters():
  image = np.random.default_rng(1).integers(0, 256, (40, 40, 3)).astype(np.uint8)
  crop = ops.parse("inception_crop(size=16,area_min=1.0,ratio_min=1.0,ratio_max=1.0,method=random)")[1]
  outs = {crop({"image": image}, np.random.default_rng(s))["image"].tobytes() for s in range(12)}
  want = {image_lib.resize(image, 16, 16, method=m).tobytes() for m in ("bilinear", "bicubic")}
  assert outs == want


def test_poly_schedule_is_nnunets():
  """nnU-Net's PolyLRScheduler: lr · (1 − step / max_steps)^0.9 (nnunetv2/training/lr_scheduler/polylr.py)."""
  import ml_collections

  from effjax import optim
  opt = ml_collections.ConfigDict(dict(lr=0.01, schedule="warmup_poly", warmup_steps=0, warmup_epochs=0.0,
                                       end_lr_factor=0.0))
  schedule = optim.make_schedule(opt, total_steps=1000, steps_per_epoch=250)
  steps = np.array([0, 1, 250, 500, 999, 1000])
  want = 0.01 * (1 - steps / 1000) ** 0.9
  np.testing.assert_allclose([float(schedule(s)) for s in steps], want, rtol=1e-5, atol=1e-9)


def test_regex_decay_mask():
  import jax.numpy as jnp

  from effjax import config as cfg, optim
  params = {"embedding": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
            "block0": {"ista": {"D": jnp.ones((3, 3))}, "attn": {"kernel": jnp.ones((2, 2))}}}
  mask = optim.decay_mask("re:/kernel$")(params)
  assert mask == {"embedding": {"kernel": True, "bias": False},
                  "block0": {"ista": {"D": False}, "attn": {"kernel": True}}}
  with pytest.raises(cfg.ConfigError, match="regex"):
    optim.decay_mask("re:(")
  with pytest.raises(cfg.ConfigError, match="no_bias_norm"):
    optim.decay_mask("no_bias_nrom")


def test_random_crop_padding_modes_are_torchvisions():
  """torchvision pads PIL images with np.pad(mode=padding_mode); the Terminator's official crop is "symmetric"."""
  image = np.random.default_rng(0).integers(0, 256, (6, 7, 3)).astype(np.uint8)
  for mode in ("constant", "reflect", "symmetric"):
    crop = ops.parse(f"random_crop(pad=3,mode={mode})")[1]
    rng = np.random.default_rng(5)
    top, left = np.random.default_rng(5).integers(0, 7, size=2)
    want = np.pad(image, [(3, 3), (3, 3), (0, 0)], mode=mode)[top:top + 6, left:left + 7]
    np.testing.assert_array_equal(crop({"image": image}, rng)["image"], want)
  assert (np.pad(image, [(3, 3), (3, 3), (0, 0)], mode="symmetric")[:3]
          != np.pad(image, [(3, 3), (3, 3), (0, 0)], mode="reflect")[:3]).any()
  with pytest.raises(ValueError, match="mode"):
    ops.parse("random_crop(mode=wrap)")


def test_bce_loss_matches_timm(timm_golden):
  """timm's BinaryCrossEntropy on Mixup-style soft targets, without and with the RSB target threshold 0.2."""
  import ml_collections

  from effjax.tasks import classification
  golden, meta = timm_golden
  names = _cases(timm_golden, "bce")
  assert len(names) == 3
  for name in names:
    thresh = meta["cases"][name]["target_threshold"]
    c = ml_collections.ConfigDict(dict(model=dict(num_classes=10), compute_dtype="float32", task=dict(
        loss="bce", bce_target_thresh=-1.0 if thresh is None else thresh)))
    task = classification.Task(c)
    logits, targets = golden[f"{name}/logits"], golden[f"{name}/targets"]
    loss, _ = task.binary_cross_entropy(logits, targets, {"label": np.argmax(targets, -1)})
    np.testing.assert_allclose(float(loss), float(golden[f"{name}/loss"]), rtol=1e-5, err_msg=name)
  with pytest.raises(ValueError, match="bce"):
    classification.Task(ml_collections.ConfigDict(dict(model=dict(num_classes=3), compute_dtype="float32",
                                                       task=dict(loss="focal"))))


def test_layer_decay_scales_updates_as_maes_param_groups():
  """MAE util/lr_decay.py: layer id 0 for cls / pos / patch embeddings, i + 1 in block i, depth + 1 elsewhere;
  lr scale = decay^(depth + 1 − layer id). Depth 2, decay 0.75: head 1, block 1 0.75, block 0 0.5625, stem 0.421875."""
  import jax
  import jax.numpy as jnp
  import ml_collections

  from effjax import config as cfg, optim, train_config
  params = {"embedding": {"kernel": jnp.ones((2, 2))}, "pos_embedding": jnp.ones((1, 2)), "cls": jnp.ones((1, 2)),
            "layer0": {"mlp": {"kernel": jnp.ones((2, 2))}}, "layer1": {"mlp": {"kernel": jnp.ones((2, 2))}},
            "encoder_norm": {"scale": jnp.ones(2)}, "head": {"kernel": jnp.ones((2, 2))}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  opt = ml_collections.ConfigDict(train_config.base_config().optimizer.to_dict())
  opt.update(dict(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant"))

  def update(layer_decay):
    opt.layer_decay = layer_decay
    tx, _ = optim.make_optimizer(opt, 10, 5)
    return tx.update(grads, tx.init(params), params)[0]
  plain, decayed = update(1.0), update(0.75)
  want = {"embedding": 0.421875, "pos_embedding": 0.421875, "cls": 0.421875, "layer0": 0.5625, "layer1": 0.75,
          "encoder_norm": 1.0, "head": 1.0}
  for key, scale in want.items():
    for p, d in zip(jax.tree.leaves(plain[key]), jax.tree.leaves(decayed[key])):
      np.testing.assert_allclose(np.asarray(d), scale * np.asarray(p), rtol=1e-6, err_msg=key)
  opt.layer_decay = 0.5
  with pytest.raises(cfg.ConfigError, match="numbered blocks"):
    tx, _ = optim.make_optimizer(opt, 10, 5)
    tx.update({"head": jnp.ones(2)}, tx.init({"head": jnp.ones(2)}), {"head": jnp.ones(2)})


def test_repeated_augmentation_follows_timms_repeat_aug_sampler():
  """timm RepeatAugSampler (one replica): the epoch's permutation with each index repeated R times
  (torch.repeat_interleave), cut to the epoch length; each copy is augmented with its own seed."""
  from effjax.data import pipeline

  class Source(list):
    info = {}
  source = Source({"image": np.full((8, 8, 1), i, np.uint8), "label": i} for i in range(12))
  crop = ops.parse("random_crop(pad=3)")
  order = pipeline.GlobalOrder(source, [crop], seed=4, global_batch=6, process_index=0, process_count=1, repeats=3)
  for epoch in (0, 1):
    perm = np.random.default_rng([4, epoch]).permutation(12)
    labels = [int(order[epoch * 12 + k]["label"]) for k in range(12)]
    assert labels == np.repeat(perm, 3)[:12].tolist()
  copies = [order[k]["image"] for k in range(3)]
  assert len({c.tobytes() for c in copies}) > 1  # the same record, differently cropped
  plain = pipeline.GlobalOrder(source, [], seed=4, global_batch=6, process_index=0, process_count=1)
  assert sorted(int(plain[k]["label"]) for k in range(12)) == list(range(12))
