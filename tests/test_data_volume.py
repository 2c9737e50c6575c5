"""3-D training ops (nnU-Net's patch sampling, mirroring; the others: test_data_volume_nnunet.py) and the NIfTI
source's Synapse split."""
import os
import re

import numpy as np
import pytest

from effjax.data import ops, volume
from effjax.data.sources import nifti


def _example(shape=(6, 10, 8)):
  label = np.zeros(shape, np.int32)
  label[1:3, 7:9, 6:8] = 2  # one small foreground object near a corner
  image = (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1)[..., None]  # voxel id + 1, never 0
  return {"image": image, "label": label}


def test_patch3d_windows_the_volume_and_pads_with_zeros():
  ex = _example()
  rng = np.random.default_rng(0)
  for _ in range(20):
    out = volume.patch3d(ex, rng, size=(4, 12, 4), foreground=0.0)  # H 10 < 12: 2 voxels of padding somewhere
    assert out["image"].shape == (4, 12, 4, 1) and out["label"].shape == (4, 12, 4)
    ids = out["image"][..., 0].astype(int) - 1
    inside = ids >= 0
    assert inside.sum() == 4 * 10 * 4  # every H row of the volume, shifted by at most the padding
    # each kept voxel carries its own label (image and label windowed together)
    np.testing.assert_array_equal(out["label"][inside], ex["label"].reshape(-1)[ids[inside]])
    assert (out["label"][~inside] == 0).all()


def test_patch3d_foreground_oversampling():
  ex = _example((16, 32, 32))
  ex["label"][:] = 0
  ex["label"][14:16, 30:32, 0:2] = 1  # 8 voxels in a corner of 16·32·32
  rng = np.random.default_rng(1)
  hits = lambda p: np.mean([volume.patch3d(ex, rng, size=(4, 8, 8), foreground=p)["label"].any() for _ in range(200)])
  assert hits(1.0) == 1.0
  assert hits(0.0) < 0.1  # a uniform patch rarely sees the corner
  assert 0.35 < hits(0.5) < 0.65


def test_mirror3d_flips_image_and_label_together():
  ex = _example()
  flips = set()
  for seed in range(16):
    out = volume.mirror3d(ex, np.random.default_rng(seed))
    ids = out["image"][..., 0].astype(int) - 1
    np.testing.assert_array_equal(out["label"], ex["label"].reshape(-1)[ids])
    flips.add(ids.tobytes())
  assert len(flips) > 4  # several of the 8 flip combinations drawn


def test_volume_ops_parse_by_name():
  name, fn, is_random = ops.parse("patch3d(size=(4,8,8),foreground=0.5)")
  assert name == "patch3d" and is_random
  assert fn(_example((6, 10, 8)), np.random.default_rng(0))["label"].shape == (4, 8, 8)


def test_nifti_synapse_split_by_case_number(tmp_path):
  import nibabel
  os.makedirs(tmp_path / "imagesTr")
  os.makedirs(tmp_path / "labelsTr")
  for case in (*range(1, 11), *range(21, 41)):  # the 30 labelled Synapse cases, as released (img / label names)
    volume_ = nibabel.Nifti1Image(np.full((4, 6, 3), float(case), np.float32), np.eye(4))
    nibabel.save(volume_, str(tmp_path / "imagesTr" / f"img{case:04d}.nii.gz"))
    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 6, 3), np.uint8), np.eye(4)),
                 str(tmp_path / "labelsTr" / f"label{case:04d}.nii.gz"))
  arg = f"root={tmp_path};crop=full;eval_crop=4x8x8;norm=none;classes=14;split=synapse"
  train, test = nifti.make("train", arg), nifti.make("test", arg)
  cases = lambda source: sorted(int(source[i]["image"].max()) for i in range(len(source)))
  assert cases(test) == [1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38]
  assert len(train) == 18 and not set(cases(train)) & set(cases(test))
  assert train[0]["image"].shape == (3, 6, 4, 1) and test[0]["image"].shape == (4, 8, 8, 1)  # whole / fitted
  os.remove(tmp_path / "imagesTr" / "img0008.nii.gz")
  with pytest.raises(ValueError, match="split=synapse expects the 30 labelled Synapse cases"):
    nifti.make("train", arg)


def test_dformer_synapse_recipe_trains_and_evaluates_by_sliding_window(tmp_path):
  """configs/dformer.py:dataset=synapse end to end on 30 tiny Synapse-named volumes: whole-volume source, patch3d /
  nnU-Net's augmentations, two train steps, then the Dice evaluator's sliding windows over the fitted test volumes."""
  import nibabel

  from effjax import config as cfg, train

  import trainer_utils
  root = tmp_path / "Synapse"
  os.makedirs(root / "imagesTr")
  os.makedirs(root / "labelsTr")
  rng = np.random.default_rng(0)
  for case in (*range(1, 11), *range(21, 41)):
    shape = (20 + case % 5, 18, 6 + case % 3)  # NIfTI (x, y, z), varied sizes
    label = np.zeros(shape, np.uint8)
    label[4:12, 5:12, 1:4] = 1 + case % 3
    image = (label * 100.0 + rng.normal(0, 10, shape)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(image, np.eye(4)), str(root / "imagesTr" / f"img{case:04d}.nii.gz"))
    nibabel.save(nibabel.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / f"label{case:04d}.nii.gz"))
  c = cfg.load_config_file(f"{trainer_utils.REPO}/configs/dformer.py:dataset=synapse,root={root}")
  c.model.update(dict(num_classes=4, width=8, depths=(2, 2), num_heads=(1, 1), intervals=(8, 4)))
  source = re.sub(r"eval_crop=\d+x\d+x\d+", "eval_crop=8x24x24", c.data.source).replace("classes=14", "classes=4")
  assert "crop=full;" in source and "eval_crop=8x24x24" in source and "classes=4" in source
  c.data.source = source
  c.data.pp_train = tuple(op.replace("size=(64,128,128)", "size=(4,16,16)") for op in c.data.pp_train)
  c.evaluator.dice.patch_size, c.evaluator.dice.mirror_axes = (4, 16, 16), (0,)  # one mirror: a smaller program
  c.batch_size, c.eval_batch_size = 8, 8
  c.total_steps, c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 2, 1, -1, 2
  c.evaluator.dice.png_volumes, c.progress_bar = 0, False
  result = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert result["step"] == 2 and np.isfinite(result["train/loss"])
  assert result["eval/volumes"] == 12 and np.isfinite(result["eval/dice_mean"])
