"""Official weights files: every format loads (built here from the golden parameters), PyTorch files are read
and written without torch (cross-checked with torch), and position embeddings are resampled."""
import collections
import os
import pickle
import zipfile

import flax.serialization
import jax
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util

from effjax import weights
from effjax.models import crate, crate_alpha, fit
from effjax.weights import posemb, torch_file

from conftest import golden_path


def _golden(name):
  return weights.read(golden_path(name))


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_golden_npz_prefix_is_stripped():
  sd = _golden("crate_small")
  assert "pos_embedding" in sd and not any(k.startswith(("input/", "output/", "meta")) for k in sd)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".safetensors", ".npz"])
def test_crate_state_dict_formats_load(tmp_path, suffix):
  sd = _golden("crate_small")
  path = str(tmp_path / f"crate{suffix}")
  weights.write(path, sd)
  _assert_trees_equal(weights.load_official(path, "crate"), crate.convert_official(sd))


def test_torch_save_read_without_torch(tmp_path):
  import torch
  sd = _golden("crate_small")
  wide = torch.randn(4, 6)
  ckpt = {"model": collections.OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items()), "epoch": 7,
          "args": __import__("argparse").Namespace(lr=0.1), "strided": wide[:, ::2],
          "param": torch.nn.Parameter(torch.randn(3)), "bf16": torch.randn(5).bfloat16()}
  path = str(tmp_path / "ckpt.pth")
  torch.save(ckpt, path)
  raw = torch_file.read(path)
  np.testing.assert_array_equal(raw["strided"], wide[:, ::2].numpy())
  np.testing.assert_array_equal(raw["param"], ckpt["param"].detach().numpy())
  assert raw["bf16"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(raw["bf16"].astype(np.float32), ckpt["bf16"].float().numpy())
  assert isinstance(raw["args"], torch_file.Opaque) and raw["args"].state == {"lr": 0.1}
  read = weights.read(path)  # unwraps {"model": ...}
  assert sorted(read) == sorted(sd) and all(np.array_equal(read[k], sd[k]) for k in sd)


def test_torch_file_written_without_torch_loads_in_torch(tmp_path):
  import torch
  sd = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.arange(3), "h": np.ones(2, np.float16),
        "b": np.array([True, False]), "empty": np.zeros((0, 2), np.float32)}
  path = str(tmp_path / "w.pth")
  torch_file.write(path, sd)
  loaded = torch.load(path, weights_only=True)
  assert list(loaded) == list(sd)
  for k, v in sd.items():
    assert loaded[k].numpy().dtype == v.dtype and np.array_equal(loaded[k].numpy(), v)


def test_torch_reader_runs_no_code(tmp_path):
  marker = tmp_path / "ran"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))
  path = str(tmp_path / "evil.pth")
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
  obj = torch_file.read(path)
  assert isinstance(obj["x"], torch_file.Opaque) and not marker.exists()


def test_legacy_torch_file_is_refused(tmp_path):
  import torch
  path = str(tmp_path / "old.pth")
  torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
  with pytest.raises(ValueError, match="legacy"):
    weights.read(path)


def test_safetensors_round_trip_keeps_dtypes_and_a_bad_file_is_one_line(tmp_path):
  sd = {"a": np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32), "b": np.arange(4, dtype=np.int64),
        "c": np.ones((2, 2), ml_dtypes.bfloat16), "strided": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]}
  weights.write(str(tmp_path / "w.safetensors"), sd)
  back = weights.read(str(tmp_path / "w.safetensors"))
  assert {k: v.dtype for k, v in back.items()} == {k: v.dtype for k, v in sd.items()}
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v)
  bad = tmp_path / "bad.safetensors"
  bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
  with pytest.raises(ValueError, match="not a readable safetensors file") as e:
    weights.read(str(bad))
  assert "\n" not in str(e.value)


def test_flax_msgpack_and_big_vision_npz_load(tmp_path):
  flat = _golden("crate_alpha_small")
  expected = crate_alpha.convert_official(flat)
  msgpack = tmp_path / "crate_alpha.msgpack"  # a Flax train checkpoint: {"params": ..., "opt_state": ...}
  checkpoint = {"params": traverse_util.unflatten_dict(flat, sep="/"), "opt_state": {"mu": np.ones(2)}}
  msgpack.write_bytes(flax.serialization.msgpack_serialize(checkpoint))
  _assert_trees_equal(weights.load_official(str(msgpack), "crate_alpha"), expected)
  big_vision = str(tmp_path / "crate_alpha.npz")  # big_vision's checkpoint: flat "/" keys under params/ and opt/
  np.savez(big_vision, **{f"params/{k}": v for k, v in flat.items()}, **{"opt/count": np.zeros(())})
  _assert_trees_equal(weights.load_official(big_vision, "crate_alpha"), expected)


def test_keras_h5_fit_weights_load(tmp_path):
  import h5py
  flat = {k: v for k, v in _golden("fit_small").items() if k.startswith("fit/")}
  path = str(tmp_path / "fit.h5")
  weights.write(path, flat)
  with h5py.File(path) as f:  # the Keras 2 layout: layer groups named in layer_names, variables by full name
    assert list(f.attrs["layer_names"]) == [b"fit"]
    name = "fit/x_pos_emb/kernel/vis_pos_embedding:0"
    assert f["fit"][name].shape == flat[name].shape
  assert weights.read(path).keys() == flat.keys()
  _assert_trees_equal(weights.load_official(path, "fit"), fit.convert_official(flat))


def test_bad_inputs_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match="unknown weights format '.ckpt'"):
    weights.read(str(tmp_path / "x.ckpt"))
  with pytest.raises(ValueError, match="does not exist"):
    weights.read(str(tmp_path / "x.pth"))
  with pytest.raises(ValueError, match="unknown model 'nope'"):
    weights.load_official(golden_path("crate_small"), "nope")


def test_resample_to_the_same_grid_is_the_identity():
  pe = np.random.default_rng(0).normal(size=(1, 1 + 5 * 5, 8)).astype(np.float32)
  np.testing.assert_array_equal(posemb.resample(pe, pe.shape[1]), pe)
  no_cls = pe[:, 1:]
  np.testing.assert_array_equal(posemb.resample(no_cls, 25), no_cls)


def test_resample_to_another_grid():
  rng = np.random.default_rng(0)
  const = np.concatenate([rng.normal(size=(1, 1, 4)), np.full((1, 16, 4), 0.5)], axis=1).astype(np.float32)
  up = posemb.resample(const, 1 + 8 * 8)
  assert up.shape == (1, 65, 4)
  np.testing.assert_array_equal(up[:, :1], const[:, :1])  # the class-token row is kept
  np.testing.assert_allclose(up[:, 1:], 0.5, rtol=1e-6)  # a constant grid stays constant
  ramp = np.broadcast_to(np.arange(4, dtype=np.float32)[None, :, None], (4, 4, 1)).reshape(1, 16, 1)
  down = posemb.resample(ramp, 4).reshape(2, 2)  # a linear ramp along the columns stays a ramp
  assert np.all(np.diff(down, axis=1) > 0) and np.allclose(down[0], down[1])
  wide = posemb.resample(pe := rng.normal(size=(1, 17, 4)).astype(np.float32), 1 + 2 * 6, new_grid=(2, 6))
  assert wide.shape == (1, 13, 4) and np.array_equal(wide[:, 0], pe[:, 0])
  with pytest.raises(ValueError, match="cannot resample a position embedding of 17 tokens to 20"):
    posemb.resample(pe, 20)
