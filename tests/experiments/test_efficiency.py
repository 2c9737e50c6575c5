"""The efficiency table's whole code path at tiny sizes (`experiments/efficiency/efficiency.py --tiny`), once.

Checked: the output files; params against a direct count; the ViT's forward GFLOPs against a hand count of its
matrix products; train-step FLOPs, memory and throughputs in plausible ranges; a failing model recorded in its
row without losing the others; a bad --models name as one line listing the valid names. The tiny run of two
models (+ one broken) is shared by the tests and takes ~55 s on 2 cores (compilation and two trainer runs): slow.
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from effjax import components

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "efficiency"))
import efficiency  # noqa: E402

MODELS = ("vit", "fasternet")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("efficiency")
  broken = efficiency.Entry("broken", "Broken", "-", "configs/no_such_config.py", 32, "configs/no_such_config.py")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(efficiency, "ENTRIES", efficiency.ENTRIES + (broken,))
    code = efficiency.main(["--out", str(out), "--models", ",".join(MODELS + ("broken",)), "--tiny"])
  with open(out / "table.json") as f:
    report = json.load(f)
  return code, out, report, {r["name"]: r for r in report["rows"]}


@pytest.mark.slow
def test_files_and_failure(run):
  code, out, report, rows = run
  assert code == 1  # the broken model fails the run ...
  assert list(rows) == list(MODELS) + ["broken"]
  assert "no_such_config.py" in rows["broken"]["error"] and rows["broken"]["error"].startswith("config:")
  for name in MODELS:  # ... without losing the others' rows
    assert "error" not in rows[name], rows[name].get("error")
  with open(out / "pareto.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  text = (out / "table.md").read_text()
  assert "standard variant" in text and "runlocal" in text and "Broken: config:" in text
  for label in ("ViT", "FasterNet"):
    assert text.count(f"| {label} |") == 2  # one row in each table
  machine = report["machine"]
  for key in ("cpu", "cpu_count", "jax", "allocator", "LD_PRELOAD", "XLA_FLAGS", "train_step_compiler_options",
              "load_average_before", "load_average_after"):
    assert key in machine
  assert machine["jax"] == jax.__version__


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_params_equal_direct_count(run, name):
  row = run[3][name]
  config = efficiency.load(row["runlocal"])
  model = components.load("models", config.model_name).Model(**config.model)
  shape = (1,) + tuple(row["cost"]["input_shape"])
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))
  direct = sum(x.size for x in jax.tree.leaves(variables["params"]))
  assert row["cost"]["params"] == direct == row["runlocal_cost"]["params"]


@pytest.mark.slow
def test_vit_gflops_match_hand_count(run):
  """XLA's forward FLOPs of the runlocal ViT vs 2·m·n·k of its matrix products; the rest (softmax, norms,
  GELU, adds) may add up to 30%."""
  row = run[3]["vit"]
  m = efficiency.load(row["runlocal"]).model
  side = row["cost"]["input_shape"][0]
  tokens, patch_dim, w = (side // m.patch_size) ** 2, m.patch_size ** 2 * row["cost"]["input_shape"][2], m.width
  layer = 2 * tokens * w * 3 * w + 2 * 2 * tokens * tokens * w + 2 * tokens * w * w + 2 * 2 * tokens * w * m.mlp_dim
  hand = 2 * tokens * patch_dim * w + m.depth * layer + 2 * w * m.num_classes
  ratio = row["cost"]["gflops_per_image"] * 1e9 / hand
  assert 1.0 <= ratio <= 1.3, ratio


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_numbers_are_sane(run, name):
  row = run[3][name]
  c, a = row["cost"], row["accuracy"]
  assert c["gflops_per_image"] > 0
  assert 2.0 <= c["train_gflops_per_image_xla"] / c["gflops_per_image"] <= 4.5  # backward ≈ 2× forward
  mem = c["train_memory"]
  assert mem["argument"] >= 3 * 4 * c["params"]  # float32 params + two AdamW moments
  assert c["train_memory_bytes"] == mem["argument"] + mem["temp"] + mem["output"] - mem["alias"]
  assert 3 * 4 * c["params"] < c["train_memory_bytes"] < 2**30
  assert c["train_img_s"] > 0 and c["infer_img_s"] > 0
  assert a["steps"] == efficiency.TINY["budget_images"] // efficiency.TINY["batch_size"]
  assert a["train_img_s"] > 0 and a["train_wall_s"] > 0
  correct = a["accuracy"] * 1000  # whole images of mnist5k's 1,000 test images
  assert abs(correct - round(correct)) < 1e-3


def test_bad_model_name_is_one_line(tmp_path, capsys):
  assert efficiency.main(["--out", str(tmp_path), "--models", "vit,nope"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "nope" in err and "fasternet" in err and "valid:" in err
  assert not os.listdir(tmp_path)
