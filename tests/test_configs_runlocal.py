"""Every config file's `runlocal` variant through the real trainer, shrunk to two steps on 8 fake devices.

One parametrized test over configs/ (timm's tests/test_models.py is the model: one test body over every model, a
table for the exceptions) instead of one trainer run per model test. SHRINK makes a config's model smaller so
that the compile stays short; its architecture, task, evaluators, data source and optimizer stay its own.
CHECKS holds what a config's own evaluators or losses must report beyond trainer_utils' common checks. Only
the runlocal variants run here; the paper-scale variants have their own dry run on a generated ImageNet-shaped
dataset. The FIT configs train for 20-30 steps in tests/models/test_fit_training.py (TRAINED_ELSEWHERE) instead.
"""
import os

import numpy as np
import pytest

from effjax import config as cfg

import trainer_utils

CONFIGS = os.path.join(trainer_utils.REPO, "configs")
NO_RUNLOCAL = {"crate_finetune.py": "fine-tunes an ImageNet checkpoint at 224 px; test_train's init_from test "
                                    "covers the loading"}
# Runlocal configs that another test already trains through the trainer, for longer and with its own checks.
TRAINED_ELSEWHERE = {f: "tests/models/test_fit_training.py" for f in ("fit.py", "fit_diffusion.py", "fit_lm.py")}
SMALL_TERMINATOR = (dict(expansions=(12,), skips=((),), global_layers=(1,), dropout=(0.05,)),  # one block
                    {"model.branch.global_hidden": 8, "model.branch.local_hidden": 8, "model.branch.channel_hidden": 8,
                     "model.branch.interact_channel_hidden": 4, "model.branch.interact_spatial_hidden": 8})
SHRINK = {  # spec -> (model fields, dotted config keys)
    "convnext.py:runlocal": (dict(depths=(1, 1), widths=(8, 16)), {}),
    "crate.py:runlocal": (dict(patch_size=7, width=32, depth=2, num_heads=2), {}),
    "crate_alpha.py:runlocal": (dict(width=32, depth=2, num_heads=2), {}),
    "crate_mae.py:runlocal": (dict(patch_size=7, width=16, depth=1, num_heads=2, decoder_depth=1), {}),
    "dformer.py:runlocal": (dict(width=8, depths=(2, 2), num_heads=(1, 1), intervals=(8, 4)),  # 2 stages: 1 head
                            {"task.deep_supervision_weights": (1.0,),
                             "data.source": "ellipsoids:depth=8;height=32;width=32;train=16;test=8"}),
    "fasternet.py:runlocal": (dict(depths=(1, 1), width=8, feature_dim=16), {}),
    "halonet.py:runlocal": (dict(widths=(8, 16)), {}),
    "inception_next.py:runlocal": (dict(depths=(1, 1), widths=(8, 16)), {}),
    "p3d.py:runlocal": (dict(layers=(1,), width=4), {"data.source": "moving_digits:frames=4;size=28"}),
    "resnet.py:runlocal": (dict(layers=(1, 1), widths=(4, 8)), {}),
    "terminator.py:runlocal": SMALL_TERMINATOR,
    "tvconv.py:runlocal": (dict(blocks=((1, 8, 1, 1), (2, 16, 1, 2)), stem_width=8, last_width=32, tvconv_hidden=4,
                                tvconv_hidden_layers=1), {}),
    "vit.py:runlocal": (dict(patch_size=7, width=32, depth=2, num_heads=2, mlp_dim=64), {}),
}


def _crate(result, workdir):
  assert result["eval/coding_rate/layer1"] > 0 and 0.0 < result["eval/sparsity/layer1"] < 1.0
  assert os.path.exists(workdir / "coding_rate" / "step_2.png")


def _crate_mae(result, workdir):
  assert result["eval/mse_masked"] > 0 and result["eval/examples"] == 32 and "eval/coding_rate/layer0" in result
  assert os.path.exists(workdir / "reconstruction" / "step_2.png")


def _dformer(result, workdir):
  assert result["eval/volumes"] == 8
  per_class = [result[f"eval/dice_class{k}"] for k in range(1, 4)]  # runlocal: 3 object classes + background
  assert result["eval/dice_mean"] == pytest.approx(np.nanmean(per_class))
  assert os.path.exists(workdir / "dice" / "step_000002.png")


def _terminator(result, workdir):
  assert result["train/reg_loss"] > 0 and result["train/slow_loss"] == 0.0  # one block: no slow-loss pairs


CHECKS = {"crate.py:runlocal": _crate, "crate_mae.py:runlocal": _crate_mae, "dformer.py:runlocal": _dformer,
          "terminator.py:runlocal": _terminator}
FILES = sorted(f for f in os.listdir(CONFIGS) if f.endswith(".py"))
SPECS = [f"{f}:runlocal" for f in FILES if f not in NO_RUNLOCAL and f not in TRAINED_ELSEWHERE]


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS)
def test_runlocal_config_trains_two_steps(spec, tmp_path):
  model, keys = SHRINK.get(spec, ({}, {}))
  result = trainer_utils.train_runlocal_two_steps(spec, tmp_path, model=model, keys=keys)
  CHECKS.get(spec, lambda result, workdir: None)(result, tmp_path)


def test_the_tables_name_real_configs_and_only_files_without_runlocal_are_left_out():
  assert len(FILES) > 10
  for spec in list(SHRINK) + list(CHECKS):
    assert spec in SPECS, spec
  for name in NO_RUNLOCAL:
    with pytest.raises(cfg.ConfigError, match="runlocal"):
      cfg.load_config_file(os.path.join(CONFIGS, f"{name}:runlocal"))
  for name, test in TRAINED_ELSEWHERE.items():
    assert f"configs/{name}:runlocal" in open(os.path.join(trainer_utils.REPO, test)).read(), (name, test)
