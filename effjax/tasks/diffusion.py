"""Pixel diffusion (continuous time, as in pix2seq's image diffusion model) with latent self-conditioning.

Forward process on images scaled to [-b, b]: x_t = √γ(t) x_0 + √(1-γ(t)) ε, t ~ U(0, 1), with the
noise schedule γ (`schedule`: "cosine", "cosine@start,end,tau", "sigmoid@start,end,tau", "linear").
The network sees (x_t, γ, class one-hot) and predicts ε, x_0 or v (`pred_type`); the loss is the MSE
of that prediction (for x the error is divided by b).

Latent self-conditioning (FIT/RIN): when the model has `self_cond == "latent"`, a `self_cond_rate`
fraction of every batch first runs without previous latents; the latents it returns (gradient
stopped) are fed back as `latents_prev` for the training pass; the rest gets zeros. The sampler always
feeds back the latents of the previous step.

Sampling (`sample`): DDIM or DDPM over `steps` uniform times from 1 to 0; x_0 predictions are clipped
to [-b, b] and ε recomputed from the clipped x_0; classifier-free guidance
pred = (1+w)·pred(label) - w·pred(no label) when `guidance` w > 0 (the label is zeroed, as in
pix2seq). DeepCache (`cache_interval` k > 1, models whose call takes `latent_cache`, i.e. the FIT denoiser):
steps i with i mod k = 0 run the whole network and record its high-level (latent) features; the k - 1 steps
after reuse them and run only the shallow per-group path (effjax/models/fit_denoiser.py says what is cached).
k = 1 is the plain sampler. Batch contract: {"image": float [B, H, W, C] in [0, 1], "label": int [B] (optional),
"mask": [B] (eval only)}.
"""
import inspect
import math

import jax
import jax.numpy as jnp

from effjax.tasks import _base

PRED_TYPES = ("eps", "x", "v")


def make_schedule(name: str):
  """Schedule name -> γ(t): maps t in [0, 1] to the signal fraction γ, decreasing from ≈1 to ≈0."""
  kind, _, args = name.partition("@")
  vals = [float(v) for v in args.split(",")] if args else []
  if kind == "cosine" and not vals:
    return lambda t: jnp.cos(((t + 0.0002) / 1.00025) * math.pi / 2) ** 2
  if kind == "cosine" and len(vals) == 3:
    start, end, tau = vals
    f = lambda u: jnp.cos(u * math.pi / 2) ** (2 * tau)
    return lambda t: jnp.clip((f(t * (end - start) + start) - f(end)) / (f(start) - f(end)), 1e-9, 1.0)
  if kind == "sigmoid" and len(vals) == 3:
    start, end, tau = vals
    s = lambda u: jax.nn.sigmoid(u / tau)
    return lambda t: jnp.clip((s(end) - s(t * (end - start) + start)) / (s(end) - s(start)), 1e-9, 1.0)
  if kind == "linear" and not vals:
    return lambda t: jnp.clip(1.0 - t, 1e-9, 1.0)
  raise ValueError(f"unknown noise schedule {name!r}; expected cosine, cosine@s,e,tau, sigmoid@s,e,tau or linear")


def x0_eps_from_prediction(pred, x_t, gamma, pred_type, clip):
  """(x0, eps) implied by the network output; x0 clipped to ±clip (if > 0) and eps made consistent."""
  sg, sn = jnp.sqrt(gamma), jnp.sqrt(1.0 - gamma)
  if pred_type == "eps":
    x0 = (x_t - sn * pred) / sg
  elif pred_type == "x":
    x0 = pred
  else:  # v = √γ ε - √(1-γ) x0
    x0 = sg * x_t - sn * pred
  if clip > 0:
    x0 = jnp.clip(x0, -clip, clip)
  return x0, (x_t - sg * x0) / sn


