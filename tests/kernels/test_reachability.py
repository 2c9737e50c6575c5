"""Every model family reaches its Pallas kernels with impl="pallas", forward and gradient, or refuses in one line
naming why. Checked on jaxprs only (tracing, no compilation), on tiny models with abstract parameters."""
import pathlib

import jax
import jax.numpy as jnp
import pytest

from effjax.kernels import dispatch
from effjax.models import (
  convnext,
  crate,
  crate_alpha,
  crate_mae,
  dformer,
  dilated_vit,
  fasternet,
  fit,
  fit_ar,
  fit_denoiser,
  halonet,
  inception_next,
  p3d,
  resnet,
  terminator,
  tvconv,
  vit,
)

img = lambda *shape: jnp.zeros(shape, jnp.float32)
TINY_BRANCH = dict(global_hidden=4, local_hidden=4, channel_hidden=4, interact_channel_hidden=4,
                   interact_spatial_hidden=4, omega_0=30.0, local_sizes=(3, 3, 3, 3))
FIT_TINY = dict(layers="(1)1(1)", latents_per_group=2, width=8, latent_width=8, num_heads=2, latent_num_heads=2,
                mlp_ratio=1)

# family -> (model maker impl -> module, inputs). These must reach a pallas_call.
REACHES = {
    "convnext": (lambda i: convnext.Model(num_classes=3, depths=(1, 1), widths=(8, 16), patch_size=2, impl=i),
                 (img(1, 8, 8, 3),)),
    "convnext_dcls": (lambda i: convnext.Model(num_classes=3, depths=(1, 1), widths=(8, 16), patch_size=2, impl=i,
                                               dcls=dict(kernel_count=3, dilated_kernel_size=5)), (img(1, 8, 8, 3),)),
    "crate": (lambda i: crate.Model(num_classes=3, patch_size=4, width=8, depth=1, num_heads=2, impl=i),
              (img(1, 8, 8, 1),)),
    "crate_alpha": (lambda i: crate_alpha.Model(num_classes=3, patch_size=4, width=8, depth=1, num_heads=2, impl=i),
                    (img(1, 8, 8, 1),)),
    "crate_mae": (lambda i: crate_mae.Model(patch_size=4, width=8, depth=1, num_heads=2, decoder_depth=1,
                                            impl=i), (img(1, 8, 8, 3),)),
    "dformer": (lambda i: dformer.Model(num_classes=2, width=4, depths=(2, 2), num_heads=(1, 1), patch_size=(1, 2, 2),
                                        group_size=(1, 2, 2), intervals=(1, 1), impl=i), (img(1, 2, 8, 8, 1),)),
    "dilated_vit": (lambda i: dilated_vit.Model(3, patch_size=(2, 2), width=8, depths=(2,), num_heads=(2,),
                                                group_size=(2, 2), intervals=(2,), impl=i), (img(1, 8, 8, 1),)),
    "fit": (lambda i: fit.Model(num_classes=3, patch_size=2, group_size=2, impl=i, **FIT_TINY), (img(1, 8, 8, 3),)),
    "fit_ar": (lambda i: fit_ar.Model(vocab_size=7, seq_len=8, group_size=4, impl=i, **FIT_TINY),
               (jnp.zeros((1, 8), jnp.int32),)),
    "fit_denoiser": (lambda i: fit_denoiser.Model(patch_size=2, group_size=2, impl=i, **FIT_TINY),
                     (img(1, 8, 8, 3), jnp.full((1,), 0.5))),
    "halonet": (lambda i: halonet.Model(blocks=("b", "a"), widths=(16, 32), strides=(1, 2), bottle_ratios=(0.25, 0.5),
                                        num_heads=(2, 2), stem_width=8, block_size=2, halo_size=1, num_classes=3,
                                        gate="eca", impl=i), (img(1, 16, 16, 3),)),
    "inception_next": (lambda i: inception_next.Model(num_classes=3, depths=(1, 1), widths=(8, 16), mlp_ratios=(2, 2),
                                                      branch_ratio=0.25, band_kernel_size=5, impl=i),
                       (img(1, 16, 16, 3),)),
    "resnet_eca": (lambda i: resnet.Model(num_classes=3, layers=(1,), widths=(4,), stem_width=8, gate="eca", impl=i),
                   (img(1, 16, 16, 3),)),
    "terminator": (lambda i: terminator.Model(num_classes=3, expansions=(2,), skips=((),), global_layers=(1,),
                                              dropout=(0.0,), norm_groups=2, branch=dict(TINY_BRANCH, impl=i)),
                   (img(2, 16, 16, 3),)),
    "vit": (lambda i: vit.Model(num_classes=3, patch_size=4, width=8, depth=1, num_heads=2, mlp_dim=8, impl=i),
            (img(1, 8, 8, 3),)),
}

