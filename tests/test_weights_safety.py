"""Weights that cannot hurt: crafted hostile or damaged files are refused with one line, the converter deletes
nothing, init_from loads every collection and stops at the first mismatch, and each model names its head."""
import json
import logging
import os
import re
import subprocess
import sys
import time
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from effjax import components, sharding, train, weights
from effjax.config import ConfigError
from effjax.models import convnext, crate, fasternet, inception_next, resnet
from effjax.weights import torch_file

import trainer_utils
from conftest import golden_path, load_golden

CPU = {"JAX_PLATFORMS": "cpu"}  # no accelerator probing (e.g. an installed libtpu's warnings) in the subprocesses


def _crafted_pth(path, storage_numel, offset, size, stride, data_numel=None):
  """A torch.save zip holding one float32 tensor view (offset, size, stride) of a storage that declares
  `storage_numel` elements and holds `data_numel` (default: as many)."""
  pid = torch_file._tuple([torch_file._str("storage"), torch_file._global("torch", "FloatStorage"),
                           torch_file._str("0"), torch_file._str("cpu"), torch_file._int(storage_numel)]) + b"Q"
  args = torch_file._tuple([pid, torch_file._int(offset), torch_file._tuple([torch_file._int(s) for s in size]),
                            torch_file._tuple([torch_file._int(s) for s in stride]), b"\x89"])
  body = b"\x80\x02}(" + torch_file._str("w") + torch_file._global("torch._utils", "_rebuild_tensor_v2") + args
  body += b"Ru."
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", body)
    archive.writestr("archive/data/0", np.arange(data_numel or storage_numel, dtype=np.float32).tobytes())
  return str(path)


def test_crafted_view_reads_back_inside_its_storage(tmp_path):
  """The crafting itself is right: a view that fits reads the expected elements."""
  path = _crafted_pth(tmp_path / "ok.pth", 12, 2, (2, 3), (4, 1))
  np.testing.assert_array_equal(torch_file.read(path)["w"], [[2, 3, 4], [6, 7, 8]])


@pytest.mark.parametrize("storage_numel,offset,size,stride,data_numel,match", [
    (4, 0, (8, 8), (8, 1), None, "reaches element 63 of a storage of 4"),    # a view larger than its storage
    (4, 9, (1,), (1,), None, "reaches element 9 of a storage of 4"),          # an offset past the end
    (4, 0, (1 << 28,), (1,), None, "storage of 4 elements"),                  # a 1 GiB view (SIGSEGV before)
    (64, 0, (8, 8), (8, 1), 4, "too few for 64"),                            # storage shorter than declared
])
def test_views_outside_their_storage_are_refused(tmp_path, storage_numel, offset, size, stride, data_numel, match):
  path = _crafted_pth(tmp_path / "bad.pth", storage_numel, offset, size, stride, data_numel)
  with pytest.raises(ValueError, match=match):
    weights.read(path)


