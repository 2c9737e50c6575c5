"""effjax/runtime.py: the command line re-runs itself once with tcmalloc when it is installed."""
import os
import subprocess
import sys

import pytest

from effjax import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ("import sys; from effjax import runtime; print('start', flush=True); runtime.reexec_with_tcmalloc(); "
         "print(runtime.allocator())")


def probe(**env):
  env = {k: v for k, v in dict(os.environ, PYTHONPATH=REPO, **env).items() if k not in ("LD_PRELOAD", runtime.MARKER)}
  return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)


@pytest.mark.skipif(runtime.tcmalloc_path() is None, reason="tcmalloc is not installed on this machine")
def test_reexecs_once_with_tcmalloc():
  result = probe()
  lines = result.stdout.splitlines()  # the second "start" is the re-executed process
  assert lines[0] == "start" and "re-running with tcmalloc" in lines[1] and lines[2:] == ["start", "tcmalloc"]
  assert result.stderr == ""


def test_off_switch_keeps_glibc():
  result = probe(EFFJAX_RUNTIME="off")
  assert result.stdout.split() == ["start", "glibc"]


def test_cpu_steps_compile_their_dots_to_onednn(monkeypatch):
  import jax
  import jax.numpy as jnp
  x = jnp.ones((16, 8))
  compiled = lambda options: jax.jit(lambda a: a @ a.T, compiler_options=options).lower(x).compile().as_text()
  assert "__onednn_fusion" in compiled(runtime.compiler_options())
  assert "__onednn_fusion" not in compiled(None)  # jaxlib's default: the options are what switches it on
  assert runtime.compiler_options("gpu") is None
  monkeypatch.setenv("EFFJAX_RUNTIME", "off")
  assert runtime.compiler_options() is None
