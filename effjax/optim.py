"""Optimizers, learning-rate schedules, weight-decay masks and gradient noise, chosen by name.

`make_optimizer(config.optimizer, total_steps, steps_per_epoch)` returns `(tx, schedule)`: an optax
GradientTransformation applied as

    grads -> clip_by_global_norm(grad_clip_norm)        if grad_clip_norm > 0
          -> add_annealed_noise(η, γ, seed)              if grad_noise_eta > 0
          -> optimizer `name` with lr = schedule(step)   (weight decay on the params picked by `decay_mask`)

and the schedule itself (step -> learning rate) for logging. Noise comes after clipping, so the gradients
the optimizer sees carry exactly the variance η / (1 + t)^γ whatever the clipping did. A model's constraint
on its params (e.g. DCLS positions kept inside their kernel) is not an optimizer's: the model module's
`param_constraint`, which the trainer applies after each update.

Optimizers (`OPTIMIZERS`), all reading lr, weight_decay and their own keys of config.optimizer:
  adamw  Adam with decoupled weight decay: θ -= lr·(m̂/(√v̂ + ε) + wd·θ); b1, b2.
  sgd    heavy-ball momentum (`momentum`, 0 = plain SGD; `nesterov` if the config has that key) with
         coupled L2 decay g += wd·θ as in torch.optim.SGD.
  lamb   layer-wise adaptive Adam (You et al. 2019); b1, b2, decoupled decay inside the trust ratio.
  lars   layer-wise adaptive SGD (You et al. 2017); momentum, trust coefficient 0.001; the decay mask
         also excludes those params from the trust ratio.
  lion   θ -= lr·(sign(β1 m + (1-β1) g) + wd·θ), m ← β2 m + (1-β2) g (Chen et al. 2023); b1, b2
         (the paper's defaults are 0.9, 0.99; base_config's b2 = 0.999 is Adam's, set it in the config).
  kar3   the HyperZ·Z·W paper's sign optimiser, see `kar3`; b1, b2 (the paper uses 0.5, 0.95).

Schedules (`SCHEDULES`), with peak lr = `lr`, warm-up length W = `warmup_steps`, or
round(`warmup_epochs` · steps_per_epoch) (not both), end lr = `end_lr_factor` · lr and T = total_steps:
  lr(t) = lr · min(1, t / W) · decay(p),   p = clip((t - W) / (T - W), 0, 1)
  warmup_cosine    decay = f + (1 - f)·(1 + cos πp) / 2        (f = end_lr_factor)
  warmup_linear    decay = 1 - (1 - f)·p
  warmup_constant  decay = 1
  warmup_rsqrt     decay = √(max(W, 1) / max(t, W, 1))          (inverse square root after warm-up)
  warmup_poly      decay = f + (1 - f)·(1 - p)^0.9              (nnU-Net's poly schedule, per step)
  constant         lr(t) = lr; setting a warm-up with it is an error (use warmup_constant).
So lr(0) = 0 when W > 0, lr(W) = lr and lr(T) = end_lr_factor · lr for the decaying schedules. A warm-up
longer than the run simply never reaches the peak.

Weight-decay masks: "all", "re:<regex>" (a param is decayed iff the regex matches somewhere in its "/"-joined path,
e.g. the CRATE-α official "re:/kernel$"), or "no_bias_norm", under which a param is decayed unless
  - it has ndim ≤ 1 (biases, norm scales and offsets, per-channel gains, scalars), or
  - its own name (last path entry, lower-cased) contains "bias" (multi-dimensional biases such as
    relative-position bias tables or the Terminator's `bias_p`), names a position embedding
    (contains "pos_emb", "posemb" or "position") or a learned token ("cls", "cls_*", "*_token"), or
  - one of its enclosing modules is a normalisation layer (a path entry containing "norm", or an entry
    `ln`, `bn`, `gn`, optionally numbered, alone or as a `_`-separated part, e.g. `ln1`, `mha_ln`).
"""
import difflib
import re
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from effjax.config import ConfigError


def _unknown(kind: str, name: str, valid) -> ConfigError:
  close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.0)
  return ConfigError(f"unknown {kind} {name!r}; did you mean {close[0]!r}? (valid: {', '.join(valid)})")


# ----------------------------------------------------------------------------------------- Kar3


