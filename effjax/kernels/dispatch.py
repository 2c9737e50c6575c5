"""The one dispatch rule of every kernel op, the validation record it reads, and the constants kernels share.

Every op (`attention`, `subspace_attention`, `depthwise_conv`, `dcls.construct_kernel`, the HyperZ·Z·W
`global_mix` / `hyperzzw_global` / `local_conv`) takes `impl` in IMPLS and calls `resolve`:

  * "xla": the pure-XLA path, on every platform.
  * "pallas": the Pallas kernel, never a silent fallback. On TPU the Mosaic kernel, on GPU the Triton
    kernel, both compiled; on any other platform (CPU) the TPU kernel in interpret mode. When the op
    cannot run its kernel on these arguments, `resolve` raises a ValueError naming why.
  * "auto": the kernel only when the arguments fit it AND the committed validation record (`RECORD`,
    written by `python experiments/kernels/check.py --update_record`) holds a passing entry, at least as fast
    as XLA, for this call's case on this exact setup; otherwise "xla". So "auto" is XLA on CPU and on any
    accelerator, software version, kernel source or case that has not been checked.

A record entry is about one case: (op, pattern class, dtype, head-dim range) — e.g. attention, "local",
bfloat16, head dims 33-64 — on one setup: platform, device kind, jax, jaxlib, the backend's runtime version
(CUDA / TPU runtime, `platform_version`) and a hash of the op's kernel source files (`SOURCES`). Entries of
another setup are stale; a record with an entry lacking a field is partial. Either is ignored with one warning
(per message and process), and the record is re-read on every resolve (trace time), so no edit goes unseen.
Pattern classes: attention "full" | "causal" | "local" (sliding window, chunk-causal) | "grouped" (dilated,
FIT groups, grid windows / dilated groups); depthwise conv and HyperZ·Z·W "1d" | "2d" | "3d"; DCLS its
version; subspace attention "full".

`target(platform, device_kind)` makes the rule resolve for another machine while tracing (effjax.aot compiles
for a TPU slice from a CPU host: "auto" then picks what that chip would run, "pallas" its compiled kernel).
`backend` ("tpu" / "gpu") and `interpret` override the platform defaults for "pallas" (tests use them to
run one backend's kernel in interpret mode, or to lower it for another platform with `jax.export`).
"""
import contextlib
import dataclasses
import hashlib
import json
import pathlib
import warnings

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "pallas")
BACKENDS = ("tpu", "gpu")
OPS = ("attention", "subspace_attention", "depthwise_conv", "dcls", "hyperzzw_global")
RECORD = pathlib.Path(__file__).with_name("validated.json")
SOURCES = {  # the files whose text a validation holds for (their hash is part of every record entry)
    "attention": ("attention.py", "attention_patterns.py", "flash_attention.py", "flash_attention_gpu.py",
                  "flash_attention_tpu.py"),
    "subspace_attention": ("subspace_attention.py", "flash_attention.py", "flash_attention_gpu.py"),
    "depthwise_conv": ("depthwise_conv.py", "depthwise_conv_gpu.py", "depthwise_conv_tpu.py"),
    "dcls": ("dcls.py",),
    "hyperzzw_global": ("hyperzzw.py", "hyperzzw_pallas.py"),
}
HEAD_DIM_RANGES = ((1, 32), (33, 64), (65, 128), (129, 256), (257, 1 << 20))
CASE_FIELDS = ("kernel", "pattern", "dtype", "head_dim")
SETUP_FIELDS = ("platform", "device_kind", "jax", "jaxlib", "backend_version", "source_hash")
RESULT_FIELDS = ("passed", "speedup")

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
  """Resolves kernels as on `platform_name` ("cpu", "gpu", "tpu") devices of `kind` within the block.

  For "gpu" the block also runs under an abstract one-device mesh of that GPU kind: from JAX 0.11 on, Pallas
  Triton lowering reads the compute capability from the abstract device (`jax.sharding.AbstractDevice`) and no
  longer assumes one when the host has no GPU.
  """
  _TARGET.append((platform_name, kind))
  try:
    if platform_name != "gpu":
      yield
      return
    device = jax.sharding.AbstractDevice(device_kind=kind, num_cores=None, platform="gpu")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), (jax.sharding.AxisType.Explicit,), abstract_device=device)
    with jax.sharding.use_abstract_mesh(mesh):
      yield
  finally:
    _TARGET.pop()


ABSTRACT_GPU = "NVIDIA H100 80GB HBM3"
# The custom call Pallas Triton kernels lower to (JAX >= 0.11 names it jax.experimental.pallas.triton
# .CUSTOM_CALL_TARGET_NAME); not export-stable, so exports must allow it explicitly.
KERNEL_CALLS = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}


def export(f, platform_name: str, *args):
  """jax.export.export(jax.jit(f), platforms=[platform_name])(*args) from any host, kernels included: "cuda"
  resolves and lowers as on an abstract H100 (`target`), with the Triton custom call allowed."""
  allow = [jax.export.DisabledSafetyCheck.custom_call(KERNEL_CALLS["cuda"])]
  run = jax.export.export(jax.jit(f), platforms=[platform_name], disabled_checks=allow)
  if platform_name != "cuda":
    return run(*args)
  with target("gpu", ABSTRACT_GPU):
    return run(*args)


