"""Token reduction (effjax/layers/token_reduction.py) against the official ToMe and DiffRate code, and its hook in
the four transformer classifiers. The goldens come from tests/data/make_token_reduction_goldens.py."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from effjax.kernels.attention import attention
from effjax.layers import token_reduction as tr
from effjax.models import crate, crate_alpha, dilated_vit, vit
from effjax.tasks import diffrate

GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "..", "data", "token_reduction_goldens.npz"))
META = json.loads(str(GOLDEN["meta"]))
TOL = dict(rtol=1e-5, atol=1e-6)


def g(key):
  return jnp.asarray(GOLDEN[key], jnp.float32)


def test_tome_merge_matches_official():
  @jax.jit
  def run(metric, x, size, r, class_token):
    merge = tr.bipartite_soft_matching(metric, r, class_token)
    return *tr.merge_wavg(merge, x, size), merge(x, "mean")
  run = jax.jit(run.__wrapped__, static_argnums=(3, 4))
  for case in ("cls", "nocls", "capped"):
    meta = META[f"tome/{case}"]
    x, size, mean = run(*(g(f"tome/{case}/{n}") for n in ("metric", "x", "size")), meta["r"], meta["class_token"])
    np.testing.assert_allclose(x, GOLDEN[f"tome/{case}/x_merged"], **TOL)
    np.testing.assert_array_equal(size, GOLDEN[f"tome/{case}/size_merged"])
    np.testing.assert_allclose(mean, GOLDEN[f"tome/{case}/x_mean"], **TOL)


def test_tome_schedule_matches_parse_r():
  for key, want in META["tome/parse_r"].items():
    depth, r, inflection = key.split(",")
    assert tr.tome_schedule(int(depth), int(r), float(inflection)) == want, key


def test_proportional_attention_matches_official():
  q, k, v = (g(f"prop_attn/{n}").transpose(0, 2, 1, 3) for n in "qkv")  # [B, H, N, d] -> [B, N, H, d]
  y = jax.jit(lambda q, k, v, s: attention(q, k, v, bias=tr.size_bias(s)))(q, k, v, g("prop_attn/size"))
  np.testing.assert_allclose(y.transpose(0, 2, 1, 3), GOLDEN["prop_attn/out"], **TOL)


def test_diffrate_merge_and_step_match_official():
  keys = [k for k in GOLDEN.files if k.startswith("diffrate_step/") and k.endswith("/x") and "," in k]
  steps = [tr.Step("diffrate", *(0,), *map(int, k.split("/")[1].split(","))) for k in keys]

  @jax.jit
  def run(metric, x, xs, size, cls_attn):
    merge, node_max = tr.diffrate_merge(metric, 4)
    return merge(x, "mean"), merge(x, "sum"), node_max, [tr.diffrate_reduce(xs, size, cls_attn, s) for s in steps]
  mean, total, node_max, reduced = run(g("diffrate_merge/metric"), g("diffrate_merge/x"), g("diffrate_step/x"),
                                       g("diffrate_step/size"), g("diffrate_step/cls_attn"))
  np.testing.assert_allclose(node_max, GOLDEN["diffrate_merge/node_max"], **TOL)
  np.testing.assert_allclose(mean, GOLDEN["diffrate_merge/x_mean"], **TOL)
  np.testing.assert_allclose(total, GOLDEN["diffrate_merge/x_sum"], **TOL)
  for key, (x, size) in zip(keys, reduced):
    np.testing.assert_allclose(x, GOLDEN[key], **TOL)
    np.testing.assert_allclose(size, GOLDEN[key[:-1] + "size"], **TOL)


def test_diffrate_rates_and_flops_match_official():
  meta = META["ddp"]
  patches, width = meta["patches"], meta["width"]
  cand = tr.rate_candidates(patches)
  logits = [g(f"ddp/{i}/logits") for i in range(meta["layers"])]
  mask_fn = lambda z, i: tr.token_mask(z, cand, jax.lax.stop_gradient(tr.kept_number(z, cand)), patches + 1,
                                       last=patches + 1 - i)

  def total(zs):
    kept = [tr.kept_number(z, cand) for z in zs]
    return tr.flops(list(zip(kept[:2], kept[1:])), patches + 1, width)

  @jax.jit
  def run(zs):
    per_layer = [(tr.kept_number(z, cand), jax.grad(lambda z: tr.kept_number(z, cand))(z), mask_fn(z, i),
                  jax.grad(lambda z, i=i: (mask_fn(z, i) * jnp.arange(patches + 1.0)).sum())(z))
                 for i, z in enumerate(zs)]
    return per_layer, total(zs), jax.grad(total)(zs)
  per_layer, value, grads = run(logits)
  for i, (kept, kept_grad, mask, mask_grad) in enumerate(per_layer):
    np.testing.assert_allclose(kept, GOLDEN[f"ddp/{i}/kept"])
    np.testing.assert_allclose(kept_grad, GOLDEN[f"ddp/{i}/kept_grad"], **TOL)
    np.testing.assert_allclose(mask, GOLDEN[f"ddp/{i}/mask"], **TOL)
    np.testing.assert_allclose(mask_grad, GOLDEN[f"ddp/{i}/mask_grad"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(value, GOLDEN["flops/value"], rtol=1e-6)
  for i, got in enumerate(grads):
    np.testing.assert_allclose(got, GOLDEN[f"flops/grad{i}"], rtol=1e-4, atol=1e-2)


def test_diffrate_search_step_matches_official():
  """Two layers of the search (masked attention, sort, prune and merge masks) and the gradients of the rates."""
  patches = META["ddp"]["patches"]
  cand = tr.rate_candidates(patches)
  qk = [g(f"search/qk{i}").transpose(0, 2, 1, 3) for i in range(4)]  # [B, H, N, d] -> [B, N, H, d]

  def run(logits, x):
    tokens = tr.Tokens(jnp.ones(x.shape[:2] + (1,)), jnp.ones(x.shape[:2]))
    outs = []
    for layer in range(2):
      q, k = qk[2 * layer], qk[2 * layer + 1]
      _, cls_attn = tr.policy_attention(q, k, k, tr.size_bias(tokens.size), tokens.mask, q.shape[-1] ** -0.5)
      x, tokens = tr.search_reduce(x, tokens, cls_attn, logits[2 * layer], logits[2 * layer + 1], cand, cand)
      outs.append((x, tokens.size, tokens.mask, jnp.stack(tokens.kept[-1])))
    w = jnp.linspace(-1, 1, x.shape[1])
    return (x.sum(-1) * w).sum() + (tokens.mask * w).sum() + 0.01 * tokens.size.sum(), outs

  logits = [g(f"search/logits{i}") for i in range(4)]
  grads, outs = jax.jit(jax.grad(run, has_aux=True))(logits, g("search/x0"))
  for layer, (x, size, mask, kept) in enumerate(outs):
    np.testing.assert_allclose(x, GOLDEN[f"search/{layer}/x"], **TOL)
    np.testing.assert_allclose(size, GOLDEN[f"search/{layer}/size"], **TOL)
    np.testing.assert_array_equal(mask, GOLDEN[f"search/{layer}/mask"])
    np.testing.assert_array_equal(kept, GOLDEN[f"search/{layer}/kept"])
  for i, got in enumerate(grads):
    np.testing.assert_allclose(got, GOLDEN[f"search/grad{i}"], rtol=1e-4, atol=1e-5)


IMAGES = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 1))  # 16 patches of 4x4 + class token
SMALL = {"vit": (vit, dict(width=16, depth=2, num_heads=2, mlp_dim=32)),
         "crate": (crate, dict(width=16, depth=2, num_heads=2)),
         "crate_alpha": (crate_alpha, dict(width=16, depth=2, num_heads=2))}


REDUCTIONS = (None, dict(method="tome", r=0),
              dict(method="diffrate", prune_keep=[17, 17], merge_keep=[17, 17]),
              dict(method="tome", r=4), dict(method="diffrate", prune_keep=[17, 12], merge_keep=[13, 6]))


@pytest.mark.parametrize("name", list(SMALL))
def test_models_reduce_tokens(name):
  """No reduction (r = 0, or DiffRate keeping every token: sorted tokens, and attention is
  order-equivariant) leaves the logits unchanged up to float error; ToMe and DiffRate change them."""
  mod, kw = SMALL[name]
  models = [mod.Model(num_classes=3, patch_size=4, reduction=red, **kw) for red in REDUCTIONS]
  params = jax.jit(models[0].init)(jax.random.PRNGKey(1), IMAGES)
  base, *same, tome, diffrate = jax.jit(lambda p: [m.apply(p, IMAGES) for m in models])(params)
  for out in same:
    np.testing.assert_allclose(out, base, atol=1e-5)
  for out in (tome, diffrate):
    assert np.abs(out - base).max() > 1e-4


def test_diffrate_search_task_trains_only_the_rates():
  """The search task's gradient reaches every layer's rates except the first (uncompressed) layer's, and no other
  parameter; the learned kept counts read back as an inference reduction."""
  config = ml_collections.ConfigDict(dict(
      model=dict(num_classes=3, reduction=dict(method="diffrate", prune_keep=None, merge_keep=None)),
      task=dict(label_smoothing=0.0, target=0.05, unit=1e6, lamb=5.0)))
  task = diffrate.Task(config)
  kw = dict(num_classes=3, patch_size=4, **SMALL["vit"][1])
  model = vit.Model(reduction=dict(config.model.reduction), **kw)
  batch = {"image": IMAGES, "label": jnp.array([0, 2])}
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), IMAGES)
  loss = lambda p: task.loss(model, {"params": p}, batch, jax.random.PRNGKey(2), True)
  grads, aux = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
  flat = {"/".join(k): float(jnp.abs(v).sum()) for k, v in traverse_util.flatten_dict(grads).items()}
  assert {k for k, v in flat.items() if v > 0} == {"block1/prune_rate", "block1/merge_rate"}, flat
  assert aux["metrics"]["flops"] > 0
  prune, merge = tr.learned_keeps(variables["params"], 16)
  assert prune == [17, 10] and merge == [17, 10]  # zero logits: the mean candidate ⌈8.5⌉ + class token
  vit.Model(reduction=dict(method="diffrate", prune_keep=prune, merge_keep=merge), **kw).apply(variables, IMAGES)
  with pytest.raises(ValueError, match="leave prune_keep / merge_keep unset"):
    config.model.reduction.prune_keep = (17, 10)
    diffrate.Task(config)


def test_bad_reduction_configs_fail_early():
  model = lambda red, **kw: vit.Model(num_classes=3, patch_size=4, reduction=red, **SMALL["vit"][1], **kw)
  cases = [(dict(method="merge"), "reduction.method must be one of"),
           (dict(method="tome", r=-1), "non-negative int"),
           (dict(method="tome", r=[1, 2, 3]), "needs 2 non-negative ints"),
           (dict(method="tome", r=2, inflection=3.0), "inflection must be in"),
           (dict(method="tome", r=2, prune_keep=[3, 3]), "unknown reduction field"),
           (dict(method="diffrate", prune_keep=[17, 18]), r"ints in \[1, 17\]")]
  for red, msg in cases:
    with pytest.raises(ValueError, match=msg):
      jax.eval_shape(model(red).init, jax.random.PRNGKey(0), IMAGES)
  with pytest.raises(ValueError, match="has no class token"):
    jax.eval_shape(model(dict(method="diffrate"), pool="gap").init, jax.random.PRNGKey(0), IMAGES)
  with pytest.raises(ValueError, match="need the full token grid"):
    jax.eval_shape(dilated_vit.Model(num_classes=3, reduction=dict(method="tome", r=2)).init,
                   jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))
