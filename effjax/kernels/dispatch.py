"""The one dispatch rule of every kernel op, the validation record it reads, and the constants kernels share.

Every op (`attention`, `subspace_attention`, `depthwise_conv`, `dcls.construct_kernel`, the HyperZ·Z·W
`global_mix` / `hyperzzw_global` / `local_conv`) takes `impl` in IMPLS and calls `resolve`:

  * "xla": the pure-XLA path, on every platform.
  * "pallas": the Pallas kernel, never a silent fallback. On TPU the Mosaic kernel, on GPU the Triton
    kernel, both compiled; on any other platform (CPU) the TPU kernel in interpret mode. When the op
    cannot run its kernel on these arguments, `resolve` raises a ValueError naming why.
  * "auto": the kernel only when the arguments fit it AND the committed validation record (`RECORD`,
    written by `python experiments/kernels/check.py`) holds a passing entry for this op on this platform,
    device kind and JAX version whose kernel was at least as fast as XLA; otherwise "xla". So "auto" is
    XLA on CPU and on any accelerator, JAX version or kernel that has not been checked.

`target(platform, device_kind)` makes the rule resolve for another machine while tracing (effjax.aot compiles
for a TPU slice from a CPU host: "auto" then picks what that chip would run, "pallas" its compiled kernel).
`backend` ("tpu" / "gpu") and `interpret` override the platform defaults for "pallas" (tests use them to
run one backend's kernel in interpret mode, or to lower it for another platform with `jax.export`).
"""
import contextlib
import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "pallas")
BACKENDS = ("tpu", "gpu")
OPS = ("attention", "subspace_attention", "depthwise_conv", "dcls", "hyperzzw_global")
RECORD = pathlib.Path(__file__).with_name("validated.json")

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)   # logit of a masked pair: exp underflows to 0, no inf
EMPTY_LSE = 1e30                                        # LSE of a row with no visible key: exp(s - LSE) = 0
NT = (((1,), (1,)), ((), ()))                           # dot_general dimension numbers of a @ bᵀ


@dataclasses.dataclass(frozen=True)
class Kernel:
  """A resolved kernel call: which backend's kernel, and whether it runs in interpret mode."""
  backend: str
  interpret: object = False


_TARGET = []  # (platform, device_kind) set by `target`, innermost last


@contextlib.contextmanager
def target(platform_name: str, kind: str):
  """Resolves kernels as on `platform_name` ("cpu", "gpu", "tpu") devices of `kind` within the block."""
  _TARGET.append((platform_name, kind))
  try:
    yield
  finally:
    _TARGET.pop()


def platform() -> str:
  """"cpu", "gpu" or "tpu" (jax.default_backend, or the `target`)."""
  return _TARGET[-1][0] if _TARGET else jax.default_backend()


def device_kind() -> str:
  return _TARGET[-1][1] if _TARGET else jax.devices()[0].device_kind


@functools.lru_cache(maxsize=None)
def _records(path):
  p = pathlib.Path(path)
  return tuple(json.loads(p.read_text())) if p.exists() else ()


def record_key(rec) -> tuple:
  """What a validation entry is about: (kernel, platform, device_kind, jax)."""
  return rec["kernel"], rec["platform"], rec["device_kind"], rec["jax"]


def is_validated(op: str, *, records=None) -> bool:
  """True when the record says `op`'s kernel passed, and was not slower than XLA, on this exact setup."""
  if platform() not in BACKENDS:
    return False
  records = _records(str(RECORD)) if records is None else records
  key = (op, platform(), device_kind(), jax.__version__)
  return any(record_key(r) == key and r.get("passed") and r.get("speedup", 0.0) >= 1.0 for r in records)


def resolve(op: str, impl: str, *, unsupported: str | None = None, backend: str | None = None,
            interpret=None) -> Kernel | None:
  """The kernel to run for `op` with `impl`, or None for the XLA path (see the module docstring).

  unsupported: why the kernel cannot take these arguments (None when it can); "auto" then takes XLA and
  "pallas" raises with this reason.
  """
  if op not in OPS:
    raise ValueError(f"unknown kernel op {op!r}; expected one of {OPS}")
  if impl not in IMPLS:
    raise ValueError(f"unknown {op} impl {impl!r}; expected one of {IMPLS}")
  if backend is not None and backend not in BACKENDS:
    raise ValueError(f"unknown {op} kernel backend {backend!r}; expected one of {BACKENDS}")
  if impl == "xla":
    return None
  if impl == "auto":
    if unsupported is not None or not is_validated(op):
      return None
    return Kernel(platform())
  if unsupported is not None:
    raise ValueError(f"{op} impl='pallas' cannot run its kernel here: {unsupported}; use impl='xla' or 'auto'")
  here = platform()
  backend = backend or ("gpu" if here == "gpu" else "tpu")
  return Kernel(backend, (here != backend) if interpret is None else interpret)