def test_damaged_files_are_named_for_what_they_are(tmp_path):
  good = str(tmp_path / "good.pth")
  torch_file.write(good, {"w": np.ones((64, 64), np.float32)})
  data = open(good, "rb").read()
  (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
  (tmp_path / "empty.pth").write_bytes(b"")
  (tmp_path / "text.pth").write_text("hello\n")
  with pytest.raises(ValueError, match="truncated or damaged zip"):
    weights.read(str(tmp_path / "cut.pth"))
  with pytest.raises(ValueError, match=r"is empty \(0 bytes\)"):
    weights.read(str(tmp_path / "empty.pth"))
  with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
    weights.read(str(tmp_path / "text.pth"))


def _code_object_pickle(path):
  """types.FunctionType(types.CodeType(...), {})() as pickle opcodes: the unpickler must call nothing."""
  body = (b"\x80\x02" + torch_file._global("types", "FunctionType") + b"(" + torch_file._global("types", "CodeType")
          + b"(" + torch_file._int(0) + b"tR}tR)R.")
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", body)
  return str(path)


def test_code_object_pickle_is_one_value_error(tmp_path):
  with pytest.raises(ValueError, match="not a readable PyTorch state dict: TypeError"):
    weights.read(_code_object_pickle(tmp_path / "code.pth"))


def _convert_cli(*args):
  return subprocess.run([sys.executable, "-m", "effjax.convert", *args], cwd=trainer_utils.REPO,
                        capture_output=True, text=True, timeout=300, env={**os.environ, **CPU})


def test_converter_never_deletes_a_checkpoint(tmp_path):
  arrays, _ = load_golden("crate_small")
  pth = str(tmp_path / "crate.pth")
  weights.write(pth, {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")})
  out = tmp_path / "ckpts"
  (out / "3").mkdir(parents=True)
  (out / "3" / "marker").write_text("a training run's step 3")
  result = _convert_cli("--model", "crate", "--input", pth, "--output", str(out))
  assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
  assert "already holds checkpoints (3)" in result.stderr and "--overwrite" in result.stderr
  assert (out / "3" / "marker").exists() and not (out / "0").exists()
  result = _convert_cli("--model", "crate", "--input", pth, "--output", str(out), "--overwrite")
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(os.listdir(out)) == ["0"]
  back = str(tmp_path / "back.pth")
  open(back, "w").close()
  result = _convert_cli("--model", "crate", "--input", str(out), "--output", back, "--template", pth)
  assert result.returncode == 1 and "exists; nothing was changed" in result.stderr and os.path.getsize(back) == 0


def test_converter_errors_are_one_line(tmp_path):
  result = _convert_cli("--model", "crate", "--input", str(tmp_path / "nope.pth"), "--output", str(tmp_path / "o"))
  assert result.returncode == 1 and result.stderr == f"effjax: error: --input {tmp_path / 'nope.pth'} does not exist\n"
  result = _convert_cli("--model", "crate", "--input", _code_object_pickle(tmp_path / "code.pth"),
                        "--output", str(tmp_path / "o"))
  assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
  assert "not a readable PyTorch state dict" in result.stderr and not (tmp_path / "o").exists()


def _init_config(path, model_name, **init_from):
  c = ml_collections.ConfigDict({"model_name": model_name, "init_from": {
      "path": str(path), "skip": ml_collections.config_dict.placeholder(str), "allow_unused": False}})
  c.init_from.update(init_from)
  return c


def _abstract_state(model, image_shape):
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(image_shape)))
  variables = dict(variables)
  return {"params": variables.pop("params"), "model_state": variables}


def _crate(**kw):
  arrays, meta = load_golden("crate_small")
  c = dict(meta["ctor"], **kw)
  model = crate.Model(num_classes=c["num_classes"], patch_size=c["patch_size"], width=c["dim"], depth=c["depth"],
                      num_heads=c["heads"], head_dim=c["dim_head"], pool=c["pool"])
  official = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
  return model, official, (1, c["image_size"], c["image_size"], c["channels"])


def test_deeper_official_file_stops_the_run_naming_the_first_unused_param(tmp_path):
  model, official, shape = _crate()
  deeper = dict(official)
  last = max(int(k.split(".")[2]) for k in official if k.startswith("transformer.layers."))
  for k, v in official.items():  # one more layer, copied from the last
    if k.startswith(f"transformer.layers.{last}."):
      deeper[k.replace(f"layers.{last}.", f"layers.{last + 1}.")] = v
  path = tmp_path / "deeper.pth"
  weights.write(str(path), deeper)
  abstract = _abstract_state(model, shape)
  with pytest.raises(ConfigError, match=rf"layer{last + 1}/\S+ \(\d+(, \d+)*\) of the file is not in the model"):
    train._read_init_from(_init_config(path, "crate"), abstract)
  loaded = train._read_init_from(_init_config(path, "crate", allow_unused=True), abstract)
  assert f"layer{last}/ista/D" in loaded["params"] and f"layer{last + 1}/ista/D" not in loaded["params"]
  assert "head/kernel" not in loaded["params"] and "head_norm/scale" in loaded["params"]  # crate.HEAD


def test_wider_official_file_names_name_and_both_shapes(tmp_path):
  model, official, shape = _crate()
  path = tmp_path / "crate.npz"
  weights.write(str(path), official)
  wider, _, _ = _crate(dim=2 * load_golden("crate_small")[1]["ctor"]["dim"])
  start = time.time()
  with pytest.raises(ConfigError, match=r": cls has shape \(1, 1, 64\) in the file, \(1, 1, 128\) in the model "
                                        r"\(\d+ params differ; another variant \(width\)\?\)"):
    train._read_init_from(_init_config(path, "crate"), _abstract_state(wider, shape))
  assert time.time() - start < 20
  with pytest.raises(ConfigError, match="does not exist"):
    train._read_init_from(_init_config(tmp_path / "nope.pth", "crate"), _abstract_state(model, shape))


def _timm(case, key):
  d = np.load(golden_path(f"{case}_timm"))
  meta = json.loads(str(d["meta"]))["models"][key]
  sd = {k[len(f"param/{key}/"):]: d[k] for k in d.files if k.startswith(f"param/{key}/")}
  return sd, meta


def test_batch_norm_statistics_are_loaded(tmp_path):
  sd, meta = _timm("resnet", "ecaresnet26t")
  model = resnet.Model(variant=meta["timm_name"],  # timm's `channels` are the stage `widths`
                       **{"widths" if k == "channels" else k: tuple(v) if isinstance(v, list) else v
                          for k, v in meta["kwargs"].items()})
  path = tmp_path / "eca.pth"
  weights.write(str(path), sd)
  abstract = _abstract_state(model, (1, meta["image_size"], meta["image_size"], 3))
  loaded = train._read_init_from(_init_config(path, "resnet"), abstract)
  want = resnet.convert_official_variables(sd)["batch_stats"]
  n_stats = len(jax.tree.leaves(abstract["model_state"]["batch_stats"]))
  assert n_stats > 0 and len(loaded["batch_stats"]) == n_stats
  np.testing.assert_array_equal(loaded["batch_stats"]["layer1_block0/conv1/bn/mean"],
                                want["layer1_block0"]["conv1"]["bn"]["mean"])
  assert not any(k.startswith("fc/") for k in loaded["params"])  # resnet.HEAD: the head stays fresh
  fresh = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), {"params": abstract["params"],
                                                               "model_state": abstract["model_state"]})
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), fresh)
  state = train._put_init(fresh, loaded, shardings)
  np.testing.assert_array_equal(state["model_state"]["batch_stats"]["layer1_block0"]["conv1"]["bn"]["var"],
                                want["layer1_block0"]["conv1"]["bn"]["var"])
  assert float(jnp.abs(state["params"]["fc"]["kernel"]).max()) == 0.0


