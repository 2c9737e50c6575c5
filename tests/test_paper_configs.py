"""Dry run of every paper config: its real train and eval pipelines on an ImageNet-shaped tfds dataset (JPEGs of
varied sizes and aspect ratios, imagenet2012's text feature file_name, ArrayRecord, written offline by
tests/tfds_photos.py; CIFAR configs on a CIFAR-shaped one), then two train steps with the model shrunk, so that no
paper config can fail at its first batch on the real dataset.

Only the model's size (depth / width) is reduced; data ops, task, optimizer and schedule are the config's own. Batch 8
(one example per fake CPU device) of 16 training and 8 validation images. The evaluation pipeline is run here, but
the evaluators are not compiled, to keep the suite fast (the runlocal tests run every evaluator).
"""
import dataclasses
import os

import jax
import numpy as np
import pytest
import tfds_photos

from effjax import config as cfg, train
from effjax.data import pipeline
from effjax.models import halonet, resnet

import trainer_utils

DATASET = f"tfds:{tfds_photos.IMAGENET_NAME}"


def _stage_widths(model_cls, widths):
  """{"widths" or "channels": widths}: whichever name the model's stage-width field has."""
  names = {f.name for f in dataclasses.fields(model_cls)}
  return {"widths" if "widths" in names else "channels": widths}


_VIT = dict(width=32, depth=1, num_heads=2)
# config spec -> (model fields shrinking it, other dotted keys); the dataset is set through the config's argument.
CONFIGS = {
    "convnext.py:variant=tiny": (dict(depths=(1, 1, 1, 1), widths=(8, 16, 16, 16), patch_size=7), {}),
    "convnext.py:variant=tiny,dcls=True": (dict(depths=(1, 1, 1, 1), widths=(8, 16, 16, 16), patch_size=7), {}),
    "crate.py:variant=B": (_VIT, {}),
    "crate_alpha.py:variant=B/16": (dict(_VIT, num_classes=1000), {}),
    "crate_alpha.py:variant=B/16,stage=finetune": (_VIT, {}),
    "crate_finetune.py:variant=B,num_classes=1000": (_VIT, {"data.eval_split": "validation"}),
    "crate_mae.py:variant=B": (dict(_VIT, decoder_depth=1), {}),
    "fasternet.py:variant=t0": (dict(width=8, depths=(1, 1, 1, 1), feature_dim=32), {}),
    "fit.py": (dict(layers="(1)1(1)", latents_per_group=2, width=16, latent_width=16, num_heads=2, latent_num_heads=2),
               {}),
    "fit_diffusion.py:res=64": (dict(layers="(1)1(1)", latents_per_group=2, width=16, latent_width=16, num_heads=2,
                                     latent_num_heads=2), {}),
    "halonet.py:variant=halonet26t": (dict(blocks=("b", "b", "a", "a"), stem_width=8,
                                           **_stage_widths(halonet.HaloNet, (32, 32, 64, 64))), {}),
    "inception_next.py:variant=tiny": (dict(depths=(1, 1, 1, 1), widths=(16, 16, 16, 16)), {}),
    "resnet.py:variant=resnetrs50": (dict(layers=(1, 1, 1, 1), stem_width=8,
                                          **_stage_widths(resnet.ResNet, (8, 8, 16, 16))), {}),
    "resnet.py:variant=ecaresnet50d": (dict(layers=(1, 1, 1, 1), stem_width=8,
                                            **_stage_widths(resnet.ResNet, (8, 8, 16, 16))), {}),
    "tvconv.py:variant=x1_0": (dict(blocks=((1, 8, 1, 1), (2, 16, 1, 2)), stem_width=8, last_width=32, tvconv_hidden=4,
                                    tvconv_hidden_layers=1), {}),
    "vit.py:variant=S": (dict(_VIT, mlp_dim=64), {}),
    "terminator.py:dataset=cifar10": (dict(expansions=(4,), skips=((),), global_layers=(1,), dropout=(0.0,),
                                           branch=dict(omega_0=2000.0, local_sizes=(3, 9, 5, 7), impl="auto",
                                                       global_hidden=16, local_hidden=8, channel_hidden=8,
                                                       interact_channel_hidden=8, interact_spatial_hidden=16)),
                                      {"data.source": f"tfds:{tfds_photos.CIFAR_NAME}"}),
}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tfds")
  tfds_photos.prepare(directory, tfds_photos.EffjaxTestImagenet)
  tfds_photos.prepare(directory, tfds_photos.EffjaxTestCifar)
  return directory


def _config(spec, keys):
  """The config, on the ImageNet-shaped dataset through its `dataset` argument unless `keys` sets data.source."""
  path, _, arg = spec.partition(":")
  if "data.source" not in keys:
    arg = ",".join(filter(None, [arg, f"dataset={DATASET}"]))
  return cfg.load_config_file(os.path.join(trainer_utils.REPO, "configs", f"{path}:{arg}"))


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(CONFIGS))
def test_paper_config_dry_run(spec, tfds_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
  model, keys = CONFIGS[spec]
  c = _config(spec, keys)
  # The pipelines as the config defines them: every training and evaluation batch has one shape (ResNet-RS trains
  # and evaluates at different sizes).
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()), ("data",)),
                                        jax.sharding.PartitionSpec("data"))
  c.update_from_flattened_dict(dict(keys))
  data = c.data
  train_data = pipeline.train_data(data, 8, sharding, seed=0)
  batch = next(train_data)
  train_data.close()
  size = batch["image"].shape[1]
  assert batch["image"].shape == (8, size, size, 3) and batch["image"].dtype == np.float32
  assert np.isfinite(np.asarray(batch["image"])).all()
  batches = list(pipeline.eval_batches(data, 8, sharding))
  size = batches[0]["image"].shape[1]
  assert len(batches) == 1 and batches[0]["image"].shape == (8, size, size, 3) and size >= 32
  # Two train steps with the model shrunk.
  for key, value in model.items():
    if isinstance(value, dict):
      c.model[key].update(value)
    else:
      c.model[key] = value
  c.batch_size, c.eval_batch_size, c.data.eval_examples = 8, 8, 8
  c.total_epochs, c.total_steps, c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = -1.0, 2, 1, -1, 2
  c.progress_bar, c.evaluators = False, ()
  result = train.train_and_evaluate(c, str(tmp_path))
  assert result["step"] == 2 and np.isfinite(result["train/loss"])
