"""FIT configs through the real trainer: diffusion (loss falls, sample PNGs), byte LM, classifier."""
import os

import numpy as np
import pytest

from effjax import config as cfg, metrics, train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(spec, **overrides):
  c = cfg.load_config_file(os.path.join(REPO, spec))
  c.mesh = (("data", 1),)
  c.progress_bar = False
  c.log_every_steps = 1
  c.eval_every_steps = -1
  c.checkpoint_every_steps = 1000
  c.update_from_flattened_dict(overrides)
  return c


def _losses(workdir):
  return [r["train/loss"] for r in metrics.read_jsonl(workdir) if "train/loss" in r]


@pytest.mark.slow
def test_diffusion_runlocal_trains_and_writes_samples(tmp_path):
  c = _load("configs/fit_diffusion.py:runlocal", total_steps=25, batch_size=16, eval_batch_size=64,
            **{"data.eval_examples": 64, "optimizer.warmup_steps": 5, "evaluator.samples.num_samples": 4,
               "evaluator.samples.steps": 4})
  result = train.train_and_evaluate(c, str(tmp_path))
  losses = _losses(str(tmp_path))
  assert len(losses) == 25 and np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
  assert np.isfinite(result["eval/loss"])
  for method in ("ddim", "ddpm"):
    assert (tmp_path / "samples" / f"step_25_{method}.png").exists()


@pytest.mark.slow
def test_lm_and_classifier_runlocal_train(tmp_path):
  lm = _load("configs/fit_lm.py:runlocal", total_steps=20, batch_size=16, eval_batch_size=16,
             **{"data.eval_examples": 16, "optimizer.warmup_steps": 5, "evaluator.text_samples.num_tokens": 8})
  result = train.train_and_evaluate(lm, str(tmp_path / "lm"))
  losses = _losses(str(tmp_path / "lm"))
  assert losses[-1] < losses[0] - 1.0 and result["eval/bits_per_token"] < 8.0
  assert result["eval/bits_per_token"] == pytest.approx(result["eval/loss"] / np.log(2))
  assert (tmp_path / "lm" / "text_samples" / "step_20.txt").exists()
  clf = _load("configs/fit.py:runlocal", total_steps=30, batch_size=32, eval_batch_size=100,
              **{"data.eval_examples": 200, "optimizer.warmup_steps": 5})
  result = train.train_and_evaluate(clf, str(tmp_path / "clf"))
  losses = _losses(str(tmp_path / "clf"))
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) and result["eval/accuracy"] > 0.2