# family -> (model maker, inputs, what the one-line refusal names).
REFUSES = {
    "terminator_1d": (REACHES["terminator"][0], (img(2, 16, 3),), "1-D is an FFT"),
    "tvconv": (lambda i: tvconv.Model(num_classes=3, blocks=((1, 8, 1, 1),), stem_width=8, last_width=8,
                                      tvconv_hidden=4, impl=i), (img(1, 8, 8, 3),), "differs at every output"),
}

# Families without any kernel op (dense convolutions only): they take no impl at all.
NO_KERNEL_OP = {
    "fasternet": lambda: fasternet.Model(num_classes=3, depths=(1, 1), width=8, feature_dim=16),
    "p3d": lambda: p3d.Model(num_classes=3, layers=(1,), width=2),
}


def _loss(make, inputs, impl):
  """(loss(params, state), abstract params, abstract state) of a model's training-mode output sum."""
  model = make(impl)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1), "noise": jax.random.key(2)}
  variables = jax.eval_shape(lambda: make("xla").init(rngs, *inputs))
  params, state = variables["params"], {c: v for c, v in variables.items() if c != "params"}

  def loss(params, state):
    out = model.apply({**state, "params": params}, *inputs, train=True, rngs=rngs, mutable=list(state))[0]
    return sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree.leaves(out) if jnp.issubdtype(o.dtype, jnp.floating))
  return loss, params, state


def _jaxprs(make, inputs, impl):
  """The jaxprs (as text) of the forward pass and of the parameter gradient; parameters stay abstract."""
  loss, params, state = _loss(make, inputs, impl)
  return str(jax.make_jaxpr(loss)(params, state)), str(jax.make_jaxpr(jax.grad(loss))(params, state))


def test_every_model_family_is_classified():
  families = {p.stem for p in pathlib.Path(convnext.__file__).parent.glob("*.py") if p.stem != "__init__"}
  covered = {f.split("_eca")[0].split("_dcls")[0].split("_1d")[0] for f in (*REACHES, *REFUSES, *NO_KERNEL_OP)}
  assert families <= covered, f"families without a reachability case: {sorted(families - covered)}"


@pytest.mark.parametrize("family", sorted(REACHES))
def test_pallas_reaches_a_kernel_forward_and_backward(family):
  make, inputs = REACHES[family]
  fwd, grad = _jaxprs(make, inputs, "pallas")
  # The gradient's jaxpr holds the forward pass too: more kernel calls there means the backward has its own.
  assert 0 < fwd.count("pallas_call") < grad.count("pallas_call")


@pytest.mark.parametrize("family", sorted(REACHES))
def test_every_family_lowers_its_kernels_for_cuda(family):
  """The parameter gradient with impl="pallas" exported for CUDA (Triton kernels, an abstract H100)."""
  loss, params, state = _loss(*REACHES[family], "pallas")
  text = dispatch.export(jax.grad(loss), "cuda", params, state).mlir_module()
  assert text.count(dispatch.KERNEL_CALLS["cuda"]) >= 2


@pytest.mark.parametrize("family", sorted(REFUSES))
def test_pallas_refuses_in_one_line_naming_why(family):
  make, inputs, why = REFUSES[family]
  with pytest.raises(ValueError, match=why) as e:
    _jaxprs(make, inputs, "pallas")
  assert "\n" not in str(e.value) and "impl='pallas'" in str(e.value)


@pytest.mark.parametrize("family", sorted(NO_KERNEL_OP))
def test_families_without_kernel_ops_take_no_impl(family):
  model = NO_KERNEL_OP[family]()
  assert not hasattr(model, "impl")
