"""The console progress bar (tqdm): step/total and the latest loss on process 0, nothing when disabled."""
from effjax import metrics


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
