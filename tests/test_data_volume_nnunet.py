"""nnU-Net v1's 3-D augmentations in effjax/data/volume.py against batchgenerators' own outputs
(tests/data/nnunet_aug.npz, written by tests/data/make_nnunet_aug_goldens.py with every random factor pinned)."""
import json
import os

import numpy as np
import pytest

from effjax.data import ops, volume

GOLDEN = np.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "nnunet_aug.npz"))
META = json.loads(str(GOLDEN["meta"]))


def _example():
  return {"image": GOLDEN["image"].transpose(1, 2, 3, 0).copy(), "label": GOLDEN["label"].copy()}


def _channels_first(example):
  return example["image"].transpose(3, 0, 1, 2)


@pytest.mark.parametrize("i", range(len(META["spatial"])))
def test_spatial3d_equals_batchgenerators(i):
  """Rotation about all three axes and/or scaling in one resampling: cubic image, per-class linear labels."""
  angle, scale = META["spatial"][i]
  out = volume.spatial3d(_example(), np.random.default_rng(0), p_rot=float(angle is not None),
                         angle=(angle or 0.0, angle or 0.0), p_scale=float(scale is not None),
                         scale_min=scale or 1.0, scale_max=scale or 1.0)
  np.testing.assert_allclose(_channels_first(out), GOLDEN[f"spatial{i}/image"], rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(out["label"], GOLDEN[f"spatial{i}/label"])
  assert not np.array_equal(out["label"], GOLDEN["label"])  # the case moves voxels


def test_intensity_ops_equal_batchgenerators():
  cases = [(f"gamma{i}", "gamma3d", dict(gamma=(kw["gamma"],) * 2, invert=kw["invert"],
                                         retain_stats=kw["retain_stats"])) for i, kw in enumerate(META["gamma"])]
  cases += [("contrast0", "contrast3d", dict(factor=(META["contrast"][0]["factor"],) * 2)),
            ("brightness0", "brightness3d", dict(multiplier=(META["brightness"][0]["multiplier"],) * 2)),
            ("blur0", "blur3d", dict(sigma=(META["blur"][0]["sigma"],) * 2, p_per_channel=1.0)),
            ("lowres0", "lowres3d", dict(zoom=(META["lowres"][0]["zoom"],) * 2, p_per_channel=1.0))]
  for key, name, kw in cases:
    out = getattr(volume, name)(_example(), np.random.default_rng(0), p=1.0, **kw)
    np.testing.assert_allclose(_channels_first(out), GOLDEN[f"{key}/image"], rtol=1e-5, atol=1e-5, err_msg=key)
    assert not np.allclose(_channels_first(out), GOLDEN["image"]), key


def test_noise3d_uses_the_drawn_value_as_standard_deviation():
  ex = {"image": np.zeros((16, 16, 16, 2), np.float32), "label": np.zeros((16, 16, 16), np.int32)}
  out = volume.noise3d(ex, np.random.default_rng(0), p=1.0, variance=(0.05, 0.05))["image"]
  assert abs(out.std() - 0.05) < 0.002 and abs(out.mean()) < 0.002


@pytest.mark.parametrize("spec", ["spatial3d(p_rot=0.0,p_scale=0.0)", "noise3d(p=0.0)", "blur3d(p=0.0)",
                                  "brightness3d(p=0.0)", "contrast3d(p=0.0)", "lowres3d(p=0.0)", "gamma3d(p=0.0)"])
def test_ops_parse_by_name_and_skip_with_probability_zero(spec):
  _, fn, is_random = ops.parse(spec)
  ex = _example()
  assert is_random and fn(ex, np.random.default_rng(0)) is ex


def test_dformer_recipe_runs_nnunet_transforms_in_order():
  from effjax import config as cfg

  import trainer_utils
  c = cfg.load_config_file(f"{trainer_utils.REPO}/configs/dformer.py:dataset=synapse,root=/nonexistent")
  names = [op.partition("(")[0] for op in c.data.pp_train]
  assert names == ["patch3d", "spatial3d", "noise3d", "blur3d", "brightness3d", "contrast3d", "lowres3d", "gamma3d",
                   "gamma3d", "mirror3d"]
  assert "invert=True" in c.data.pp_train[7] and "p=0.1" in c.data.pp_train[7] and "p=0.3" in c.data.pp_train[8]
