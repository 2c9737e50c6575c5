"""Every notebook in colabs/ runs as a Colab user runs it: in a fresh virtual environment, from a working directory
outside the repository, its first cell installing effjax as written (from the effjax wheel beside the notebook,
built here as the cell's comment says).

Colab's preinstalled stack is simulated by a .pth file that puts this environment's site-packages on the fresh
environment's path: jax, numpy, ... are there, effjax is not, so the install cell installs effjax alone (checked:
nothing else lands in the fresh environment, so no preinstalled package was replaced) and the test stays fast.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import nbformat
import pytest

import trainer_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(REPO, "colabs")
NOTEBOOKS = sorted(glob.glob(os.path.join(COLABS, "*.ipynb")))
# Executes notebook argv[1] in the working directory argv[2] with the kernel of this interpreter; writes the
# executed notebook to argv[3].
RUNNER = """
import sys, nbformat
from nbclient import NotebookClient
notebook = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
nbformat.write(notebook, sys.argv[3])
"""


def test_there_are_notebooks():
  assert any(os.path.basename(p) == "quickstart.ipynb" for p in NOTEBOOKS)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """effjax's wheel, built as the install cell's comment says (`pip wheel --no-deps`), from a copy of the
  package's files (an in-tree build would leave build/ in the repository)."""
  source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO, name), source)
  shutil.copytree(os.path.join(REPO, "effjax"), source / "effjax", ignore=shutil.ignore_patterns("__pycache__"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                  str(source)], check=True, capture_output=True)
  return next(out.glob("effjax-*.whl"))


def colab_like_env(path):
  """A fresh virtual environment at `path` whose path also holds this environment's packages (not effjax: the
  editable install's own .pth files are not read from there); returns its interpreter."""
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
  python = str(path / "bin" / "python")
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                        capture_output=True, text=True).stdout.strip()
  stack = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
  with open(os.path.join(site, "zz_preinstalled_stack.pth"), "w") as f:
    f.write("\n".join(sorted(stack)) + "\n")
  # the kernel "python3" runs this interpreter (Jupyter reads kernel specs from JUPYTER_PATH first)
  kernel = path / "share" / "jupyter" / "kernels" / "python3"
  kernel.mkdir(parents=True)
  (kernel / "kernel.json").write_text(json.dumps(
      {"argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "Python 3",
       "language": "python"}))
  return python, site


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs_as_in_colab(path, wheel, tmp_path):
  python, site = colab_like_env(tmp_path / "venv")
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EFFJAX_SOURCE")}
  env["JUPYTER_PATH"] = str(tmp_path / "venv" / "share" / "jupyter")
  env["PIP_NO_INDEX"] = "1"  # everything but effjax is already installed: the cell must not need the index
  env["XLA_FLAGS"] = trainer_utils.xla_flags(1)  # one CPU device, as in a Colab CPU runtime (the suite fakes 8)
  check = subprocess.run([python, "-c", "import importlib.util; print(importlib.util.find_spec('effjax'))"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
  assert check.stdout.strip() == "None", "effjax must be missing before the install cell runs"
  workdir = tmp_path / "content"  # Colab's working directory: the notebook's uploads beside it
  workdir.mkdir()
  shutil.copy(wheel, workdir)
  executed = tmp_path / "executed.ipynb"
  result = subprocess.run([python, "-c", RUNNER, path, str(workdir), str(executed)], env=env, cwd=workdir,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  notebook = nbformat.read(executed, as_version=4)
  errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
  # the install cell put effjax, and nothing else, into the fresh environment
  installed = sorted(n for n in os.listdir(site) if n != "zz_preinstalled_stack.pth" and n != "__pycache__")
  assert [n.split("-")[0] for n in installed] == ["effjax", "effjax"], installed
  figures = sum("image/png" in o.get("data", {}) for cell in notebook.cells for o in cell.get("outputs", []))
  assert figures >= 1  # figures are shown inline
