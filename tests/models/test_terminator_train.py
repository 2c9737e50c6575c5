"""The Terminator configs (their trainer runs are in tests/test_configs_runlocal.py)."""
import os

import numpy as np
import pytest

from effjax import components, config as cfg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
@pytest.mark.parametrize("spec", ["dataset=smnist", "dataset=pmnist,stats=accumulated", "dataset=scifar10",
                                  "dataset=cifar10", "dataset=cifar100", "dataset=smnist,runlocal",
                                  "dataset=pmnist,runlocal", "dataset=cifar10,runlocal"])
def test_configs_build_their_models(spec):
  c = cfg.load_config_file(os.path.join(REPO, "configs", f"terminator.py:{spec}"))
  components.load("models", c.model_name).Model(**c.model)
  components.load("tasks", c.task_name).Task(c)
  betas = (0.75, 0.99) if "cifar100" in spec else (0.5, 0.95)  # each dataset's official command
  assert c.optimizer.name == "kar3" and (c.optimizer.b1, c.optimizer.b2) == betas
  assert c.task.label_smoothing == 0.09


def test_paper_settings():
  c = cfg.load_config_file(os.path.join(REPO, "configs/terminator.py:dataset=cifar10"))
  assert (c.optimizer.lr, c.batch_size, c.total_epochs, c.optimizer.warmup_epochs) == (0.001215, 64, 100.0, 8.0)
  assert c.optimizer.schedule == "warmup_cosine" and c.optimizer.weight_decay == 0.0
  assert tuple(c.model.dropout) == (0.0, 0.05, 0.05, 0.05, 0.05) and c.model.stats_mode == "batch"
  assert c.task.l2_reg == 5e-5
  c100 = cfg.load_config_file(os.path.join(REPO, "configs/terminator.py:dataset=cifar100"))  # its own README command
  assert (c100.optimizer.lr, c100.optimizer.b1, c100.optimizer.b2, c100.task.l2_reg) == (0.00120925, 0.75, 0.99, 4e-5)
  with pytest.raises(cfg.ConfigError, match="unknown Terminator dataset"):
    cfg.load_config_file(os.path.join(REPO, "configs/terminator.py:dataset=imagenet"))


def test_smnist_source_sequences_and_fixed_permutation():
  from effjax.data.sources import mnist5k, smnist
  images = mnist5k.make("test")
  seq, perm_a, perm_train = smnist.make("test"), smnist.make("test", "permuted"), smnist.make("train", "permuted")
  assert seq.info["image_shape"] == (784, 1) and len(seq) == len(images) == 1000
  np.testing.assert_array_equal(seq[7]["image"], images[7]["image"].reshape(784, 1))
  order = smnist.permutation(0)
  np.testing.assert_array_equal(perm_a[7]["image"], seq[7]["image"][order])
  np.testing.assert_array_equal(perm_train.order, perm_a.order)          # one permutation for all splits
  np.testing.assert_array_equal(smnist.make("test", "permuted")[3]["image"], perm_a[3]["image"])
  assert not np.array_equal(smnist.make("test", "permuted,seed=1").order, order)
  with pytest.raises(ValueError, match="base"):
    smnist.make("test", "base=cifar")


def test_1d_runlocal_config_feeds_pixel_sequences():
  """The 1D runlocal config's own pipelines give [batch, 784, 1] sequences (its model and task are trained in
  tests/models/test_terminator.py; the trainer runs the 2D runlocal config in tests/test_configs_runlocal.py)."""
  import jax

  from effjax.data import pipeline
  from effjax.data.sources import smnist
  c = cfg.load_config_file(os.path.join(REPO, "configs/terminator.py:dataset=pmnist,runlocal"))
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()), ("data",)),
                                        jax.sharding.PartitionSpec("data"))
  train_data = pipeline.train_data(c.data, 8, sharding, seed=0)
  batch = next(train_data)
  train_data.close()
  assert batch["image"].shape == (8, 784, 1) and batch["label"].shape == (8,)
  evaluated = next(iter(pipeline.eval_batches(c.data, 8, sharding)))
  assert evaluated["image"].shape == (8, 784, 1)
  order = smnist.permutation(0)  # the fixed permutation, normalized as the config says
  expected = (smnist.make("test")[0]["image"][order].astype(np.float32) / 255.0 - 0.1307) / 0.3081
  np.testing.assert_allclose(np.asarray(evaluated["image"][0]), expected, rtol=1e-5, atol=1e-5)
