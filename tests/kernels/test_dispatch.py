"""The one dispatch rule: "pallas" runs the kernel or raises naming why, "auto" takes a kernel only where the
committed validation record says it passed (and was not slower than XLA) on this platform, device and JAX."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.kernels import attention_patterns as ap, dcls, dispatch, hyperzzw
from effjax.kernels.attention import attention
from effjax.kernels.depthwise_conv import depthwise_conv
from effjax.kernels.subspace_attention import subspace_attention

R = np.random.default_rng(0)


def rand(*shape):
  return jnp.asarray(R.normal(size=shape), jnp.float32)


Q = rand(1, 16, 2, 8)
X2, K2 = rand(1, 8, 8, 4), rand(3, 3, 4)
DCLS_ARGS = (rand(2, 2, 3), rand(2, 2, 2, 3), rand(2, 2, 2, 3), (5, 5), "gauss")
OPS = {
    "attention": lambda impl: attention(Q, Q, Q, pattern=ap.local(3), impl=impl),
    "subspace_attention": lambda impl: subspace_attention(Q, impl=impl),
    "depthwise_conv": lambda impl: depthwise_conv(X2, K2, impl=impl),
    "local_conv": lambda impl: hyperzzw.local_conv(X2, K2, impl=impl),
    "dcls": lambda impl: dcls.construct_kernel(*DCLS_ARGS, impl=impl),
    "global_mix": lambda impl: hyperzzw.global_mix(X2, X2, impl=impl),
    "hyperzzw_global": lambda impl: hyperzzw.hyperzzw_global(X2[0], X2, X2, impl=impl)[0],
}


def runs_a_kernel(f):
  return "pallas_call" in str(jax.make_jaxpr(f)())


@pytest.mark.parametrize("op", sorted(OPS))
def test_pallas_runs_the_kernel_and_auto_takes_xla_on_cpu(op):
  assert runs_a_kernel(lambda: OPS[op]("pallas"))        # interpret mode on CPU, never a silent XLA fallback
  assert not runs_a_kernel(lambda: OPS[op]("auto"))      # nothing is validated for CPU
  assert not runs_a_kernel(lambda: OPS[op]("xla"))
  np.testing.assert_allclose(OPS[op]("pallas"), OPS[op]("xla"), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("call,why", [
    (lambda: attention(Q, Q, Q, bias=jnp.zeros((1, 2, 16, 16)), impl="pallas"), "bias"),
    (lambda: hyperzzw.global_mix(X2[:, 0], X2[:, 0], impl="pallas"), "FFT"),
    (lambda: hyperzzw.hyperzzw_global(X2[0], X2, X2[..., :3], impl="pallas"), "multiple"),
    (lambda: dcls.construct_kernel(rand(2, 2, 3), rand(3, 2, 2, 3), rand(3, 2, 2, 3), (3, 3, 3), "gauss",
                                   impl="pallas"), "2-D"),
])
def test_pallas_raises_naming_why_instead_of_falling_back(call, why):
  with pytest.raises(ValueError, match=why):
    call()


def test_unknown_impl_and_backend_are_errors():
  with pytest.raises(ValueError, match="impl"):
    attention(Q, Q, Q, impl="pallas_tpu")
  with pytest.raises(ValueError, match="backend"):
    depthwise_conv(X2, K2, impl="pallas", backend="cuda")


def _record(**kw):
  rec = dict(kernel="attention", platform="gpu", device_kind="NVIDIA H200", jax=jax.__version__, passed=True,
             speedup=1.3)
  return dict(rec, **kw)


@pytest.fixture
def on_gpu(monkeypatch, tmp_path):
  """Pretends to be on an H200 and points the record at a temporary file; returns a writer for it."""
  monkeypatch.setattr(dispatch, "platform", lambda: "gpu")
  monkeypatch.setattr(dispatch, "device_kind", lambda: "NVIDIA H200")
  path = tmp_path / "validated.json"
  monkeypatch.setattr(dispatch, "RECORD", path)

  def write(records):
    path.write_text(json.dumps(records))
    dispatch._records.cache_clear()
  yield write
  dispatch._records.cache_clear()


@pytest.mark.parametrize("records", [
    [],
    [_record(passed=False)],
    [_record(speedup=0.7)],
    [_record(jax="0.0.1")],
    [_record(device_kind="NVIDIA A100")],
    [_record(platform="tpu")],
    [_record(kernel="depthwise_conv")],
], ids=["none", "failed", "slower", "other-jax", "other-device", "other-platform", "other-kernel"])
def test_auto_never_selects_an_unvalidated_kernel(on_gpu, records):
  on_gpu(records)
  assert dispatch.resolve("attention", "auto") is None


def test_auto_selects_a_validated_kernel_only_where_the_arguments_fit(on_gpu):
  on_gpu([_record()])
  assert dispatch.resolve("attention", "auto") == dispatch.Kernel("gpu", False)
  assert dispatch.resolve("attention", "auto", unsupported="a bias") is None
  assert dispatch.resolve("subspace_attention", "auto") is None


def test_committed_record_is_well_formed():
  records = json.loads(dispatch.RECORD.read_text())
  for rec in records:
    assert set(rec) >= {"kernel", "platform", "device_kind", "jax", "passed", "speedup"}
    assert rec["kernel"] in dispatch.OPS and rec["platform"] in dispatch.BACKENDS