@pytest.mark.parametrize("module,kwargs", [(resnet, {"variant": "ecaresnet26t"}),
                                           (fasternet, {"variant": "t0"}),
                                           (inception_next, {"variant": "atto"}),
                                           (convnext, {"variant": "atto"}),
                                           (crate, {"variant": "T"})])
def test_each_model_names_its_head(module, kwargs):
  """HEAD matches exactly the params whose shapes change with num_classes."""
  def shapes(n):
    variables = jax.eval_shape(lambda: module.Model(num_classes=n, **kwargs).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))
    return {sharding.path_str(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(variables["params"])}
  a, b = shapes(3), shapes(5)
  changed = {k for k in a if a[k] != b[k]}
  assert changed and changed == {k for k in a if re.search(module.HEAD, k)}


def test_every_model_module_has_a_head():
  for name in sorted(n[:-3] for n in os.listdir(os.path.dirname(components.load("models", "vit").__file__))
                     if n.endswith(".py") and n != "__init__.py"):
    assert isinstance(components.load("models", name).HEAD, str), name


def _official_convnext_names(sd):
  """timm ConvNeXt names -> the official ConvNeXt(-DCLS) repository's."""
  out = {}
  for k, v in sd.items():
    k = (k.replace("stem.", "downsample_layers.0.").replace(".blocks.", ".").replace(".conv_dw.", ".dwconv.")
         .replace(".mlp.fc1.", ".pwconv1.").replace(".mlp.fc2.", ".pwconv2.").replace("head.norm.", "norm.")
         .replace("head.fc.", "head."))
    if ".downsample." in k:
      i = k.split(".")[1]
      k = k.replace(f"stages.{i}.downsample.", f"downsample_layers.{i}.")
    out[k] = v
  return out


def test_official_convnext_names_and_pth_tar_load(tmp_path):
  sd, _ = _timm("convnext", "linear_mlp")
  official = _official_convnext_names(sd)
  assert "downsample_layers.1.1.weight" in official and "stages.0.0.dwconv.weight" in official
  path = str(tmp_path / "checkpoint.pth.tar")
  weights.write(path, {f"module.{k}": v for k, v in official.items()})
  got, want = weights.load_official(path, "convnext"), convnext.convert_official(sd)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(x, y)


def test_resampled_position_embedding_is_logged(tmp_path, caplog):
  model, official, shape = _crate()
  path = tmp_path / "crate.npz"
  weights.write(str(path), official)
  bigger = (1, 2 * shape[1], 2 * shape[2], shape[3])
  with caplog.at_level(logging.INFO, logger=train.log.name):
    loaded = train._read_init_from(_init_config(path, "crate"), _abstract_state(model, bigger))
  assert any("resampled pos_embedding from" in r.getMessage() for r in caplog.records)
  assert loaded["params"]["pos_embedding"].shape[1] == 1 + (bigger[1] // model.patch_size) ** 2


def test_wrong_init_from_file_fails_at_once_and_leaves_no_checkpoints_dir(tmp_path):
  text = tmp_path / "weights.pth"
  text.write_text("not weights\n")
  workdir = tmp_path / "run"
  start = time.time()
  result = trainer_utils.run_cli(trainer_utils.TINY_CLI + ["--workdir", str(workdir), "--config.total_steps=2",
                                                           f"--config.init_from.path={text}"], env=CPU)
  assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr[-2000:]
  assert result.stderr.startswith("effjax: error: config.init_from.path:")
  assert "not a PyTorch checkpoint" in result.stderr
  assert not (workdir / "checkpoints").exists()
  assert time.time() - start < 120
