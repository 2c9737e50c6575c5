"""experiments/kernels/check.py runs on CPU as a smoke test: interpret mode, tiny shapes, every kernel and report."""
import json
import os
import sys

import pytest

from effjax.kernels import dispatch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "kernels"))
import check  # noqa: E402


@pytest.mark.slow  # ~75 s of CPU time (compiling every kernel in interpret mode)
def test_check_runs_on_cpu_and_writes_its_reports(tmp_path):
  result = check.run(tmp_path, dtypes=("float32",), families=("crate", "fit_ar"))
  assert {r["kernel"] for r in result["correctness"]} == set(dispatch.OPS)
  assert all(r["passed"] for r in result["correctness"]), result["correctness"]
  timed = [r for r in result["timing"] if r["impl"] == "pallas" and r["pass_"] == "fwd+bwd"]
  assert sorted(r["op"] for r in timed) == sorted(dispatch.OPS)  # benchmark.py's first case of each op
  assert all(r["ms"] > 0 and r["speedup"] > 0 for r in timed)
  for fam in result["families"]:
    assert "error" not in fam, fam
    assert fam["loss_err"] < 1e-4 and fam["params_err"] < 1e-4
  record = json.loads((tmp_path / "validated.json").read_text())
  assert [r["kernel"] for r in record] == list(dispatch.OPS)
  assert all(r["platform"] == "cpu" and r["passed"] for r in record)
  assert "## Validation record" in (tmp_path / "check.md").read_text()


def test_update_record_needs_an_accelerator(tmp_path):
  with pytest.raises(ValueError, match="GPU or TPU"):
    check.run(tmp_path, update=True)


def test_update_record_replaces_entries_of_the_same_setup(tmp_path):
  path = tmp_path / "validated.json"
  old = dict(kernel="attention", platform="gpu", device_kind="H200", jax="0.10.2", passed=False, speedup=0.5)
  other = dict(old, kernel="dcls")
  path.write_text(json.dumps([old, other]))
  check.update_record([dict(old, passed=True, speedup=1.2)], path)
  records = json.loads(path.read_text())
  assert len(records) == 2 and dict(old, passed=True, speedup=1.2) in records and other in records
