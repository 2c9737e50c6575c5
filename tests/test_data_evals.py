"""Per-evaluation data and cadence (config.evals, effjax/train_config.py:eval_spec) through the trainer."""
import ml_collections
import pytest

from effjax import config as cfg, metrics, train, train_config
from effjax.data import pipeline

from trainer_utils import tiny_vit_config


def _with_train_subset(**spec):
  c = tiny_vit_config(total_steps=10, eval_every_steps=-1)
  c.evaluators = ("classification", "train_subset")
  c.evals = ml_collections.ConfigDict({"train_subset": dict(type="classification", split="train", examples=32,
                                                            every_steps=5, **spec)})
  return c


def test_eval_spec_defaults_and_overrides():
  c = _with_train_subset(pp=("normalize(mean=0.5,std=0.5)",))
  kind, data, every = train_config.eval_spec(c, "classification")
  assert (kind, data.eval_split, data.eval_examples, every) == ("classification", "test", 64, -1)
  assert data.pp_eval == c.data.pp_eval
  kind, data, every = train_config.eval_spec(c, "train_subset")
  assert (kind, data.source, data.eval_split, data.eval_examples, every) == (
      "classification", "mnist5k", "train", 32, 5)
  assert tuple(data.pp_eval) == ("normalize(mean=0.5,std=0.5)",) and c.data.eval_split == "test"


def test_eval_config_errors():
  c = _with_train_subset(splitt="train")
  with pytest.raises(cfg.ConfigError, match="config.evals.train_subset: unknown key"):
    train_config.eval_spec(c, "train_subset")
  c = _with_train_subset()
  c.evaluators = ("classification",)
  with pytest.raises(cfg.ConfigError, match="config.evals.train_subset is not listed in config.evaluators"):
    train_config.validate(c, 1)
  c = _with_train_subset(pp=("flip", "normalize"))
  _, data, _ = train_config.eval_spec(c, "train_subset")
  with pytest.raises(cfg.ConfigError, match=r"must be deterministic; \['flip'\]"):
    next(pipeline.eval_batches(data, 8, None))


@pytest.mark.slow
def test_two_evaluations_with_their_own_split_size_and_cadence(tmp_path):
  result = train.train_and_evaluate(_with_train_subset(), str(tmp_path))
  rows = metrics.read_jsonl(str(tmp_path))
  subset = {r["step"]: r for r in rows if "eval/train_subset/accuracy" in r}
  default = {r["step"]: r for r in rows if "eval/accuracy" in r}
  assert sorted(subset) == [5, 10] and sorted(default) == [10]
  assert subset[10]["eval/train_subset/examples"] == 32 and default[10]["eval/examples"] == 64
  assert result["eval/train_subset/examples"] == 32 and result["eval/examples"] == 64
  assert all("train/data_wait_frac" in r for r in rows if "train/loss" in r)
