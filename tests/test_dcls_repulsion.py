"""The ConvNeXt-dcls repulsion loss between DCLS taps (official utils.get_dcls_loss_rep, added as loss_rep² after
epoch 20 by engine.py): `convnext.param_penalty` against a torch rewrite of the official formula (values and
gradients), and the trainer's step switching it on at the epoch boundary."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from effjax import config as cfg, optim, train
from effjax.layers.dcls import position_repulsion
from effjax.models import convnext
from effjax.tasks import classification

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_repulsion(arrays):
  """The official formula, rewritten: per array P [2, O, I, K], the taps [O·I, K, 2] of each kernel, their
  torch.cdist distances, max(0, 1 - d) averaged over the pairs a < b and the kernels; then the mean over arrays."""
  per_array = []
  for P in arrays:
    k = P.shape[-1]
    taps = P.reshape(P.shape[0], -1, k).permute(1, 2, 0)
    a, b = torch.triu_indices(k, k, offset=1)
    per_array.append(torch.clamp_min(1 - torch.cdist(taps, taps)[:, a, b], 0).mean())
  return torch.stack(per_array).mean()


@pytest.fixture(scope="module")
def positions():
  """Two stages' shared positions; 30 taps (> 25: torch.cdist takes its matmul path) with two coincident taps."""
  rng = np.random.default_rng(0)
  p0 = rng.uniform(-1.5, 1.5, (2, 6, 1, 30)).astype(np.float32)
  p0[:, 2, 0, 7] = p0[:, 2, 0, 3]
  p1 = rng.uniform(-2.0, 2.0, (2, 5, 1, 4)).astype(np.float32)
  return {"stage0_dcls_P": p0, "stage1_dcls_P": p1}


def test_penalty_equals_official_formula_and_starts_after_epoch_20(positions):
  c = cfg.load_config_file(os.path.join(REPO, "configs/convnext.py:dcls=True"))
  assert c.model.dcls.repulsion_after_epoch == 20
  penalty = convnext.param_penalty(c)
  params = {k: jnp.asarray(v) for k, v in positions.items()}
  params["stage0_block0"] = {"conv_dw": {"weight": jnp.ones((6, 1, 30))}}  # a block using the shared P: no own P

  tp = [torch.tensor(positions[k], requires_grad=True) for k in ("stage0_dcls_P", "stage1_dcls_P")]
  want = torch_repulsion(tp)
  (want ** 2).backward()
  want = want.item()
  assert 0.05 < want < 1.0  # taps are within one pixel of each other: the loss is not trivially 0

  def term(p, epoch):
    value, metrics = penalty(p, epoch)
    return value, metrics["dcls_repulsion"]

  grad_fn = jax.jit(jax.grad(term, has_aux=True))
  for epoch, on in ((0, False), (20, False), (21, True), (299, True)):
    value, r = jax.jit(term)(params, jnp.int32(epoch))
    np.testing.assert_allclose(r, want, rtol=1e-5)      # logged at every epoch
    np.testing.assert_allclose(value, want ** 2 if on else 0.0, rtol=1e-5)
    grads, _ = grad_fn(params, jnp.int32(epoch))
    for name, t in zip(("stage0_dcls_P", "stage1_dcls_P"), tp):
      expected = t.grad.numpy() if on else np.zeros_like(positions[name])
      np.testing.assert_allclose(grads[name], expected, rtol=1e-4, atol=1e-7)
    assert np.all(np.isfinite(grads["stage0_dcls_P"]))  # the coincident taps give no NaN


def test_bad_positions_are_errors():
  with pytest.raises(ValueError, match="at least 2 taps"):
    position_repulsion(jnp.zeros((2, 3, 1, 1)))
  c = cfg.load_config_file(os.path.join(REPO, "configs/convnext.py:dcls=True"))
  with pytest.raises(ValueError, match="no DCLS positions"):
    convnext.param_penalty(c)({"head": {"kernel": jnp.ones((2, 2))}}, jnp.int32(30))
  assert convnext.param_penalty(cfg.load_config_file(os.path.join(REPO, "configs/convnext.py"))) is None


def test_train_step_adds_the_penalty_from_epoch_21():
  """One compiled step of a tiny ConvNeXt-DCLS (per-block positions) at the last step of epoch 20 and the first of
  epoch 21: same batch and params, so the two losses differ by exactly R², and R is logged at both."""
  c = cfg.load_config_file(os.path.join(REPO, "configs/convnext.py:runlocal,dcls=True"))
  c.model.update(depths=(1, 1), widths=(8, 16))
  c.model.dcls.repulsion_after_epoch = 20
  model, task = convnext.Model(**c.model), classification.Task(c)
  spe = 10
  tx, schedule = optim.make_optimizer(c.optimizer, 1000, spe)
  batch = {"image": jax.random.normal(jax.random.key(2), (2, 16, 16, 1)), "label": jnp.array([0, 1])}
  variables = dict(task.init_variables(model, jax.random.key(0), batch))
  params = variables.pop("params")
  state = {"params": params, "opt_state": tx.init(params), "model_state": variables, "ema_params": {},
           "rng": jax.random.key(1)}
  step = jax.jit(train.make_train_step(c, model, task, tx, schedule, jnp.float32, steps_per_epoch=spe))
  _, before = step(dict(state, step=jnp.int32(21 * spe - 1)), batch)
  _, after = step(dict(state, step=jnp.int32(21 * spe)), batch)
  arrays = [b["conv_dw"]["P"] for b in params.values() if "conv_dw" in b]
  assert len(arrays) == 2
  r = float(sum(position_repulsion(p) for p in arrays) / len(arrays))
  assert r > 0
  np.testing.assert_allclose([before["dcls_repulsion"], after["dcls_repulsion"]], [r, r], rtol=1e-5)
  np.testing.assert_allclose(after["loss"] - before["loss"], r ** 2, rtol=1e-3)