def platform() -> str:
  """"cpu", "gpu" or "tpu" (jax.default_backend, or the `target`)."""
  return _TARGET[-1][0] if _TARGET else jax.default_backend()


def device_kind() -> str:
  return _TARGET[-1][1] if _TARGET else jax.devices()[0].device_kind


def head_dim_range(d: int | None):
  """The [lo, hi] bucket of HEAD_DIM_RANGES holding head dim d (None for ops without one)."""
  return None if d is None else next(list(r) for r in HEAD_DIM_RANGES if r[0] <= d <= r[1])


def source_hash(op: str) -> str:
  """sha256 (16 hex digits) of the op's kernel source files (SOURCES)."""
  h = hashlib.sha256()
  for name in SOURCES[op]:
    h.update(pathlib.Path(__file__).with_name(name).read_bytes())
  return h.hexdigest()[:16]


def backend_version() -> str | None:
  """The accelerator runtime's version string (e.g. CUDA / the TPU runtime); None while resolving for a `target`."""
  if _TARGET:
    return None
  import jax.extend.backend
  return str(jax.extend.backend.get_backend().platform_version)


def setup(op: str) -> dict:
  """This process's values of SETUP_FIELDS for `op`."""
  import jaxlib
  return dict(platform=platform(), device_kind=device_kind(), jax=jax.__version__, jaxlib=jaxlib.__version__,
              backend_version=backend_version(), source_hash=source_hash(op))


def case(op: str, pattern: str = "-", dtype=None, head_dim: int | None = None) -> dict:
  """A record's CASE_FIELDS for one call."""
  return dict(kernel=op, pattern=pattern, dtype=None if dtype is None else str(jnp.dtype(dtype)),
              head_dim=head_dim_range(head_dim))


_WARNED = set()


def _warn_once(message):
  if message not in _WARNED:
    _WARNED.add(message)
    warnings.warn(message, stacklevel=3)


def read_record(path=None) -> list:
  """The record's entries, re-read on every call; [] (with one warning) when it is partial or unreadable."""
  path = pathlib.Path(RECORD if path is None else path)
  if not path.exists():
    return []
  try:
    records = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    _warn_once(f"effjax: kernel validation record {path} is not JSON ({e}); ignored, impl='auto' takes XLA")
    return []
  fields = CASE_FIELDS + SETUP_FIELDS + RESULT_FIELDS
  for rec in records:
    missing = [f for f in fields if f not in rec]
    if missing:
      _warn_once(f"effjax: kernel validation record {path} is partial (an entry of {rec.get('kernel')} lacks "
                 f"{', '.join(missing)}); ignored, impl='auto' takes XLA")
      return []
  return records


def record_key(rec) -> tuple:
  """What a validation entry is about: its case and setup fields."""
  return tuple(str(rec.get(f)) for f in CASE_FIELDS + SETUP_FIELDS)


def is_validated(op: str, *, records=None, **call) -> bool:
  """True when the record says `op`'s kernel passed, and was not slower than XLA, for this call's case (`case`
  keywords: pattern, dtype, head_dim) on this exact setup. Entries of the same op, platform and device with
  another version or kernel source are stale: ignored with one warning."""
  if platform() not in BACKENDS:
    return False
  records = read_record() if records is None else records
  mine = [r for r in records if r["kernel"] == op and r["platform"] == platform() and r["device_kind"] == device_kind()]
  if not mine:
    return False
  want, here = case(op, **call), setup(op)
  if here["backend_version"] is None:   # resolving for a target machine: its runtime version is unknown
    here.pop("backend_version")
  fresh = [r for r in mine if all(r[f] == v for f, v in here.items())]
  if not fresh:
    diff = sorted({f for r in mine for f, v in here.items() if r[f] != v})
    _warn_once(f"effjax: the kernel validation record of {op} on {platform()} ({device_kind()}) is stale "
               f"({', '.join(diff)} changed since it was checked); ignored, impl='auto' takes XLA until "
               "check.py --update_record")
    return False
  return any(all(r[f] == v for f, v in want.items()) and r["passed"] and r["speedup"] >= 1.0 for r in fresh)


def resolve(op: str, impl: str, *, unsupported: str | None = None, backend: str | None = None,
            interpret=None, **call) -> Kernel | None:
  """The kernel to run for `op` with `impl`, or None for the XLA path (see the module docstring).

  unsupported: why the kernel cannot take these arguments (None when it can); "auto" then takes XLA and
  "pallas" raises with this reason. call: the call's case for the record (`case`: pattern, dtype, head_dim).
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
    if unsupported is not None or not is_validated(op, **call):
      return None
    return Kernel(platform())
  if unsupported is not None:
    raise ValueError(f"{op} impl='pallas' cannot run its kernel here: {unsupported}; use impl='xla' or 'auto'")
  here = platform()
  backend = backend or ("gpu" if here == "gpu" else "tpu")
  return Kernel(backend, (here != backend) if interpret is None else interpret)
