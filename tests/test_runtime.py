"""effjax/runtime.py: the command line re-runs itself once with tcmalloc when it is installed, else with mimalloc
from the cmeel-mimalloc wheel."""
import os
import subprocess
import sys

import pytest

from effjax import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ("from effjax import runtime; print('start', flush=True); {setup}runtime.reexec_with_allocator(); "
         "print(runtime.allocator(), 'libmimalloc' in open('/proc/self/maps').read())")
NO_TCMALLOC = "runtime.TCMALLOC_PATHS = (); "  # a machine without a system tcmalloc


def probe(setup="", **env):
  inherited = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", runtime.MARKER)}
  env = dict(inherited, PYTHONPATH=REPO, **env)
  return subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], env=env, capture_output=True, text=True,
                        check=True)


@pytest.mark.skipif(runtime.tcmalloc_path() is None, reason="tcmalloc is not installed on this machine")
def test_reexecs_once_with_tcmalloc():
  result = probe()
  lines = result.stdout.splitlines()  # the second "start" is the re-executed process
  assert lines[0] == "start" and "re-running with tcmalloc" in lines[1] and lines[2:] == ["start", "tcmalloc False"]
  assert result.stderr == ""


def test_without_tcmalloc_reexecs_once_with_the_mimalloc_wheel():
  assert runtime.mimalloc_path() is not None  # cmeel-mimalloc is a dependency on Linux
  result = probe(NO_TCMALLOC)
  lines = result.stdout.splitlines()
  assert lines[0] == "start" and lines[1].startswith("effjax: re-running with mimalloc preloaded (")
  assert lines[2:] == ["start", "mimalloc True"]  # the library is mapped into the re-run process
  assert result.stderr == ""


def test_allocator_glibc_keeps_glibc():
  assert probe(NO_TCMALLOC, EFFJAX_ALLOCATOR="glibc").stdout.split() == ["start", "glibc", "False"]


def test_off_switch_keeps_glibc():
  result = probe(NO_TCMALLOC, EFFJAX_RUNTIME="off")
  assert result.stdout.split() == ["start", "glibc", "False"]


def test_cpu_steps_compile_their_dots_to_onednn(monkeypatch):
  import jax
  import jax.numpy as jnp
  monkeypatch.delenv("EFFJAX_CPU_ONEDNN", raising=False)  # the suite's switch (conftest), off for this test
  x = jnp.ones((16, 8))
  compiled = lambda options: jax.jit(lambda a: a @ a.T, compiler_options=options).lower(x).compile().as_text()
  assert "__onednn_fusion" in compiled(runtime.compiler_options())
  assert "__onednn_fusion" not in compiled(None)  # jaxlib's default: the options are what switches it on
  assert runtime.compiler_options("gpu") is None
  monkeypatch.setenv("EFFJAX_CPU_ONEDNN", "0")
  assert runtime.compiler_options() == runtime.YNN_OPTIONS
  monkeypatch.delenv("EFFJAX_CPU_ONEDNN")
  monkeypatch.setenv("EFFJAX_RUNTIME", "off")
  assert runtime.compiler_options() is None


def test_cpu_steps_keep_convolutions_out_of_ynnpack():
  import jax
  import jax.numpy as jnp
  x, w = jnp.ones((1, 8, 8, 32)), jnp.ones((3, 3, 32, 32))  # smaller ones are not sent to YNNPACK
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  compiled = lambda options: jax.jit(conv, compiler_options=options).lower(x, w).compile().as_text()
  assert "ynn_fusion" in compiled(None)  # jaxlib's default: YNNPACK convolutions
  assert "ynn_fusion" not in compiled(runtime.compiler_options())
