"""Progressive resolution (config.data.pp_train_schedule): batches switch ops by epoch, the trainer recompiles."""
import numpy as np
import pytest

from effjax import config as cfg, metrics, sharding, train, train_config
from effjax.data import pipeline

import trainer_utils

# 40 examples, global batch 8: epoch 0.5 is position 20, so batches 0-2 (first positions 0, 8, 16) are at 8 px
# and batches 3, 4, ... (24, 32, 40 = the next epoch, ...) at 6 px.
SCHEDULE = ((0.5, ("resize(size=8)",)),)


def _data_config(**kw):
  c = train_config.base_config().data
  c.source = "synthetic:size=4,channels=1,num_classes=2,examples=40"
  c.train_split = "train"
  c.pp_train = ("resize(size=6)",)
  c.pp_train_schedule = SCHEDULE
  c.prefetch = 0
  c.update(kw)
  return c


def test_batches_switch_at_the_scheduled_epoch_and_resume_in_their_stage():
  spec = sharding.batch_sharding(sharding.make_mesh((("data", -1),)))
  data = pipeline.train_data(_data_config(), 8, spec, seed=0)
  assert data.element_spec["image"].shape == (8, 8, 1)
  sizes = [next(data)["image"].shape[1] for _ in range(6)]
  assert sizes == [8, 8, 8, 6, 6, 6]
  resumed = pipeline.train_data(_data_config(), 8, spec, seed=0)
  resumed.set_state({"next_batch": 3})
  assert resumed.element_spec["image"].shape == (6, 6, 1)
  assert next(resumed)["image"].shape == (8, 6, 6, 1)


@pytest.mark.parametrize("schedule, match", [
    (((0.0, ("flip",)),), "positive and increasing"),
    (((2.0, ("flip",)), (1.0, ("flip",))), "positive and increasing"),
    (((1.0, "flip"),), r"pp_train_schedule\[0\] must be \(until_epoch"),
])
def test_bad_schedules_are_named(schedule, match):
  with pytest.raises(cfg.ConfigError, match=match):
    pipeline.train_data(_data_config(pp_train_schedule=schedule), 8, None, seed=0)


def test_trainer_recompiles_the_step_per_resolution(tmp_path):
  # a tiny FasterNet (resolution-agnostic) on MNIST: 16 px for the first 32 of 4000 examples (2 batches of 16),
  # then the config's 32 px
  c = cfg.load_config_file(f"{trainer_utils.REPO}/configs/fasternet.py:runlocal")
  c.model.update(dict(depths=(1, 1), width=8, feature_dim=32))
  c.batch_size, c.eval_batch_size, c.data.eval_examples = 16, 16, 16
  c.total_steps, c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 4, 1, -1, 4
  c.optimizer.warmup_steps, c.progress_bar, c.evaluators = 1, False, ()
  c.data.pp_train_schedule = ((32 / 4000, tuple(op.replace("size=32", "size=16") for op in c.data.pp_train)),)
  result = train.train_and_evaluate(c, str(tmp_path))
  assert result["step"] == 4 and np.isfinite(result["train/loss"])
  rows = [r for r in metrics.read_jsonl(str(tmp_path)) if "train/loss" in r]
  flops = [r["train/flops_per_s"] * r["train/step_time_s"] for r in rows]  # per step (one step per row)
  # steps 1-2 at 16 px, 3-4 at 32 px: four times the pixels, more than three times the FLOPs
  assert flops[0] == pytest.approx(flops[1], rel=1e-3) and flops[2] == pytest.approx(flops[3], rel=1e-3)
  assert flops[2] > 3 * flops[1]