def check_cache_interval(value) -> int:
  """The DeepCache interval as an int >= 1, or a ValueError naming the bad value."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"cache_interval must be an integer >= 1 (1 = no feature caching), got {value!r}")
  return value


class Task(_base.Task):
  """config.task: schedule, pred_type, b_scale, self_cond_rate, num_classes (0: unconditional), cond_dropout."""

  def __init__(self, config):
    super().__init__(config)
    t = config.task
    self.schedule_name = t.get("schedule", "cosine")
    self.gamma = make_schedule(self.schedule_name)
    self.pred_type = t.get("pred_type", "eps")
    if self.pred_type not in PRED_TYPES:
      raise ValueError(f"unknown pred_type {self.pred_type!r}; expected one of {PRED_TYPES}")
    self.b_scale = float(t.get("b_scale", 1.0))
    self.self_cond_rate = float(t.get("self_cond_rate", 0.5))
    self.num_classes = int(t.get("num_classes", 0))
    self.cond_dropout = float(t.get("cond_dropout", 0.0))

  # -- conditioning ---------------------------------------------------------------------------------
  def _cond(self, labels, batch_size, keep=None):
    if self.num_classes == 0:
      return None
    if labels is None:
      raise ValueError("diffusion task with num_classes > 0 needs a 'label' in the batch")
    onehot = jax.nn.one_hot(labels, self.num_classes)
    return onehot if keep is None else onehot * keep[:, None]

  @staticmethod
  def _self_cond(model):
    return getattr(model, "self_cond", "none") == "latent"

  def init_variables(self, model, rng, batch):
    images = batch["image"]
    b = images.shape[0]
    params_rng, dropout_rng = jax.random.split(rng)
    return model.init({"params": params_rng, "dropout": dropout_rng}, images, jnp.ones((b,)),
                      self._cond(batch.get("label"), b), None, train=False)

  # -- training -------------------------------------------------------------------------------------
  def noisy(self, images, rng):
    """images in [0, 1] -> (x0 in [-b, b], eps, x_t, gamma [B])."""
    x0 = (images.astype(jnp.float32) * 2.0 - 1.0) * self.b_scale
    t_rng, n_rng = jax.random.split(rng)
    gamma = self.gamma(jax.random.uniform(t_rng, (x0.shape[0],)))
    eps = jax.random.normal(n_rng, x0.shape)
    g = gamma.reshape((-1,) + (1,) * (x0.ndim - 1))
    return x0, eps, jnp.sqrt(g) * x0 + jnp.sqrt(1.0 - g) * eps, gamma

  def loss(self, model, variables, batch, rng, train):
    """Returns (mean loss, aux); aux["metrics"] holds the loss split by t < 0.5 and t ≥ 0.5."""
    images = batch["image"]
    b = images.shape[0]
    noise_rng, drop_rng, cond_rng, model_rng = jax.random.split(rng, 4)
    x0, eps, x_t, gamma = self.noisy(images, noise_rng)
    keep = None
    if train and self.cond_dropout > 0:
      keep = (jax.random.uniform(cond_rng, (b,)) >= self.cond_dropout).astype(jnp.float32)
    cond = self._cond(batch.get("label"), b, keep)
    apply = lambda *args: model.apply(variables, *args, train=train, rngs={"dropout": model_rng})
    x_in = x_t.astype(images.dtype)
    latents_prev = None
    if self._self_cond(model):
      n_sc = int(b * self.self_cond_rate)
      if n_sc > 0:
        sub = lambda a: None if a is None else a[:n_sc]
        _, latents = apply(x_in[:n_sc], gamma[:n_sc], sub(cond), None)
        latents = jax.lax.stop_gradient(latents)
        latents_prev = jnp.concatenate([latents, jnp.zeros((b - n_sc,) + latents.shape[1:], latents.dtype)])
    pred, _ = apply(x_in, gamma, cond, latents_prev)
    pred = pred.astype(jnp.float32)
    g = gamma.reshape((-1,) + (1,) * (x0.ndim - 1))
    if self.pred_type == "eps":
      target = eps
    elif self.pred_type == "x":
      target, pred = x0 / self.b_scale, pred / self.b_scale
    else:
      target = jnp.sqrt(g) * eps - jnp.sqrt(1.0 - g) * x0
    per_example = jnp.mean(jnp.square(pred - target), axis=tuple(range(1, x0.ndim)))
    loss = _base.weighted_mean(per_example, self.weights(batch, b))
    return loss, {"metrics": {"mse": loss}, "model_state": {}}

  def predict(self, model, variables, batch, capture=None):
    """The x0 estimate in [0, 1] from x_t at γ = 0.5 with fixed noise (for quick visual checks).

    With `capture`: (estimate, intermediates), see effjax/tasks/_base.py.
    """
    images = batch["image"]
    x0 = (images.astype(jnp.float32) * 2.0 - 1.0) * self.b_scale
    eps = jax.random.normal(jax.random.PRNGKey(0), x0.shape)
    gamma = jnp.full((x0.shape[0],), 0.5)
    x_t = jnp.sqrt(0.5) * x0 + jnp.sqrt(0.5) * eps
    (pred, _), collections = self.apply(model, variables, x_t, gamma, self._cond(batch.get("label"), x0.shape[0]),
                                        None, train=False, capture=capture)
    est, _ = x0_eps_from_prediction(pred.astype(jnp.float32), x_t, 0.5, self.pred_type, self.b_scale)
    return self.prediction(est / self.b_scale / 2.0 + 0.5, collections, capture)

  # -- sampling -------------------------------------------------------------------------------------
  def sample(self, model, variables, rng, shape, *, steps=50, method="ddim", labels=None, guidance=0.0,
             td=0.0, cache_interval=1):
    """Generates images [N, H, W, C] in [0, 1] for `shape` = (N, H, W, C) with `steps` network calls.

    method: "ddim" (deterministic) or "ddpm" (ancestral, variance β_t = 1 - γ_t/γ_s).
    labels: int [N] (required when the task is class-conditional). td: time delay for the next step.
    cache_interval: DeepCache interval k (1: no caching); every k-th step is a full network call.
    """
    if method not in ("ddim", "ddpm"):
      raise ValueError(f"unknown sampler {method!r}; expected 'ddim' or 'ddpm'")
    if steps < 1:
      raise ValueError(f"sampling needs steps >= 1, got {steps}")
    cache_interval = check_cache_interval(cache_interval)
    caching = "latent_cache" in inspect.signature(type(model).__call__).parameters
    if cache_interval > 1 and not caching:
      raise ValueError(f"cache_interval {cache_interval} needs a model with a latent feature cache (the FIT "
                       f"denoiser); {type(model).__name__} has none")
    n = shape[0]
    cond = self._cond(labels, n)
    self_cond = self._self_cond(model)
    init_rng, loop_rng = jax.random.split(rng)
    x = jax.random.normal(init_rng, shape)

    def full(x, gamma, cond, latents, cache):
      """One whole network call; records the latent cache when the model has one."""
      args = (variables, x, jnp.full((n,), gamma), cond, latents)
      if not caching:
        pred, latents = model.apply(*args, train=False)
        return pred.astype(jnp.float32), latents, cache
      (pred, latents), state = model.apply(*args, train=False, mutable=["latent_cache"])
      return pred.astype(jnp.float32), latents, state["latent_cache"]

    def cached(x, gamma, cond, latents, cache):
      """The shallow path only, on the features `full` recorded (the latents are the cached ones)."""
      pred, latents = model.apply(variables, x, jnp.full((n,), gamma), cond, latents, train=False,
                                  latent_cache=cache)
      return pred.astype(jnp.float32), latents, cache

    def denoise(i, x, gamma, cond, latents, cache):
      if cache_interval == 1:
        return full(x, gamma, cond, latents, cache)
      return jax.lax.cond(i % cache_interval == 0, full, cached, x, gamma, cond, latents, cache)

    _, latents0, cache0 = jax.eval_shape(full, x, 1.0, cond, None, None)
    latents0, cache0 = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), (latents0, cache0))
    guided = guidance > 0 and cond is not None

    def body(i, carry):
      x, latents, _, cache, cache_free = carry
      t_now = 1.0 - i / steps
      t_next = jnp.maximum(1.0 - (i + 1 + td) / steps, 0.0)
      g_now, g_next = self.gamma(t_now), self.gamma(t_next)
      pred, new_latents, cache = denoise(i, x, g_now, cond, latents if self_cond else None, cache)
      if guided:
        pred_free, _, cache_free = denoise(i, x, g_now, cond * 0.0, latents if self_cond else None, cache_free)
        pred = (1.0 + guidance) * pred - guidance * pred_free
      x0, eps = x0_eps_from_prediction(pred, x, g_now, self.pred_type, self.b_scale)
      if method == "ddim":
        x = jnp.sqrt(g_next) * x0 + jnp.sqrt(1.0 - g_next) * eps
      else:
        alpha = jnp.clip(g_now / g_next, 0.0, 1.0)
        mean = (x - (1.0 - alpha) / jnp.sqrt(1.0 - g_now) * eps) / jnp.sqrt(alpha)
        x = mean + jnp.sqrt(1.0 - alpha) * jax.random.normal(jax.random.fold_in(loop_rng, i), x.shape)
      return x, new_latents, x0, cache, cache_free

    _, _, x0, _, _ = jax.lax.fori_loop(0, steps, body, (x, latents0, jnp.zeros_like(x), cache0, cache0))
    return jnp.clip(x0 / self.b_scale / 2.0 + 0.5, 0.0, 1.0)
