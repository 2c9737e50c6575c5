"""experiments/kernels/check.py runs on CPU as a smoke test: interpret mode, tiny shapes, every kernel and report."""
import json
import os
import pathlib
import sys

import pytest

from effjax.kernels import dispatch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "kernels"))
import check  # noqa: E402


@pytest.mark.slow  # ~75 s of CPU time (compiling every kernel in interpret mode)
def test_check_runs_on_cpu_and_writes_its_reports(tmp_path):
  result = check.run(tmp_path, dtypes=("float32",), families=("crate", "dformer"))
  assert result["failures"] == [] and result["skipped"] == []
  assert {r["kernel"] for r in result["correctness"]} == set(dispatch.OPS)
  assert all(r["passed"] for r in result["correctness"]), result["correctness"]
  timed = [r for r in result["timing"] if r["impl"] == "pallas" and r["pass_"] == "fwd+bwd"]
  assert sorted(r["op"] for r in timed) == sorted(dispatch.OPS)  # benchmark.py's first case of each op
  assert all(r["ms"] > 0 and r["speedup"] > 0 for r in timed)
  for fam in result["families"]:
    assert "error" not in fam, fam
    assert fam["loss_err"] < 1e-4 and fam["params_err"] < 1e-4
  record = json.loads((tmp_path / "validated.json").read_text())
  assert {r["kernel"] for r in record} == set(dispatch.OPS)
  assert all(r["platform"] == "cpu" and r["source_hash"] == dispatch.source_hash(r["kernel"]) for r in record)
  # f32 attention was checked but not timed (benchmark.py times bf16): it must not validate
  assert any(r["kernel"] == "attention" and r["passed"] and r["speedup"] == 0.0 for r in record)
  assert "## Validation record" in (tmp_path / "check.md").read_text()
  assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == len(result["correctness"] + result["timing"]) + 2


def test_work_skipped_for_the_budget_is_reported_and_fails_the_check(tmp_path, capsys):
  assert check.main(["--out", str(tmp_path), "--budget_s", "0"]) == 1
  result = json.loads((tmp_path / "check.json").read_text())
  assert result["correctness"] and all(r["skipped"] and not r["passed"] for r in result["correctness"])
  assert not any(r["passed"] for r in result["record"])
  assert any(s.startswith("step ") for s in result["skipped"]) and any(s.startswith("time ") for s in result["skipped"])
  assert "skipped for the time budget: step crate" in capsys.readouterr().err


def test_failures_list_errors_mismatches_and_skips():
  result = dict(skipped=["step fit_ar"], correctness=[dict(kernel="dcls", case="c", passed=False, error="boom")],
                timing=[dict(op="attention", case="t", pass_="fwd", impl="pallas", error="no Triton")],
                families=[dict(family="crate", loss_err=0.5, params_err=0.0), dict(family="dformer", error="init")])
  lines = check.failures(result, 1e-4)
  assert len(lines) == 5 and "boom" in lines[1] and "no Triton" in lines[2] and "crate" in lines[3]


def test_update_record_needs_an_accelerator(tmp_path):
  with pytest.raises(ValueError, match="GPU or TPU"):
    check.run(tmp_path, update=True)


def test_update_record_is_refused_unless_everything_passed(monkeypatch, tmp_path):
  monkeypatch.setattr(dispatch, "platform", lambda: "gpu")
  monkeypatch.setattr(dispatch, "RECORD", tmp_path / "record.json")
  result = check.run(tmp_path, update=True, budget_s=0)
  assert result["failures"] and not result["record_updated"] and not (tmp_path / "record.json").exists()


def test_update_record_replaces_entries_of_the_same_case_and_setup(tmp_path):
  path = tmp_path / "validated.json"
  old = dict(dispatch.case("attention", "local", "bfloat16", 64), **dispatch.setup("attention"), passed=False,
             speedup=0.5)
  other = dict(old, pattern="causal")
  path.write_text(json.dumps([old, other]))
  check.update_record([dict(old, passed=True, speedup=1.2)], path)
  records = json.loads(path.read_text())
  assert len(records) == 2 and dict(old, passed=True, speedup=1.2) in records and other in records


def test_device_script_fits_the_device_tool_and_reports_the_goal_ratios():
  script = pathlib.Path(check.__file__).with_name("device_check.sh").read_text()
  assert len(script) < 2000 and "device_attention.py" in script and "check.py" in script
  import device_attention
  rows = [dict(pattern="window 1/8", impl="cudnn_dense", pass_="fwd", ms=8.0),
          dict(pattern="window 1/8", impl="effjax_pallas", pass_="fwd", ms=1.0),
          dict(pattern="full", impl="cudnn", pass_="fwd+bwd", ms=3.0),
          dict(pattern="full", impl="effjax_pallas", pass_="fwd+bwd", ms=6.0),
          dict(pattern="full", impl="jax_mosaic", pass_="fwd+bwd", error="no Hopper")]
  assert device_attention.summary(rows) == ["window 1/8 fwd: effjax_pallas is 8.00x cuDNN dense (goal >= 4)",
                                            "full fwd+bwd: effjax_pallas runs at 0.50x cuDNN's speed"]