class ScaleByKar3State(NamedTuple):
  """Two exponential moving averages of the gradient, with rates b1 (fast) and b2 (slow)."""
  m1: optax.Updates
  m2: optax.Updates


def scale_by_kar3(b1: float = 0.5, b2: float = 0.95) -> optax.GradientTransformation:
  """Kar3 direction d = sign(g) + sign(m1) + sign(m2), using the moments from before this step.

  The moments are updated after the direction is taken: m1 ← b1·m1 + (1-b1)·g, m2 ← b2·m2 + (1-b2)·g,
  both starting at 0 (so the first step is sign(g) alone, since sign(0) = 0).
  """
  if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
    raise ConfigError(f"kar3 betas must lie in [0, 1), got b1={b1}, b2={b2}")

  def init_fn(params):
    return ScaleByKar3State(m1=jax.tree.map(jnp.zeros_like, params), m2=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    del params
    direction = jax.tree.map(lambda g, a, b: jnp.sign(g) + jnp.sign(a) + jnp.sign(b), updates, state.m1, state.m2)
    m1 = jax.tree.map(lambda a, g: b1 * a + (1 - b1) * g, state.m1, updates)
    m2 = jax.tree.map(lambda b, g: b2 * b + (1 - b2) * g, state.m2, updates)
    return direction, ScaleByKar3State(m1=m1, m2=m2)

  return optax.GradientTransformation(init_fn, update_fn)


def kar3(learning_rate, b1: float = 0.5, b2: float = 0.95, weight_decay: float = 0.0,
         mask=None) -> optax.GradientTransformation:
  """Kar3 (HyperZ·Z·W paper, official Terminator code): θ ← θ - lr·(sign g + sign m1 + sign m2 + wd·θ).

  The official optimiser has no weight decay (the paper regularises through a norm penalty in the
  loss); here weight_decay > 0 adds decoupled decay as in adamw, so Terminator configs set it to 0.
  """
  return optax.chain(scale_by_kar3(b1, b2), optax.add_decayed_weights(weight_decay, mask),
                     optax.scale_by_learning_rate(learning_rate))


# ------------------------------------------------------------------------------- gradient noise


class AnnealedNoiseState(NamedTuple):
  """count: updates done so far (t); key: the raw uint32 PRNG key of the seed (never changes)."""
  count: jax.Array
  key: jax.Array


def add_annealed_noise(eta: float, gamma: float, seed: int = 0) -> optax.GradientTransformation:
  """Adds N(0, σ_t²) to every gradient entry, σ_t² = η / (1 + t)^γ, t = 0, 1, ... (Neelakantan et al. 2015).

  The noise of step t is drawn from fold_in(PRNGKey(seed), t), so it depends only on seed and step:
  a run resumed from a checkpoint (which holds `count`) draws the same noise as an uninterrupted one.
  (optax.add_noise has the same variance but keeps a typed PRNG key that it splits every step; this
  state is two plain integer arrays.)
  """
  if eta < 0 or gamma < 0:
    raise ConfigError(f"gradient noise needs eta >= 0 and gamma >= 0, got eta={eta}, gamma={gamma}")

  def init_fn(params):
    del params
    return AnnealedNoiseState(count=jnp.zeros((), jnp.int32), key=jax.random.PRNGKey(seed))

  def update_fn(updates, state, params=None):
    del params
    std = jnp.sqrt(eta / (1.0 + state.count.astype(jnp.float32)) ** gamma)
    leaves, treedef = jax.tree.flatten(updates)
    keys = jax.random.split(jax.random.fold_in(state.key, state.count), len(leaves))
    noisy = [g + (std * jax.random.normal(k, g.shape, jnp.float32)).astype(g.dtype) for g, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy), AnnealedNoiseState(optax.safe_int32_increment(state.count), state.key)

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------- optimizers


def _adamw(opt, lr, mask):
  return optax.adamw(lr, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=mask)


def _sgd(opt, lr, mask):
  momentum = opt.momentum or None
  return optax.chain(optax.add_decayed_weights(opt.weight_decay, mask),
                     optax.sgd(lr, momentum=momentum, nesterov=bool(opt.get("nesterov", False))))


def _lamb(opt, lr, mask):
  return optax.lamb(lr, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=mask)


def _lars(opt, lr, mask):
  mask = True if mask is None else mask
  return optax.lars(lr, weight_decay=opt.weight_decay, weight_decay_mask=mask, trust_ratio_mask=mask,
                    momentum=opt.momentum)


def _lion(opt, lr, mask):
  return optax.lion(lr, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=mask)


def _kar3(opt, lr, mask):
  return kar3(lr, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=mask)


OPTIMIZERS = {"adamw": _adamw, "sgd": _sgd, "lamb": _lamb, "lars": _lars, "lion": _lion, "kar3": _kar3}


# ----------------------------------------------------------------------------------- schedules


def _cosine(p, t, w, f):
  return f + (1 - f) * 0.5 * (1 + jnp.cos(jnp.pi * p))


def _linear(p, t, w, f):
  return 1 - (1 - f) * p


def _flat(p, t, w, f):
  return jnp.ones_like(p)


def _rsqrt(p, t, w, f):
  w = max(w, 1)
  return jnp.sqrt(w / jnp.maximum(t, w))


POLY_POWER = 0.9  # nnU-Net's exponent


def _poly(p, t, w, f):
  return f + (1 - f) * (1 - p) ** POLY_POWER


SCHEDULES = {"warmup_cosine": _cosine, "warmup_linear": _linear, "warmup_constant": _flat,
             "warmup_rsqrt": _rsqrt, "warmup_poly": _poly, "constant": _flat}


def warmup_length(opt, steps_per_epoch: int) -> int:
  """W in steps: warmup_steps, or round(warmup_epochs · steps_per_epoch); setting both is an error."""
  if opt.warmup_steps > 0 and opt.warmup_epochs > 0:
    raise ConfigError(f"set optimizer.warmup_steps ({opt.warmup_steps}) or optimizer.warmup_epochs "
                      f"({opt.warmup_epochs}), not both")
  if opt.warmup_steps < 0 or opt.warmup_epochs < 0:
    raise ConfigError("optimizer.warmup_steps and optimizer.warmup_epochs must be >= 0")
  return int(round(opt.warmup_epochs * steps_per_epoch)) if opt.warmup_epochs > 0 else int(opt.warmup_steps)


def make_schedule(opt, total_steps: int, steps_per_epoch: int) -> Callable[[int], jax.Array]:
  """step -> learning rate (float32), for the formulas in the module docstring."""
  if opt.schedule not in SCHEDULES:
    raise _unknown("schedule", opt.schedule, SCHEDULES)
  if total_steps <= 0:
    raise ConfigError(f"the schedule needs total_steps > 0, got {total_steps}")
  warmup, decay, peak, end = warmup_length(opt, steps_per_epoch), SCHEDULES[opt.schedule], opt.lr, opt.end_lr_factor
  if opt.schedule == "constant" and warmup > 0:
    raise ConfigError("schedule 'constant' has no warm-up; use 'warmup_constant' with optimizer.warmup_*")

  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(t / warmup, 1.0) if warmup > 0 else 1.0
    p = jnp.clip((t - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
    return (peak * warm * decay(p, t, warmup, end)).astype(jnp.float32)

  return schedule


# ------------------------------------------------------------------------------ weight decay mask

_NORM_MODULE = re.compile(r"norm|(^|_)(ln|bn|gn)\d*($|_)")
_NO_DECAY_NAME = re.compile(r"bias|pos_?emb|position|^cls|_token$")


def _entry_name(entry) -> str:
  """One key of a pytree path, lower-cased ('Dense_0', 0 -> 'dense_0', '0')."""
  return jax.tree_util.keystr((entry,), simple=True).lower()


def no_bias_norm_mask(params):
  """Pytree of bools like `params`: True where weight decay applies (rule in the module docstring)."""
  def decays(path, leaf):
    names = [_entry_name(e) for e in path]
    if leaf.ndim <= 1 or (names and _NO_DECAY_NAME.search(names[-1])):
      return False
    return not any(_NORM_MODULE.search(n) for n in names[:-1])
  return jax.tree_util.tree_map_with_path(decays, params)


def regex_mask(pattern):
  """params -> pytree of bools: True where `pattern` matches (re.search) the param's "/"-joined path."""
  regex = re.compile(pattern)
  return lambda params: jax.tree_util.tree_map_with_path(
      lambda path, leaf: bool(regex.search("/".join(_entry_name(e) for e in path))), params)


DECAY_MASKS = {"all": None, "no_bias_norm": no_bias_norm_mask}


def decay_mask(name):
  """The mask function of optimizer.decay_mask: a DECAY_MASKS name or "re:<regex>"."""
  if name.startswith("re:"):
    try:
      return regex_mask(name[3:])
    except re.error as e:
      raise ConfigError(f"optimizer.decay_mask {name!r} is not a valid regex: {e}") from None
  if name not in DECAY_MASKS:
    raise _unknown("weight-decay mask", name, [*DECAY_MASKS, "re:<regex>"])
  return DECAY_MASKS[name]


# ----------------------------------------------------------------------------- layer-wise lr decay

_BLOCK = re.compile(r"^(?:layer|block|encoderblock)_?(\d+)$")
_STEM = re.compile(r"^(?:embedding|pos_?embedding|cls|patch_embed|stem)")


def layer_id(names, depth):
  """BEiT / MAE layer id of a param path: 0 for the patch / position embeddings and class token, i + 1 inside
  block i (a path entry "layer<i>", "block<i>" or "encoderblock_<i>"), depth + 1 for everything else (head, final
  norm)."""
  for n in names:
    m = _BLOCK.match(n)
    if m:
      return int(m.group(1)) + 1
  return 0 if names and _STEM.match(names[0]) else depth + 1


def layer_decay(decay):
  """Scales each param's update (learning rate and decoupled weight decay alike) by decay^(depth + 1 − layer_id)
  (MAE util/lr_decay.py param_groups_lrd); depth = the number of blocks found in the param paths."""
  def scales(params):
    paths = [[_entry_name(e) for e in path] for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    blocks = [int(m.group(1)) for names in paths for n in names if (m := _BLOCK.match(n))]
    if not blocks:
      raise ConfigError("optimizer.layer_decay needs a model with numbered blocks (layer<i>, block<i>)")
    depth = max(blocks) + 1
    return jax.tree_util.tree_map_with_path(
        lambda path, _: decay ** (depth + 1 - layer_id([_entry_name(e) for e in path], depth)), params)

  def update_fn(updates, state, params=None):
    return jax.tree.map(lambda u, s: u * s, updates, scales(updates)), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


# ------------------------------------------------------------------------------------- lr scale


def lr_scale(spec):
  """optimizer.lr_scale "re:<regex>=<factor>": the final updates of the params whose "/"-joined (lower-cased) path
  matches × factor, i.e. their learning rate and decoupled weight decay × factor (the official ConvNeXt-dcls trains
  its positions, which have no weight decay, at 5× the scheduled lr: "re:(^|/)stage\\d+_dcls_p$|/p$=5")."""
  pattern, _, factor = spec[3:].rpartition("=") if spec.startswith("re:") else ("", "", "")
  try:
    factor = float(factor)
    match = regex_mask(pattern)
  except (ValueError, re.error) as e:
    raise ConfigError(f"optimizer.lr_scale {spec!r} is not 're:<regex>=<factor>': {e}") from None

  def update_fn(updates, state, params=None):
    return jax.tree.map(lambda u, m: u * factor if m else u, updates, match(updates)), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


# ------------------------------------------------------------------------------------ assembly


def make_optimizer(opt, total_steps: int, steps_per_epoch: int, *,
                   seed: int = 0) -> tuple[optax.GradientTransformation, Callable[[int], jax.Array]]:
  """(tx, schedule) from config.optimizer; `seed` seeds the gradient noise. Unused keys are ignored."""
  if opt.name not in OPTIMIZERS:
    raise _unknown("optimizer", opt.name, OPTIMIZERS)
  mask = decay_mask(opt.decay_mask)
  schedule = make_schedule(opt, total_steps, steps_per_epoch)
  parts = []
  if opt.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if opt.grad_noise_eta > 0:
    parts.append(add_annealed_noise(opt.grad_noise_eta, opt.grad_noise_gamma, seed))
  parts.append(OPTIMIZERS[opt.name](opt, schedule, mask))
  if opt.get("layer_decay", 1.0) != 1.0:
    parts.append(layer_decay(opt.layer_decay))
  if opt.get("lr_scale", ""):
    parts.append(lr_scale(opt.lr_scale))
  return optax.chain(*parts), schedule
