"""The bad-input table: every kind of wrong key, file, path, port and concurrency case ends in exactly one clear
`effjax: error: ...` line. Config and file cases run in-process through the trainer and the entry point's own
formatting (main._fail), and fail before anything is compiled; command-line cases run as subprocesses."""
import os
import re
import socket
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from effjax import checkpoint, main, train
from effjax.weights import torch_file

import trainer_utils

ENV = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": trainer_utils.xla_flags(1)}


class _Ended(Exception):
  pass


def _line(config, workdir, monkeypatch):
  """The one stderr line (and exit code) that `python -m effjax.main` ends with for this config and workdir."""
  def end(line, code):
    raise _Ended(line, code)
  monkeypatch.setattr(main, "_end", end)
  try:
    train.train_and_evaluate(config, str(workdir))
  except Exception as e:
    with pytest.raises(_Ended) as ended:
      main._fail(e, str(workdir))
    return ended.value.args
  raise AssertionError("the run did not fail")


def _files(tmp):
  """Crafted weight files: {name: path}."""
  out = {"text": tmp / "text.pth", "empty": tmp / "empty.pth", "cut": tmp / "cut.pth", "code": tmp / "code.pth",
         "crate": tmp / "crate.pth", "bad_suffix": tmp / "w.ckpt", "oversized": tmp / "big.pth"}
  out["text"].write_text("not weights\n")
  out["empty"].write_bytes(b"")
  torch_file.write(str(out["crate"]), {"w": np.ones((64, 64), np.float32)})
  data = out["crate"].read_bytes()
  out["cut"].write_bytes(data[:len(data) // 2])
  out["bad_suffix"].write_bytes(data)
  g = torch_file._global
  with zipfile.ZipFile(out["code"], "w") as archive:
    archive.writestr("archive/data.pkl", b"\x80\x02" + g("types", "FunctionType") + b"(" + g("types", "CodeType")
                     + b"(" + torch_file._int(0) + b"tR}tR)R.")
  pid = torch_file._tuple([torch_file._str("storage"), g("torch", "FloatStorage"), torch_file._str("0"),
                           torch_file._str("cpu"), torch_file._int(4)]) + b"Q"
  args = torch_file._tuple([pid, torch_file._int(0), torch_file._tuple([torch_file._int(1 << 28)]),
                            torch_file._tuple([torch_file._int(1)]), b"\x89"])
  with zipfile.ZipFile(out["oversized"], "w") as archive:
    archive.writestr("archive/data.pkl", b"\x80\x02}(" + torch_file._str("w") + g("torch._utils", "_rebuild_tensor_v2")
                     + args + b"Ru.")
    archive.writestr("archive/data/0", np.zeros(4, np.float32).tobytes())
  (tmp / "no_ckpts").mkdir()
  return out


# (case, {dotted key: value} (a value "{name}" is a crafted file or directory), regex the line must match)
CASES = [
    ("no_length", {"total_steps": 0, "total_epochs": 0}, "set exactly one of config.total_steps"),
    ("both_lengths", {"total_steps": 5, "total_epochs": 1.0}, "set exactly one of config.total_steps"),
    ("batch_zero", {"batch_size": 0}, "config.batch_size=0 is out of range|batch_size 0"),
    ("batch_indivisible", {"batch_size": 30}, "not divisible by the number of devices"),
    ("accum_zero", {"grad_accum_steps": 0}, "grad_accum_steps must be >= 1"),
    ("accum_indivisible", {"grad_accum_steps": 3}, "not divisible by grad_accum_steps"),
    ("eval_batch_indivisible", {"eval_batch_size": 12}, "eval_batch_size 12 is not divisible"),
    ("dtype", {"compute_dtype": "float16"}, "compute_dtype 'float16' must be one of"),
    ("ema_one", {"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"),
    ("log_every_zero", {"log_every_steps": 0}, "log_every_steps must be positive"),
    ("keep_zero", {"keep_checkpoints": 0}, "keep_checkpoints=0 is out of range"),
    ("ckpt_every_zero", {"checkpoint_every_steps": 0}, "checkpoint_every_steps=0 is out of range"),
    ("lr_negative", {"optimizer.lr": -1.0}, "optimizer.lr=-1.0 is out of range"),
    ("lr_nan", {"optimizer.lr": float("nan")}, "must be a finite number"),
    ("b1_one", {"optimizer.b1": 1.0}, "optimizer.b1=1.0 is out of range"),
    ("b2_negative", {"optimizer.b2": -0.1}, "optimizer.b2=-0.1 is out of range"),
    ("warmup_negative", {"optimizer.warmup_steps": -1}, "warmup_steps=-1 is out of range"),
    ("clip_negative", {"optimizer.grad_clip_norm": -1.0}, "grad_clip_norm=-1.0 is out of range"),
    ("wd_negative", {"optimizer.weight_decay": -1.0}, "weight_decay=-1.0 is out of range"),
    ("optimizer_name", {"optimizer.name": "nope"}, "nope"),
    ("model_name", {"model_name": "nope"}, "nope"),
    ("model_empty", {"model_name": ""}, "model_name is empty"),
    ("task_name", {"task_name": "nope"}, "nope"),
    ("evaluator_name", {"evaluators": ("nope",)}, "nope"),
    ("data_source", {"data.source": "nope"}, "nope"),
    ("num_classes", {"model.num_classes": 7}, "num_classes=7 but data source"),
    ("pp_op", {"data.pp_train": ("nope()",)}, "nope"),
    ("both_resume_and_init", {"resume": "{no_ckpts}", "init_from.path": "{crate}"},
     "set at most one of config.resume and config.init_from.path"),
    ("resume_missing", {"resume": "/nonexistent/effjax_ckpts"}, "is not a directory"),
    ("resume_empty", {"resume": "{no_ckpts}"}, "holds no readable checkpoint"),
    ("init_missing", {"init_from.path": "/nonexistent/w.pth"}, "does not exist"),
    ("init_text", {"init_from.path": "{text}"}, "not a PyTorch checkpoint"),
    ("init_empty", {"init_from.path": "{empty}"}, r"is empty \(0 bytes\)"),
    ("init_truncated", {"init_from.path": "{cut}"}, "truncated or damaged zip"),
    ("init_code_object", {"init_from.path": "{code}"}, "not a readable PyTorch state dict"),
    ("init_oversized_view", {"init_from.path": "{oversized}"}, "reaches element"),
    ("init_suffix", {"init_from.path": "{bad_suffix}"}, "unknown weights format '.ckpt'"),
    ("init_other_family", {"init_from.path": "{crate}"}, "official state dict is missing 'Transformer/"),
    ("init_dir_without_ckpts", {"init_from.path": "{no_ckpts}"}, "no checkpoint found"),
    ("init_skip_regex", {"init_from.path": "{crate}", "init_from.skip": "["}, "init_from.skip|unterminated"),
    ("sharding_regex", {"sharding_rules": (("[", "replicate"),)}, "sharding_rules|unterminated"),
    ("sharding_kind", {"sharding_rules": ((".*", "nope"),)}, "nope"),
    ("mesh_size", {"mesh": (("data", 3),)}, "mesh|3"),
    ("eval_examples_zero", {"data.eval_examples": 0}, "eval_examples"),
    ("normalize_tiny_std", {"data.pp_train": ("normalize(mean=0.1,std=1e-300)",)}, "std"),
    ("workdir_empty", {"<workdir>": ""}, "--workdir is empty"),
    ("dropout_inf", {"model.dropout": float("inf")}, "config.model.dropout is inf"),
    ("eval_batch_zero", {"eval_batch_size": 0}, "eval_batch_size=0 is out of range"),
    ("eval_split", {"data.eval_split": "validation"}, "has no split 'validation'"),
    ("schedule_name", {"optimizer.schedule": "nope"}, "unknown schedule 'nope'"),
    ("resume_is_file", {"resume": "{text}"}, "is not a directory"),
    ("pp_eval_op", {"data.pp_eval": ("nope()",)}, "unknown data op 'nope'"),
    ("pp_unclosed", {"data.pp_train": ("resize(",)}, r"expected name\(key=value"),
    ("heads_indivisible", {"model.num_heads": 3}, "not divisible by num_heads 3"),
    ("patch_indivisible", {"model.patch_size": 5}, "not divisible by patch size 5"),
    ("workers_negative", {"data.worker_count": -1}, "worker_count=-1 is out of range"),
    ("prefetch_negative", {"data.prefetch": -1}, "prefetch=-1 is out of range"),
    ("label_smoothing", {"task.label_smoothing": 1.5}, r"label_smoothing must be in \[0, 1\)"),
]


@pytest.mark.parametrize("case,keys,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_config_or_file_is_one_clear_line(case, keys, expected, tmp_path, monkeypatch):
  files = _files(tmp_path)
  keys = {k: (str(files.get(v[1:-1], tmp_path / v[1:-1])) if isinstance(v, str) and v.startswith("{") else v)
          for k, v in keys.items()}
  workdir = keys.pop("<workdir>", str(tmp_path / "run"))
  config = trainer_utils.tiny_vit_config(**keys)
  line, code = _line(config, workdir, monkeypatch)
  assert code == 1 and line.startswith("effjax: error: ") and "\n" not in line
  assert re.search(expected, line), line
  assert "Traceback" not in line and "error: error:" not in line
  if case.startswith("init_"):  # a wrong weights file fails before the checkpoints directory is made
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def _cli(args, timeout=120, **kwargs):
  return subprocess.run([sys.executable, "-m", "effjax.main", *args], cwd=trainer_utils.REPO,
                        env={**os.environ, **ENV}, capture_output=True, text=True, timeout=timeout, **kwargs)


def _bound_port():
  s = socket.socket()
  s.bind(("127.0.0.1", 0))
  s.listen()
  return s


CLI_CASES = [
    ("unknown_key", ["--config.nope=1"], "nope"),
    ("bad_value", ["--config.batch_size=abc"], "batch_size"),
    ("no_config_file", ["--config", "configs/nope.py"], "nope.py"),
    ("positional", ["extra"], "unexpected arguments: extra"),
    ("workdir_is_file", ["--workdir", "{file}"], "is a file, not a directory"),
    ("config_returns_dict", ["--config", "{dict_config}"], "get_config\\(\\) must return the ConfigDict"),
    ("process_id_range", ["--num_processes=2", "--process_id=5", "--coordinator_address=127.0.0.1:1"],
     r"--process_id 5 is not in \[0, 2\)"),
    ("coordinator_malformed", ["--num_processes=2", "--process_id=0", "--coordinator_address=nope"],
     "is not host:port"),
    ("port_bound", ["--num_processes=2", "--process_id=0", "--coordinator_address=127.0.0.1:{port}"],
     "cannot serve --coordinator_address"),
    ("peer_never_joins", ["--num_processes=2", "--process_id=0", "--coordinator_address=127.0.0.1:{free_port}",
                          "--connect_timeout=5"], "not all 2 processes joined"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case,args,expected", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_command_line_is_one_clear_line(case, args, expected, tmp_path):
  (tmp_path / "file").write_text("x")
  (tmp_path / "dict_config.py").write_text("def get_config():\n  return {'model_name': 'vit'}\n")
  bound = _bound_port()
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    free = s.getsockname()[1]
  subs = {"{file}": str(tmp_path / "file"), "{dict_config}": str(tmp_path / "dict_config.py"),
          "{port}": str(bound.getsockname()[1]), "{free_port}": str(free)}
  args = [next((a.replace(k, v) for k, v in subs.items() if k in a), a) for a in args]
  base = [*trainer_utils.TINY_CLI, "--config.total_steps=2"]
  if "--config" in args:  # another config file: the tiny ViT's overrides do not apply
    base = []
  if "--workdir" not in args:
    base += ["--workdir", str(tmp_path / "run")]
  try:
    result = _cli(base + args)
  finally:
    bound.close()
  lines = result.stderr.strip().splitlines()
  assert result.returncode not in (0, -6, -11) and len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith("effjax: error: ") and re.search(expected, lines[0]), lines[0]


def test_incompatible_checkpoint_and_locked_workdir_are_one_line(tmp_path, monkeypatch):
  """Concurrency: a workdir in use by another run; resumability: a checkpoint of another width."""
  workdir = tmp_path / "run"
  with checkpoint.workdir_lock(str(workdir)):
    line, _ = _line(trainer_utils.tiny_vit_config(), workdir, monkeypatch)
  assert line.startswith(f"effjax: error: --workdir {workdir} is in use by process {os.getpid()}")


@pytest.mark.slow
def test_full_disk_is_one_line(tmp_path):
  """A file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored: writes past it fail like on a full disk) that the first
  checkpoint exceeds: one `effjax: error:` line besides the progress lines (orbax logged 326 lines of traces)."""
  import resource
  import signal

  def small_files():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
  result = subprocess.run(  # (no compilation cache: the limit would cut its entries short)
      [sys.executable, "-m", "effjax.main", *trainer_utils.TINY_CLI, "--config.total_steps=4",
       "--config.checkpoint_every_steps=2", "--workdir", str(tmp_path / "run")], cwd=trainer_utils.REPO,
      env={**os.environ, **ENV, "JAX_ENABLE_COMPILATION_CACHE": "false"}, capture_output=True, text=True, timeout=300,
      preexec_fn=small_files)
  # besides progress lines, only orbax's one-line timing warnings (e.g. "Waiting for previous save ... took 1.25 s"
  # on a loaded machine) may appear: no traceback, no trace dump
  lines = [line for line in result.stderr.strip().splitlines()
           if not re.match(r"(\d\d:\d\d:\d\d effjax: |W\d{4} [\d:.]+ +\d+ \w+\.py:\d+\] )", line)]
  assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith("effjax: error: ") and "Error writing" in lines[0], lines[0]
