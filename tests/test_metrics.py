"""The console progress bar (tqdm): step/total and the latest loss on process 0, nothing when disabled; the metrics
writer's TensorBoard events without importing torch."""
import subprocess
import sys

from effjax import metrics

# A fresh process: writes a row through metrics.Writer, prints whether torch was imported, then imports torch.
WRITE_WITHOUT_TORCH = """
import sys
from effjax import metrics
writer = metrics.Writer(sys.argv[1])
writer.write(3, {"train/loss": 0.5})
writer.close()
print("torch" in sys.modules)
import torch
print(torch.__name__)
"""


def test_progress_bar_shows_steps_and_loss(capsys):
  bar = metrics.ProgressBar(10, 2, enabled=True)
  for step in range(3, 11):
    bar.update(step, 1.0 / step)
  bar.close()
  err = capsys.readouterr().err
  assert "10/10" in err and "loss=0.1000" in err
  assert bar.bar.n == 10


def test_disabled_progress_bar_is_silent(capsys):
  bar = metrics.ProgressBar(10, 0, enabled=False)
  bar.update(5, 0.5)
  bar.close()
  assert capsys.readouterr().err == ""


def test_writer_writes_events_without_importing_torch(tmp_path):
  """tensorboardX imports torch when it is installed (a second of every start-up); the writer hides it, and torch
  can still be imported afterwards."""
  out = subprocess.run([sys.executable, "-c", WRITE_WITHOUT_TORCH, str(tmp_path)], capture_output=True, text=True,
                       check=True).stdout.split()
  assert out == ["False", "torch"]
  assert metrics.read_jsonl(str(tmp_path)) == [{"step": 3, "train/loss": 0.5}]
  assert [f for f in (tmp_path / "tensorboard").iterdir() if f.name.startswith("events.out.tfevents")]
