"""The one dispatch rule: "pallas" runs the kernel or raises naming why, "auto" takes a kernel only where the
committed validation record says it passed (and was not slower than XLA) on this platform, device and JAX."""
import json
import warnings

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
  """A passing, faster-than-XLA entry for local-window bf16 attention with head dim 64 on this setup (an H200)."""
  rec = dict(dispatch.case("attention", "local", jnp.bfloat16, 64), **dispatch.setup("attention"), passed=True,
             speedup=1.3)
  return dict(rec, **kw)


BF16_LOCAL = dict(pattern="local", dtype=jnp.bfloat16, head_dim=64)


@pytest.fixture
def on_gpu(monkeypatch, tmp_path):
  """Pretends to be on an H200 and points the record at a temporary file; returns a writer for it."""
  monkeypatch.setattr(dispatch, "platform", lambda: "gpu")
  monkeypatch.setattr(dispatch, "device_kind", lambda: "NVIDIA H200")
  monkeypatch.setattr(dispatch, "backend_version", lambda: "cuda 13000")
  monkeypatch.setattr(dispatch, "_WARNED", set())
  path = tmp_path / "validated.json"
  monkeypatch.setattr(dispatch, "RECORD", path)
  return lambda records: path.write_text(json.dumps(records))


@pytest.mark.parametrize("records", [
    [],
    [_record(passed=False)],
    [_record(speedup=0.7)],
    [_record(device_kind="NVIDIA A100")],
    [_record(platform="tpu")],
    [_record(kernel="depthwise_conv")],
    [_record(pattern="full")],
    [_record(dtype="float32")],
    [_record(head_dim=[65, 128])],
], ids=["none", "failed", "slower", "other-device", "other-platform", "other-kernel", "other-pattern", "other-dtype",
        "other-head-dims"])
def test_auto_never_selects_an_unvalidated_kernel(on_gpu, records):
  on_gpu(records)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # none of these is stale or partial
    assert dispatch.resolve("attention", "auto", **BF16_LOCAL) is None


def test_auto_selects_a_validated_kernel_only_for_its_case(on_gpu):
  on_gpu([_record()])
  assert dispatch.resolve("attention", "auto", **BF16_LOCAL) == dispatch.Kernel("gpu", False)
  assert dispatch.resolve("attention", "auto", **dict(BF16_LOCAL, head_dim=48)) is not None   # same range 33-64
  assert dispatch.resolve("attention", "auto", **dict(BF16_LOCAL, head_dim=128)) is None
  assert dispatch.resolve("attention", "auto", **dict(BF16_LOCAL, pattern="causal")) is None
  assert dispatch.resolve("attention", "auto", unsupported="a bias", **BF16_LOCAL) is None
  assert dispatch.resolve("subspace_attention", "auto", pattern="full", dtype=jnp.bfloat16, head_dim=64) is None


def test_attention_passes_its_case_to_the_record(on_gpu):
  on_gpu([_record(pattern="grouped", head_dim=[1, 32])])
  q = jnp.zeros((1, 16, 2, 8), jnp.bfloat16)
  validated = lambda p: "pallas_call" in str(jax.make_jaxpr(lambda q: attention(q, q, q, pattern=p))(q))
  assert validated(ap.dilated(2)) and not validated(ap.local(2))


@pytest.mark.parametrize("field,value", [("jax", "0.0.1"), ("jaxlib", "0.0.1"), ("backend_version", "cuda 12000"),
                                         ("source_hash", "0" * 16)])
def test_a_stale_record_is_ignored_with_one_warning(on_gpu, field, value):
  on_gpu([_record(**{field: value})])
  with pytest.warns(UserWarning, match=f"stale.*{field}") as caught:
    assert dispatch.resolve("attention", "auto", **BF16_LOCAL) is None
    assert dispatch.resolve("attention", "auto", **BF16_LOCAL) is None
  assert len(caught) == 1


def test_a_partial_record_is_ignored_with_one_warning(on_gpu):
  partial = _record()
  del partial["source_hash"]
  on_gpu([_record(), partial])
  with pytest.warns(UserWarning, match="partial.*source_hash") as caught:
    assert dispatch.resolve("attention", "auto", **BF16_LOCAL) is None
    assert dispatch.resolve("attention", "auto", **BF16_LOCAL) is None
  assert len(caught) == 1


def test_record_changes_are_seen_without_a_restart(on_gpu):
  on_gpu([_record(passed=False)])
  assert dispatch.resolve("attention", "auto", **BF16_LOCAL) is None
  on_gpu([_record()])
  assert dispatch.resolve("attention", "auto", **BF16_LOCAL) is not None


def test_source_hash_follows_the_kernel_files(monkeypatch, tmp_path):
  for name in dispatch.SOURCES["dcls"]:
    (tmp_path / name).write_text("a")
  monkeypatch.setattr(dispatch, "__file__", str(tmp_path / "dispatch.py"))
  before = dispatch.source_hash("dcls")
  (tmp_path / dispatch.SOURCES["dcls"][0]).write_text("b")
  assert dispatch.source_hash("dcls") != before


def test_committed_record_is_well_formed():
  records = json.loads(dispatch.RECORD.read_text())
  for rec in records:
    assert set(rec) >= set(dispatch.CASE_FIELDS + dispatch.SETUP_FIELDS + dispatch.RESULT_FIELDS)
    assert rec["kernel"] in dispatch.OPS and rec["platform"] in dispatch.BACKENDS


def test_a_gpu_target_lowers_under_an_abstract_gpu_device():
  """JAX >= 0.11 lowers Pallas Triton kernels only for a GPU it can see: the abstract mesh's device."""
  with dispatch.target("gpu", dispatch.ABSTRACT_GPU):
    device = jax.sharding.get_abstract_mesh().abstract_device
    assert (device.device_kind, device.platform, dispatch.platform()) == (dispatch.ABSTRACT_GPU, "gpu", "gpu")
  assert jax.sharding.get_abstract_mesh().abstract_device is None
