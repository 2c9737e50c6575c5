"""Segmentation: Dice + CE loss with deep supervision, the Dice evaluator, the ellipsoid and NIfTI sources,
and D-Former training through the shared trainer on 8 fake devices."""
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from effjax import config as cfg
from effjax.data.sources import ellipsoids, nifti
from effjax.evaluators import dice as dice_eval
from effjax.tasks import segmentation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(num_classes=3, **task):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(num_classes=num_classes))
  c.task = ml_collections.ConfigDict(task)
  c.evaluator = ml_collections.ConfigDict()
  return c


class _Heads:
  """Stands in for a model: returns the given logit maps whatever the input."""

  def __init__(self, *heads):
    self.heads = heads

  def apply(self, variables, image, train=False, rngs=None, mutable=False):
    return self.heads if len(self.heads) > 1 else self.heads[0]


def _labels():
  labels = np.zeros((2, 4, 8, 8), np.int32)
  labels[:, 1:3, 2:6, 2:6] = 1
  labels[1, :, :2, :2] = 2
  return jnp.asarray(labels)


def test_perfect_prediction_has_dice_one_and_small_loss():
  labels = _labels()
  perfect = 20.0 * jax.nn.one_hot(labels, 3)
  task = segmentation.Task(_config(deep_supervision_weights=(1.0,)))
  loss, aux = task.loss(_Heads(perfect), {"params": {}}, {"image": labels, "label": labels}, None, train=False)
  assert aux["metrics"]["dice"] == pytest.approx(1.0)
  assert aux["metrics"]["soft_dice"] == pytest.approx(1.0, abs=1e-5)
  assert float(loss) < 1e-5


def test_deep_supervision_weights_subsampled_heads():
  labels = _labels()
  full = 20.0 * jax.nn.one_hot(labels, 3)
  half_right = 20.0 * jax.nn.one_hot(labels[:, ::2, ::2, ::2], 3)
  half_wrong = 20.0 * jax.nn.one_hot(jnp.zeros((2, 2, 4, 4), jnp.int32), 3)
  batch = {"image": labels, "label": labels}
  task = segmentation.Task(_config(deep_supervision_weights=(1.0, 0.5)))
  right, _ = task.loss(_Heads(full, half_right), {"params": {}}, batch, None, train=False)
  wrong, _ = task.loss(_Heads(full, half_wrong), {"params": {}}, batch, None, train=False)
  assert float(right) < 1e-5 and float(wrong) > 1.0
  ignored, _ = segmentation.Task(_config(deep_supervision_weights=(1.0, 0.0))).loss(
      _Heads(full, half_wrong), {"params": {}}, batch, None, train=False)
  assert float(ignored) < 1e-5


def test_soft_dice_values_and_masked_examples():
  onehot = jax.nn.one_hot(jnp.array([[0, 1, 1, 1]]), 2)
  probs = jax.nn.one_hot(jnp.array([[0, 1, 0, 0]]), 2)
  np.testing.assert_allclose(segmentation.soft_dice(probs, onehot, jnp.ones(1))[1], 2 * 1 / (1 + 3), rtol=1e-4)
  both = jnp.concatenate([probs, onehot]), jnp.concatenate([onehot, onehot])
  np.testing.assert_allclose(segmentation.soft_dice(*both, jnp.array([0.0, 1.0]))[1], 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="does not divide"):
    segmentation.subsample_labels(jnp.zeros((1, 5, 4)), (2, 2))


def test_dice_evaluator_per_class_values_and_png(tmp_path):
  labels = _labels()
  pred = np.asarray(labels).copy()
  pred[0, 1, 2, 2:6] = 0  # volume 0: class 1 loses 4 of its 32 voxels
  logits = jax.nn.one_hot(jnp.asarray(pred), 3)
  task = types.SimpleNamespace(predict=lambda model, variables, batch: logits, padding_key="mask")
  evaluator = dice_eval.Evaluator(_config(), task, model=None)
  batch = {"image": jnp.zeros((2, 4, 8, 8, 1)), "label": labels, "mask": jnp.array([1.0, 1.0])}
  out = evaluator.run({}, [batch], step=7, workdir=str(tmp_path))
  assert out["dice_class1"] == pytest.approx((2 * 28 / 60 + 1.0) / 2)
  assert out["dice_class2"] == pytest.approx(1.0)  # absent from volume 0 in both: counted for volume 1 only
  assert out["dice_mean"] == pytest.approx((out["dice_class1"] + 1.0) / 2) and out["volumes"] == 2
  assert os.path.exists(tmp_path / "dice" / "step_000007.png")
  batch["mask"] = jnp.array([0.0, 1.0])  # padding examples do not count
  assert evaluator.run({}, [batch], step=8, workdir=None)["dice_class1"] == pytest.approx(1.0)


