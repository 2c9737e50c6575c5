"""effjax.aot: TPU compilation of a config and of the Mosaic kernels on this CPU machine, and what runs without libtpu.

The compile tests need libtpu (`pip install -e '.[tpu]'`, installed by .ci/run); the rest always run.
"""
import json
import os
import sys

import pytest

from effjax import aot, config as config_lib
from effjax.kernels import dispatch

import trainer_utils

sys.path.insert(0, os.path.join(trainer_utils.REPO, "experiments", "aot"))
import kernels as aot_kernels  # noqa: E402

needs_libtpu = pytest.mark.skipif(not aot.libtpu_available(), reason=f"libtpu is not installed: {aot.INSTALL}")
CRATE_LOCAL = os.path.join(trainer_utils.REPO, "configs", "crate.py:runlocal")


def _config(spec):
  path, _, arg = spec.partition(":")
  return config_lib.load_config_file(os.path.join(trainer_utils.REPO, "configs", path) + (f":{arg}" if arg else ""))


def test_without_libtpu_one_line_says_how_to_install(monkeypatch, capsys):
  monkeypatch.setattr(aot, "libtpu_available", lambda: False)
  assert aot.main(["--config", CRATE_LOCAL, "--topology", "v5e:2x2"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("effjax: error: ") and "pip install -e '.[tpu]'" in err


def test_unknown_topology_is_one_line(capsys):
  assert aot.main(["--config", CRATE_LOCAL, "--topology", "v9x:2x2"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "unknown topology 'v9x:2x2'" in err


def test_roofline_and_run_estimate_arithmetic():
  chip = aot.CHIPS["v5e"]
  r = aot.roofline(chip, flops=0.01 * 197e12, bytes_accessed=0.02 * 819e9, mfu=0.4)
  assert r["t_compute_s"] == pytest.approx(0.01) and r["t_memory_s"] == pytest.approx(0.02)
  assert r["t_roofline_s"] == pytest.approx(0.02)
  assert r["t_step_s"] == pytest.approx(0.025)           # compute-bound at 40% MFU: 0.01 / 0.4
  assert aot.roofline(chip, 0.01 * 197e12, 0.05 * 819e9, 0.4)["t_step_s"] == pytest.approx(0.05)  # memory-bound
  est = aot.run_estimate(0.025, steps=144_000, chips=16)
  assert est["hours"] == pytest.approx(1.0) and est["chip_hours"] == pytest.approx(16.0)
  assert aot.run_estimate(0.025, None, 16) == {"hours": None, "chip_hours": None}
  with pytest.raises(aot.AotError, match="mfu"):
    aot.roofline(chip, 1.0, 1.0, 0.0)


def test_fit_hint_names_the_knob_for_what_fills_the_memory():
  c = _config("crate.py:variant=B")
  assert "fsdp" in aot.fit_hint(c, state_bytes=12e9, temp_bytes=4e9, capacity=16e9, chips=16)
  assert "model.remat=full" in aot.fit_hint(c, state_bytes=1e9, temp_bytes=30e9, capacity=16e9, chips=16)
  c.model.remat = "full"
  hint = aot.fit_hint(c, state_bytes=1e9, temp_bytes=30e9, capacity=16e9, chips=16)
  assert "grad_accum_steps=2" in hint and "32 -> 16" in hint


def test_does_not_fit_exits_non_zero_with_one_line(monkeypatch, capsys, tmp_path):
  def refuse(config, topology, **kw):
    raise aot._with(aot.AotError("crate does not fit v5e:2x2: needs 20.00 GiB ..."),
                    {"config": "crate", "topology": topology, "per_chip_batch": 8.0, "compiled": False,
                     "error": "over"})
  monkeypatch.setattr(aot, "libtpu_available", lambda: True)
  monkeypatch.setattr(aot, "compile_config", refuse)
  assert aot.main(["--config", CRATE_LOCAL, "--topology", "v5e:2x2", "--out", str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "does not fit v5e:2x2" in err
  assert json.loads((tmp_path / "crate_v5e_2x2.json").read_text())["compiled"] is False


def test_example_batch_comes_from_the_config_without_data(monkeypatch, tmp_path):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # nothing prepared there
  spec, num_train = aot.example_batch(_config("crate.py:variant=B"), 16)
  assert {k: (v.shape, str(v.dtype)) for k, v in spec.items()} == {
      "image": ((16, 224, 224, 3), "float32"), "label": ((16,), "int32"), "mask": ((16,), "float32")}
  assert num_train == 1_281_167
  spec, num_train = aot.example_batch(_config("dformer.py"), 4)
  assert spec["image"].shape == (4, 64, 128, 128, 1) and spec["label"].shape == (4, 64, 128, 128)
  assert num_train is None


def test_auto_on_a_target_chip_takes_only_hardware_validated_kernels(monkeypatch, tmp_path):
  """The AOT record (compiled for a chip) never makes `auto` pick a kernel; a hardware record for that chip does."""
  aot_record = json.loads(aot_kernels.RECORD.read_text())["kernels"]
  path = tmp_path / "validated.json"
  monkeypatch.setattr(dispatch, "RECORD", path)
  for records in ([], aot_record):
    path.write_text(json.dumps(records))
    with dispatch.target("tpu", "TPU v5 lite"):
      assert dispatch.platform() == "tpu"
      assert all(dispatch.resolve(op, "auto") is None for op in dispatch.OPS)
  with dispatch.target("tpu", "TPU v5 lite"):
    hardware = dict(dispatch.case("attention", "full"), **dispatch.setup("attention"), passed=True, speedup=1.2)
  path.write_text(json.dumps([hardware]))
  with dispatch.target("tpu", "TPU v5 lite"):
    assert dispatch.resolve("attention", "auto", pattern="full") == dispatch.Kernel("tpu", False)
    assert dispatch.resolve("depthwise_conv", "auto") is None
  with dispatch.target("tpu", "TPU v6 lite"):
    assert dispatch.resolve("attention", "auto", pattern="full") is None
  assert dispatch.resolve("attention", "auto", pattern="full") is None  # outside the block: this CPU machine


def test_committed_aot_record_covers_four_generations_and_every_kernel():
  record = json.loads(aot_kernels.RECORD.read_text())
  chips = {k["chip"] for k in record["kernels"]}
  assert chips >= {"v4", "v5e", "v5p", "v6e"}
  for chip in chips:
    assert {k["kernel"] for k in record["kernels"] if k["chip"] == chip} == set(dispatch.OPS)


@needs_libtpu
@pytest.mark.slow
def test_compiles_a_small_config_for_v5e_2x2(tmp_path):
  r = aot.compile_config(_config("crate.py:runlocal"), "v5e:2x2", name="crate.py:runlocal")
  assert r["compiled"] and r["fits"] and r["chips"] == 4 and r["device_kind"] == "TPU v5 lite"
  assert r["per_chip_batch"] == 32 and not r["mosaic_kernels"]
  assert 0 < r["hbm_needed_bytes"] < 2**30 and r["state_bytes_per_chip"] > 0
  # per chip: a few times 2·params·tokens of the forward pass over 32 examples (forward + backward ≈ 3x)
  params, tokens = 0.3e6, 17
  assert 2 * params * tokens * 32 < r["flops_per_step_per_chip"] < 20 * params * tokens * 32
  assert r["steps"] == 1000 and r["chip_hours"] == pytest.approx(r["t_step_s"] * 1000 * 4 / 3600)
  name = aot.write(r, str(tmp_path))
  assert "| `crate.py:runlocal` | v5e:2x2 | 32 | yes |" in (tmp_path / f"{name}.md").read_text()


@needs_libtpu
@pytest.mark.slow
def test_a_config_that_cannot_fit_prints_one_line_and_exits_non_zero(capsys):
  assert aot.main(["--config", CRATE_LOCAL, "--topology", "v5e:2x2", "--config.batch_size=262144"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "does not fit v5e:2x2" in err


@needs_libtpu
@pytest.mark.slow
@pytest.mark.parametrize("kernel", sorted(dispatch.OPS))
def test_mosaic_kernel_compiles_for_v5e_2x2(kernel):
  case = next(c for c in aot_kernels.CASES if c[1] == kernel)
  _, _, calls = aot_kernels.compile_case(case, aot.topology_devices("v5e:2x2"))
  assert calls > 0  # the Mosaic kernel itself is in the compiled TPU program
