"""effjax.convert: official -> effjax -> official is exact on the golden files; the command writes both
directions; fine-tuning from an official-format file through the CLI at another resolution."""
import subprocess
import sys
from unittest import mock

import jax
import numpy as np
import pytest

from effjax import checkpoint, convert, metrics, weights
from effjax.models import crate
from effjax.weights import posemb

import trainer_utils
from conftest import golden_path


def _golden(name, keep=lambda k: True):
  return {k: v for k, v in weights.read(golden_path(name)).items() if keep(k)}


CASES = {  # model module -> official weights of one model in a golden file
    "crate": lambda: _golden("crate_small"),
    "crate_alpha": lambda: _golden("crate_alpha_small"),
    "crate_mae": lambda: _golden("crate_ae_small"),
    "fit": lambda: _golden("fit_small", lambda k: k.startswith("fit/")),
    "fit_denoiser": lambda: _golden("fit_small", lambda k: k.startswith("fit_denoiser/")),
    "dformer": lambda: _golden("dformer_small", lambda k: k.startswith(("model_down.", "final."))),
}


@pytest.mark.parametrize("model_name", sorted(CASES))
def test_round_trip_through_golden_files_is_exact(model_name):
  official = CASES[model_name]()
  params = weights.converter(model_name)(official)
  # The template gives names and shapes; zeros except the fixed sin-cos buffers CRATE-MAE's converter checks.
  template = {k: v if k.endswith("pos_embed") else np.zeros_like(v) for k, v in official.items()}
  back, kept = convert.to_official(params, model_name, template)
  if model_name == "crate_mae":  # fixed sin-cos buffers and the unused decoder_embed are not params
    assert sorted(kept) == ["decoder_embed.bias", "decoder_embed.weight", "decoder_pos_embed", "pos_embed"]
  else:
    assert kept == []
  for k in official:
    assert back[k].dtype == official[k].dtype
    if k not in kept:
      np.testing.assert_array_equal(back[k], official[k], err_msg=k)


def test_inverse_refuses_a_converter_that_computes():
  official = _golden("crate_small")

  scaled = lambda sd: jax.tree.map(lambda v: v * 2.5, crate.convert_official(sd))
  with mock.patch.object(weights, "converter", lambda name: scaled):
    with pytest.raises(ValueError, match="not a rearrangement"):
      convert.inverse_map("crate", official)


def _convert_cli(*args):
  return subprocess.run([sys.executable, "-m", "effjax.convert", *args], cwd=trainer_utils.REPO,
                        capture_output=True, text=True, timeout=300)


def test_command_official_to_effjax_and_back(tmp_path):
  import torch
  official = _golden("crate_small")
  pth = str(tmp_path / "crate.pth")
  weights.write(pth, official)
  ckpt = str(tmp_path / "ckpt")
  result = _convert_cli("--model", "crate", "--input", pth, "--output", ckpt)
  assert result.returncode == 0, result.stderr[-2000:]
  restored = checkpoint.restore_params(ckpt)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(crate.convert_official(official))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  out = str(tmp_path / "back.pth")
  result = _convert_cli("--model", "crate", "--input", ckpt, "--output", out, "--template", pth)
  assert result.returncode == 0, result.stderr[-2000:]
  loaded = torch.load(out, weights_only=True)  # what the official code's load_state_dict receives
  assert sorted(loaded) == sorted(official)
  for k, v in official.items():
    np.testing.assert_array_equal(loaded[k].numpy(), v)


def test_command_errors_are_one_line(tmp_path):
  result = _convert_cli("--model", "crate", "--input", str(tmp_path), "--output", str(tmp_path / "x.pth"))
  assert result.returncode == 1 and result.stderr.strip() == (
      "effjax: error: effjax -> official needs --template (an official file of the same architecture)")
  npz = golden_path("crate_small")
  result = _convert_cli("--model", "crate_alpha", "--input", npz, "--output", str(tmp_path / "c"))
  assert result.returncode == 1
  assert result.stderr.strip().startswith("effjax: error: official CRATE-α params are missing")


@pytest.mark.slow
def test_finetune_from_official_file_at_another_resolution(tmp_path):
  """Golden CRATE (32 px, patch 8: 4x4 grid) as an official .pth, fine-tuned on 48 px images (6x6 grid)."""
  official = _golden("crate_small")
  pth = str(tmp_path / "crate_official.pth")
  weights.write(pth, official)
  workdir = tmp_path / "ft"
  args = ["--config", "configs/crate.py:runlocal", "--workdir", str(workdir),
          "--config.model.patch_size=8", "--config.model.width=64", "--config.model.depth=2",
          "--config.model.num_heads=4", "--config.model.num_classes=5",
          "--config.data.source=synthetic:size=48,channels=3,num_classes=5,examples=64",
          "--config.data.pp_train=('normalize(mean=0.1307,std=0.3081)',)", "--config.batch_size=16",
          "--config.eval_batch_size=16",
          "--config.total_steps=3", "--config.log_every_steps=1", "--config.eval_every_steps=-1",
          "--config.checkpoint_every_steps=3", "--config.progress_bar=False", "--config.optimizer.warmup_steps=1",
          "--config.optimizer.lr=1e-4", f"--config.init_from.path={pth}", "--config.init_from.skip=^head"]
  result = trainer_utils.run_cli(args)
  assert result.returncode == 0, result.stderr[-3000:]
  losses = [r["train/loss"] for r in metrics.read_jsonl(str(workdir)) if "train/loss" in r]
  assert len(losses) == 3 and np.all(np.isfinite(losses))
  tuned = checkpoint.restore_params(str(workdir / "checkpoints"))
  loaded = crate.convert_official(official)
  assert tuned["pos_embedding"].shape == (1, 1 + 6 * 6, 64) and tuned["head"]["kernel"].shape == (64, 5)
  start = posemb.resample(loaded["pos_embedding"], 37)
  # three AdamW steps at lr 1e-4 move each weight by a few 1e-4: the body started from the official file
  for tuned_leaf, start_leaf in [(tuned["pos_embedding"], start),
                                 (tuned["layer1"]["ista"]["D"], loaded["layer1"]["ista"]["D"]),
                                 (tuned["patch_proj"]["kernel"], loaded["patch_proj"]["kernel"])]:
    np.testing.assert_allclose(np.asarray(tuned_leaf), np.asarray(start_leaf), atol=1e-3)
