"""CPU allocator set-up for the command line: re-run the process once with tcmalloc preloaded.

XLA:CPU allocates and frees its step buffers on every step; under glibc malloc those pages are handed
back to the kernel and page-fault again on the next step (≈ 340,000 minor faults per CRATE-T train step,
none with tcmalloc, which keeps freed memory for reuse; experiments/crate/README.md has the levers table:
glibc's own knobs, mallopt or GLIBC_TUNABLES, did not remove the faults). An allocator can only be chosen
when a process starts, so `python -m effjax.main` calls `reexec_with_tcmalloc()` before it imports JAX:
when tcmalloc is installed (Debian/Ubuntu: `apt-get install libtcmalloc-minimal4`) and not yet loaded, the
command re-executes itself once with LD_PRELOAD set and says so in one log line. EFFJAX_RUNTIME=off, an
LD_PRELOAD of the user's own, or a missing library leave the process as it is. A notebook cannot be
re-executed: start its kernel with LD_PRELOAD=<path below> to get the same effect.
"""
import os
import sys

TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4")
MARKER = "EFFJAX_ALLOCATOR"  # set in the re-executed process: the allocator it was started with


def tcmalloc_path():
  """Path of an installed tcmalloc (minimal) library, or None."""
  return next((p for p in TCMALLOC_PATHS if os.path.exists(p)), None)


def reexec_with_tcmalloc(argv=None):
  """Replaces this process by the same command with tcmalloc preloaded (see the module docstring); returns
  without doing anything when that does not apply. `argv`: the command to re-run (default: the original
  command line of this interpreter, `sys.orig_argv`)."""
  if (os.environ.get("EFFJAX_RUNTIME", "").lower() == "off" or os.environ.get(MARKER)
      or os.environ.get("LD_PRELOAD") or not sys.platform.startswith("linux")):
    return
  path = tcmalloc_path()
  if path is None:
    return
  argv = list(sys.orig_argv if argv is None else argv)
  # stdout, beside the run's other progress lines: stderr stays reserved for the one-line errors
  print(f"effjax: re-running with tcmalloc preloaded ({path}); EFFJAX_RUNTIME=off to skip", flush=True)
  os.execve(sys.executable, argv, dict(os.environ, LD_PRELOAD=path, **{MARKER: "tcmalloc"}))


def allocator():
  """The allocator this process runs with: "tcmalloc" (re-executed or preloaded by the user) or "glibc"."""
  return "tcmalloc" if os.environ.get(MARKER) or "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc"