def test_ellipsoids_are_deterministic_and_labelled():
  source = ellipsoids.make("train", "depth=8;height=16;width=16;classes=2;train=4;objects=3")
  assert len(source) == 4 and source.info["num_classes"] == 3
  a, b = source[1], source[1]
  assert a["image"].shape == (8, 16, 16, 1) and a["image"].dtype == np.float32 and a["label"].shape == (8, 16, 16)
  np.testing.assert_array_equal(a["label"], b["label"])
  assert set(np.unique(a["label"])) <= {0, 1, 2} and (a["label"] > 0).any()
  assert not np.array_equal(ellipsoids.make("test", None)[0]["label"][:8, :16, :16], a["label"])
  with pytest.raises(ValueError, match="no split"):
    ellipsoids.make("validation", None)


def test_nifti_source_reads_pairs_crops_and_splits(tmp_path):
  import nibabel  # the test extra pins it
  os.makedirs(tmp_path / "imagesTr")
  os.makedirs(tmp_path / "labelsTr")
  for i in range(3):
    image = np.full((10, 6, 4), 100.0 * i, np.float32)  # NIfTI (x, y, z)
    label = np.zeros((10, 6, 4), np.uint8)
    label[2:4, 1:3, 1] = 1
    nibabel.save(nibabel.Nifti1Image(image, np.eye(4)), str(tmp_path / "imagesTr" / f"case{i}_0000.nii.gz"))
    nibabel.save(nibabel.Nifti1Image(label, np.eye(4)), str(tmp_path / "labelsTr" / f"case{i}.nii.gz"))
  arg = f"root={tmp_path};crop=2x8x8;norm=ct;classes=2;test_fraction=0.3"
  train, test = nifti.make("train", arg), nifti.make("test", arg)
  assert (len(train), len(test)) == (2, 1) and train.info["num_classes"] == 2
  example = test[0]
  assert example["image"].shape == (2, 8, 8, 1) and example["label"].shape == (2, 8, 8)
  # z=4 cropped to 2 (slices 1-2), y=6 padded to 8 (1 before), x=10 cropped to 8 (from 1).
  assert example["label"].sum() == 4 and example["label"][0, 2:4, 1:3].all()
  assert example["image"][0, 1, 1, 0] == pytest.approx((200.0 + 125.0) / 400.0)
  with pytest.raises(ValueError, match="no NIfTI images"):
    nifti.make("train", f"root={tmp_path / 'missing'}")


@pytest.mark.parametrize("dataset,crop,classes", [("synapse", (64, 128, 128), 14), ("acdc", (16, 160, 160), 4)])
def test_paper_configs_build_at_their_crop_size(dataset, crop, classes):
  from effjax.models import dformer
  c = cfg.load_config_file(os.path.join(REPO, f"configs/dformer.py:dataset={dataset},root=/data"))
  assert f"patch3d(size=({','.join(map(str, crop))})" in c.data.pp_train[0] and c.model.num_classes == classes
  assert tuple(c.evaluator.dice.patch_size) == crop  # sliding windows of the training patch
  model = dformer.Model(**c.model)
  x = jax.ShapeDtypeStruct((1, *crop, 1), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  heads = jax.eval_shape(model.apply, params, x)
  assert heads[0].shape == (1, *crop, classes) and len(heads) == len(c.task.deep_supervision_weights)
  eval_crop = tuple(int(n) for n in nifti.options(c.data.source.partition(":")[2]).eval_crop.split("x"))
  jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, *eval_crop, 1), jnp.float32))  # the
  # trainer initialises from an evaluation batch: the evaluated volume size must suit the model too
