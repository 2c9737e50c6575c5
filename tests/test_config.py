"""Config parsing, overrides and one-line errors before compilation."""
import os

import pytest

from effjax import config as cfg, config_overrides, train

import trainer_utils


def test_parse_arg_types_and_flags():
  arg = cfg.parse_arg("variant=S,runlocal,lr=3,mean=(0.1,0.2)", variant="T", runlocal=False, lr=0.1,
                      mean=(0.5, 0.5))
  assert arg.variant == "S" and arg.runlocal is True
  assert arg.lr == 3.0 and isinstance(arg.lr, float)
  assert arg.mean == (0.1, 0.2)


def test_parse_arg_unknown_key_names_closest():
  with pytest.raises(cfg.ConfigError, match="did you mean 'variant'"):
    cfg.parse_arg("variamt=S", variant="T")


def test_parse_arg_wrong_type():
  with pytest.raises(cfg.ConfigError, match="expected int"):
    cfg.parse_arg("depth=deep", depth=12)


def test_nested_arg_items_are_separated_by_semicolons():
  """A data source's argument travels inside a config argument, so its items are separated by ';'."""
  outer = cfg.parse_arg("source=synthetic:size=8;channels=1,runlocal", source="", runlocal=False)
  name, _, inner = outer.source.partition(":")
  assert name == "synthetic" and outer.runlocal is True
  assert cfg.parse_nested_arg(inner, size=32, channels=3).to_dict() == {"size": 8, "channels": 1}
  with pytest.raises(cfg.ConfigError, match="did you mean 'size'"):
    cfg.parse_nested_arg("sise=8", size=32)


def _flag_error(argv):
  """config_overrides.flag_error for what absl raises parsing `argv` with effjax.main's config flag (None: no error)."""
  from absl import flags
  from ml_collections import config_flags
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True,
                                  sys_argv=["effjax", *argv])  # where it reads the overrides
  try:
    flag_values(["effjax", *argv])
  except Exception as e:
    return config_overrides.flag_error(e, argv)
  return None


def test_command_line_errors_are_one_line_naming_the_problem(tmp_path):
  vit = ["--config", os.path.join(trainer_utils.REPO, "configs/vit.py:runlocal")]
  assert _flag_error(vit + ["--config.optimizer.lr=1"]) is None
  assert _flag_error(vit + ["--config.optimizer.lrr=1"]) == (
      "unknown config key 'config.optimizer.lrr'; did you mean 'optimizer.lr'?")
  assert _flag_error(vit + ["--config.total_steps=abc"]).startswith("flag --config.total_steps=abc: ")
  error = _flag_error(["--config", os.path.join(trainer_utils.REPO, "configs/vit.py:runlokal")])
  assert error == "unknown config argument 'runlokal'; did you mean 'runlocal'?"
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config():\n  return 1 / 0\n")
  assert _flag_error(["--config", str(bad)]) == "config file: ZeroDivisionError: division by zero"


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 30}, "batch size 30 (per micro-batch) is not divisible by the number of devices (8)"),
    ({"grad_accum_steps": 3}, "batch_size 32 is not divisible by grad_accum_steps 3"),
    ({"total_epochs": 2.0}, "set exactly one of config.total_steps"),
    ({"compute_dtype": "float16"}, "compute_dtype"),
    ({"model_name": "vitt"}, "Did you mean 'vit'"),
    ({"evaluators": ("clasification",)}, "Did you mean 'classification'"),
])
def test_validate_rejects_impossible_combinations(overrides, message, tmp_path):
  with pytest.raises(cfg.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    train.train_and_evaluate(trainer_utils.tiny_vit_config(**overrides), str(tmp_path))


def test_image_size_not_divisible_by_patch(tmp_path):
  with pytest.raises(ValueError, match="image size 28x28 is not divisible by patch size 5"):
    train.train_and_evaluate(trainer_utils.tiny_vit_config(**{"model.patch_size": 5}), str(tmp_path))


def test_num_classes_must_match_data(tmp_path):
  with pytest.raises(cfg.ConfigError, match="num_classes=7 but data source 'mnist5k' has 10 classes"):
    train.train_and_evaluate(trainer_utils.tiny_vit_config(**{"model.num_classes": 7}), str(tmp_path))


def test_cli_errors_are_one_line_and_early(tmp_path):
  for extra, message in [
      (["--config.optimizer.lrr=1"], "did you mean 'optimizer.lr'?"),
      (["--config.batch_size=33"], "not divisible by the number of devices"),
      (["--config.model.patch_size=5"], "not divisible by patch size 5"),
  ]:
    result = trainer_utils.run_cli(trainer_utils.TINY_CLI + ["--workdir", str(tmp_path / "w"), *extra], devices=2)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert message in result.stderr.strip().splitlines()[-1] or message in result.stderr.strip().splitlines()[-2]
    assert not (tmp_path / "w" / "metrics.jsonl").exists()
