"""CPU runtime set-up: the allocator (a re-run with tcmalloc or mimalloc preloaded) and XLA:CPU options of the steps.

XLA:CPU allocates and frees its step buffers on every step; under glibc malloc those pages are handed
back to the kernel and page-fault again on the next step (≈ 340,000 minor faults per CRATE-T train step,
none with tcmalloc, which keeps freed memory for reuse; experiments/crate/README.md has the levers table:
glibc's own knobs, mallopt or GLIBC_TUNABLES, did not remove the faults). An allocator can only be chosen
when a process starts, so `python -m effjax.main` calls `reexec_with_allocator()` before it imports JAX: it
re-executes the command once with LD_PRELOAD set to a system tcmalloc when one is installed (Debian/Ubuntu:
`apt-get install libtcmalloc-minimal4`), else to mimalloc from the cmeel-mimalloc wheel, a dependency of effjax
on Linux (so `pip install` alone gives the fast path), and says so in one log line. Side by side on a CRATE-T
step: experiments/crate/README.md, "Allocators". EFFJAX_RUNTIME=off, EFFJAX_ALLOCATOR=glibc, an LD_PRELOAD of
the user's own, or no library found leave the process as it is. A notebook cannot be re-executed: start its
kernel with LD_PRELOAD=<allocator_path()> to get the same effect.

`compiler_options()` gives the XLA options effjax compiles its training steps with (`jax.jit(...,
compiler_options=...)`, so they hold in a notebook too, whatever was imported first). On CPU each dot runs as
its own oneDNN matmul: jaxlib 0.10.2's default (YNNPACK) reaches 315-330 GFLOP/s on a [4160, 384] x [384, 384]
f32 matmul of CRATE-T and 220 when the contraction is over rows (weight gradients), oneDNN 365-375 and 275-295,
and batched attention matmuls gain 1.5x; a CRATE-T training step is 13% faster (experiments/crate/README.md,
levers). oneDNN's fusion with neighbouring elementwise ops (fusion type "dot") is not used: it aborted the
process ("partition compile failed") on CRATE's attention backward. YNNPACK keeps the reductions but not the
convolutions (YNN_OPTIONS): jaxlib's default runs a convolution's kernel gradient through YNNPACK at 3-4× the
time of XLA's own (Eigen) convolution (3×3, 64 channels at 56², batch 8: 39 against 14 ms; forward and input
gradient about equal), and its elementwise fusions were slower; the ECA-ResNet-50d / FasterNet-T0 training steps
take 15-22% less CPU time (experiments/efficiency/TIMM.md, "Training-step levers"). EFFJAX_RUNTIME=off returns no
options; EFFJAX_CPU_ONEDNN=0 drops the oneDNN options alone: jaxlib 0.10.2 cannot serialise an executable that calls
oneDNN ("ToProto is not implemented for thunk kind: onednn-fusion"), so such steps never enter JAX's persistent
compilation cache. The test suite sets it (tests/conftest.py) so that a step it compiles again, in a later test or
subprocess, comes from the cache.
"""
import importlib.metadata
import os
import sys

TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4")
ONEDNN_OPTIONS = {"xla_cpu_use_onednn": True,
                  "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
YNN_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}  # not its convolutions
CPU_COMPILER_OPTIONS = {**ONEDNN_OPTIONS, **YNN_OPTIONS}
MARKER = "EFFJAX_ALLOCATOR"  # the allocator this process was started with (set by the re-run; glibc: no re-run)


def _switched_off():
  """EFFJAX_RUNTIME=off: neither the allocator re-run nor the compiler options."""
  return os.environ.get("EFFJAX_RUNTIME", "").lower() == "off"


def tcmalloc_path():
  """Path of an installed tcmalloc (minimal) library, or None."""
  return next((p for p in TCMALLOC_PATHS if os.path.exists(p)), None)


def mimalloc_path():
  """Path of mimalloc's shared library in the installed cmeel-mimalloc wheel, or None."""
  try:
    files = importlib.metadata.distribution("cmeel-mimalloc").files or ()
  except importlib.metadata.PackageNotFoundError:
    return None
  paths = [str(f.locate()) for f in files if f.name.startswith("libmimalloc.so")]
  return next((p for p in sorted(paths, key=len) if os.path.exists(p)), None)


def allocator_path():
  """(name, path) of the allocator a re-run preloads: a system tcmalloc, else the wheel's mimalloc; or None."""
  for name, find in (("tcmalloc", tcmalloc_path), ("mimalloc", mimalloc_path)):
    path = find()
    if path:
      return name, path
  return None


def reexec_with_allocator(argv=None):
  """Replaces this process by the same command with allocator_path() preloaded (see the module docstring);
  returns without doing anything when that does not apply. `argv`: the command to re-run (default: the
  original command line of this interpreter, `sys.orig_argv`)."""
  if _switched_off() or os.environ.get(MARKER) or os.environ.get("LD_PRELOAD") or not sys.platform.startswith("linux"):
    return
  found = allocator_path()
  if found is None:
    return
  name, path = found
  argv = list(sys.orig_argv if argv is None else argv)
  # stdout, beside the run's other progress lines: stderr stays reserved for the one-line errors
  print(f"effjax: re-running with {name} preloaded ({path}); EFFJAX_RUNTIME=off to skip", flush=True)
  os.execve(sys.executable, argv, dict(os.environ, LD_PRELOAD=path, **{MARKER: name}))


def compiler_options(backend=None):
  """XLA compiler options for effjax's compiled steps on `backend` (default: JAX's default backend):
  CPU_COMPILER_OPTIONS on CPU (see the module docstring), YNN_OPTIONS alone with EFFJAX_CPU_ONEDNN=0, None
  elsewhere and with EFFJAX_RUNTIME=off."""
  import jax
  if _switched_off() or (backend or jax.default_backend()) != "cpu":
    return None
  return dict(YNN_OPTIONS if os.environ.get("EFFJAX_CPU_ONEDNN") == "0" else CPU_COMPILER_OPTIONS)


def allocator():
  """The allocator this process runs with: "tcmalloc" or "mimalloc" (re-executed or preloaded by the user), or
  "glibc"."""
  preload = os.environ.get("LD_PRELOAD", "")
  return os.environ.get(MARKER) or next((a for a in ("tcmalloc", "mimalloc") if a in preload), "glibc")
