"""The one shared trainer: `train_and_evaluate(config, workdir)`, importable from notebooks.

Every model trains through this loop: model, task, optimizer, evaluators and data source are chosen
by name from the config. Params are created already sharded (eval_shape + jit with out_shardings), the
update step is jitted with explicit shardings and a donated state, and checkpoints hold the train state
and the data iterator so that a resumed run continues exactly where the interrupted one stopped.
"""
import dataclasses
import json
import math
import os
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from effjax import checkpoint, components, metrics as metrics_lib, optim, preemption, runtime, sharding, weights
from effjax.config import ConfigError
from effjax.data import pipeline
from effjax.weights import posemb

log = metrics_lib.logger()
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def validate(config, num_devices):
  """Checks types and combinations that can be checked without data; raises ConfigError (one line)."""
  def need(cond, message):
    if not cond:
      raise ConfigError(message)
  need(config.model_name, "config.model_name is empty; set it to a module of effjax/models, e.g. 'vit'")
  for name in config.evals:
    need(name in config.evaluators, f"config.evals.{name} is not listed in config.evaluators {config.evaluators}")
  for kind, name in [("models", config.model_name), ("tasks", config.task_name)] + [
      ("evaluators", pipeline.eval_spec(config, e)[0]) for e in config.evaluators]:
    try:
      components.load(kind, name)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  need((config.total_steps > 0) != (config.total_epochs > 0),
       f"set exactly one of config.total_steps ({config.total_steps}) and config.total_epochs "
       f"({config.total_epochs}) to a positive value")
  need(config.grad_accum_steps >= 1, f"config.grad_accum_steps must be >= 1, got {config.grad_accum_steps}")
  need(config.batch_size % config.grad_accum_steps == 0,
       f"batch_size {config.batch_size} is not divisible by grad_accum_steps {config.grad_accum_steps}")
  micro = config.batch_size // config.grad_accum_steps
  need(micro % num_devices == 0,
       f"batch size {micro} (per micro-batch) is not divisible by the number of devices ({num_devices})")
  need(config.eval_batch_size % num_devices == 0,
       f"eval_batch_size {config.eval_batch_size} is not divisible by the number of devices ({num_devices})")
  need(config.compute_dtype in COMPUTE_DTYPES,
       f"config.compute_dtype {config.compute_dtype!r} must be one of {list(COMPUTE_DTYPES)}")
  need(0.0 <= config.ema_decay < 1.0, f"config.ema_decay must be in [0, 1), got {config.ema_decay}")
  need(config.log_every_steps > 0, f"config.log_every_steps must be positive, got {config.log_every_steps}")
  need(config.init_from.path == "" or config.resume == "",
       "set at most one of config.resume and config.init_from.path")
  _check_numbers(config)


# (dotted key, lowest allowed value, bound it must stay below or None): each value must lie in [low, high)
_RANGES = (("batch_size", 1, None), ("eval_batch_size", 1, None), ("checkpoint_every_steps", 1, None),
           ("keep_checkpoints", 1, None), ("optimizer.lr", 0.0, None), ("optimizer.weight_decay", 0.0, None),
           ("optimizer.b1", 0.0, 1.0), ("optimizer.b2", 0.0, 1.0), ("optimizer.momentum", 0.0, 1.0),
           ("optimizer.warmup_steps", 0, None), ("optimizer.warmup_epochs", 0.0, None),
           ("optimizer.end_lr_factor", 0.0, None), ("optimizer.grad_clip_norm", 0.0, None),
           ("optimizer.grad_noise_eta", 0.0, None))


def _check_numbers(config):
  """Every float in the config is finite, and the trainer's numeric keys lie in their ranges."""
  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, f"{prefix}{key}.")
        continue
      for v in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(v, float) and not math.isfinite(v):
          raise ConfigError(f"config.{prefix}{key} is {value}; it must be a finite number")
  walk(config, "")
  for key, low, high in _RANGES:
    node = config
    for part in key.split("."):
      node = node[part]
    if node < low or (high is not None and node >= high):
      raise ConfigError(f"config.{key}={node} is out of range; it must be in [{low}, {high or 'inf'})")


def _check_data(config, info):
  want = config.model.get("num_classes")
  have = info.get("num_classes")
  if want is not None and have is not None and want != have:
    raise ConfigError(f"config.model.num_classes={want} but data source {config.data.source!r} has {have} classes")


def total_steps(config, num_train_examples):
  if config.total_steps > 0:
    return int(config.total_steps)
  return int(math.ceil(config.total_epochs * num_train_examples / config.batch_size))


def _cast_floats(tree, dtype):
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the final metrics.

  The returned dict holds the last train metrics (train/...), the final evaluation (eval/...), "step"
  and "preempted" (True when a SIGTERM stopped the run after saving).
  """
  with preemption.Sigterm() as sigterm:
    return _train_and_evaluate(config, workdir, sigterm)


def _train_and_evaluate(config, workdir, sigterm):
  config = ml_collections.ConfigDict(config)
  config.lock()
  mesh = sharding.make_mesh(config.mesh)
  validate(config, mesh.size)
  model = components.load("models", config.model_name).Model(**config.model)
  task = components.load("tasks", config.task_name).Task(config)
  batch_sharding = sharding.batch_sharding(mesh)
  train_data = pipeline.train_data(config.data, config.batch_size, batch_sharding, config.seed)
  _check_data(config, train_data.info)
  eval_source = pipeline.make_source(config.data, config.data.eval_split)
  evals = _make_evals(config, eval_source)

  os.makedirs(workdir, exist_ok=True)
  num_steps = total_steps(config, train_data.num_examples)
  steps_per_epoch = max(train_data.num_examples // config.batch_size, 1)
  tx, schedule = optim.make_optimizer(config.optimizer, num_steps, steps_per_epoch, seed=config.seed)
  compute_dtype = COMPUTE_DTYPES[config.compute_dtype]

  example_batch = next(pipeline.eval_batches(config.data, mesh.size, batch_sharding, eval_source))
  example_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), example_batch)

  def init(rng):
    dummy = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), example_batch)
    variables = dict(task.init_variables(model, rng, dummy))
    params = variables.pop("params")
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "model_state": variables, "ema_params": params if config.ema_decay > 0 else {},
            "rng": jax.random.PRNGKey(config.seed + 1)}

  rng = jax.random.PRNGKey(config.seed)
  abstract_state = jax.eval_shape(init, rng)
  state_shardings = sharding.param_shardings(abstract_state, mesh, config.sharding_rules)
  repl = sharding.replicated(mesh)
  state_shardings["step"], state_shardings["rng"] = repl, repl
  abstract_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                abstract_state, state_shardings)

  meta = checkpoint.describe(config, abstract_state)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
  try:
    state = _initial_state(config, ckpt, abstract_state, state_shardings, init, rng, train_data, meta)
  except BaseException:
    ckpt.close()
    raise
  if jax.process_index() == 0:  # only once the checkpoints are known to belong to this config
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  start_step = int(jax.device_get(state["step"]))

  train_step = make_train_step(config, model, task, tx, schedule, compute_dtype)
  batch_spec = jax.tree.map(lambda s: jax.ShapeDtypeStruct((config.batch_size,) + s.shape, s.dtype,
                                                          sharding=batch_sharding), train_data.element_spec)
  train_step = jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                       out_shardings=(state_shardings, repl), donate_argnums=0,
                       compiler_options=runtime.compiler_options())
  train_step = train_step.lower(abstract_state, batch_spec).compile()
  flops = _step_flops(train_step)
  for e in evals:
    e.evaluator = components.load("evaluators", e.type).Evaluator(config, task, model)

  def evaluate(state, step, due):
    """Runs the evaluations in `due`; metrics are eval/<metric>, or eval/<name>/<metric> for config.evals entries."""
    params = state["ema_params"] if config.ema_decay > 0 else state["params"]
    variables = {"params": _cast_floats(params, compute_dtype), **state["model_state"]}
    results = {}
    for e in due:
      batches = pipeline.eval_batches(e.data, config.eval_batch_size, batch_sharding, e.source)
      prefix = f"eval/{e.name}/" if e.name in config.evals else "eval/"
      for k, v in e.evaluator.run(variables, batches, step=step, workdir=workdir).items():
        results[prefix + k] = float(v)
    return results

  writer = metrics_lib.Writer(workdir)
  progress = metrics_lib.ProgressBar(num_steps, start_step, enabled=config.progress_bar)
  log.info("training %s for %d steps from step %d on %d devices (%d processes)",
               config.model_name, num_steps, start_step, mesh.size, jax.process_count())
  pending, last_train, final_eval, preempted = [], {}, {}, False
  window_start, data_wait, wait_warned = time.time(), 0.0, False

  def flush(step):
    """Checks every step's metrics since the last flush (naming the first non-finite one), logs the mean."""
    nonlocal pending, window_start, last_train, data_wait, wait_warned
    if not pending:
      return
    host = jax.device_get(pending)
    for s, m in host:
      metrics_lib.check_finite(s, {f"train/{k}": float(v) for k, v in m.items()})
    elapsed = time.time() - window_start
    mean = {f"train/{k}": float(np.mean([m[k] for _, m in host])) for k in host[-1][1]}
    mean["train/step_time_s"] = elapsed / len(host)
    mean["train/examples_per_s"] = config.batch_size * len(host) / elapsed
    mean["train/data_wait_frac"] = data_wait / elapsed
    if mean["train/data_wait_frac"] > config.data.wait_warn_frac and step > start_step + 1 and not wait_warned:
      wait_warned = True  # the first window (pipeline start-up) is not judged
      log.warning("steps %d-%d waited for data %.0f%% of the time (> data.wait_warn_frac=%g): the input pipeline "
                  "is the bottleneck; raise data.worker_count or data.prefetch", step - len(host) + 1, step,
                  100 * mean["train/data_wait_frac"], config.data.wait_warn_frac)
    if flops:
      mean["train/flops_per_s"] = flops * len(host) / elapsed
    writer.write(step, mean)
    last_train = mean
    pending, window_start, data_wait = [], time.time(), 0.0

  with sigterm.loop():
    try:
      for step in range(start_step + 1, num_steps + 1):
        wait_start = time.time()
        batch = next(train_data)
        data_wait += time.time() - wait_start
        state, step_metrics = train_step(state, batch)
        pending.append((step, step_metrics))
        if step == start_step + 1 or step % config.log_every_steps == 0 or step == num_steps:
          flush(step)
        progress.update(step, last_train.get("train/loss", float("nan")))
        if sigterm.requested:
          flush(step)
          ckpt.save(step, state, train_data.get_state(), meta, force=True)
          ckpt.wait()
          log.warning("SIGTERM: saved checkpoint at step %d and stopped", step)
          preempted = True
          break
        if step % config.checkpoint_every_steps == 0 or step == num_steps:
          flush(step)
          ckpt.save(step, state, train_data.get_state(), meta, force=True)
        due = [e for e in evals if (e.every_steps > 0 and step % e.every_steps == 0) or step == num_steps]
        if due:
          flush(step)
          results = evaluate(state, step, due)
          final_eval = {**final_eval, **results}
          writer.write(step, results)
          log.info("step %d: %s", step, json.dumps(results))
          window_start = time.time()  # evaluation time is not step time
      else:
        if start_step >= num_steps:  # resumed a finished run: evaluate the restored state
          final_eval = evaluate(state, num_steps, evals)
          if not _has_eval_row(workdir, num_steps):  # killed between the last save and the final eval
            writer.write(num_steps, final_eval)
    finally:
      train_data.close()
      progress.close()
      ckpt.wait()
      ckpt.close()
      writer.close()
  return {**last_train, **final_eval, "step": int(jax.device_get(state["step"])), "preempted": preempted}


@dataclasses.dataclass
class _Eval:
  """One evaluation: its name, evaluator type, data config, source and cadence (see pipeline.eval_spec)."""
  name: str
  type: str
  data: ml_collections.ConfigDict
  source: object
  every_steps: int
  evaluator: object = None


def _make_evals(config, default_source):
  """The evaluations of config.evaluators; sources are built once per (source, split) and shared."""
  sources, evals = {(config.data.source, config.data.eval_split): default_source}, []
  for name in config.evaluators:
    type_, data, every = pipeline.eval_spec(config, name)
    key = (data.source, data.eval_split)
    if key not in sources:
      sources[key] = pipeline.make_source(data, data.eval_split)
    evals.append(_Eval(name, type_, data, sources[key], every))
  return evals


def _has_eval_row(workdir, step):
  path = os.path.join(workdir, "metrics.jsonl")
  return os.path.exists(path) and any(
      r["step"] == step and any(k.startswith("eval/") for k in r) for r in metrics_lib.read_jsonl(workdir))


def _initial_state(config, ckpt, abstract_state, state_shardings, init, rng, train_data, meta):
  """Resume order: workdir's latest readable checkpoint -> config.resume -> config.init_from -> scratch.

  The data iterator is moved only when a checkpoint was read completely; a checkpoint made by another
  config raises checkpoint.IncompatibleCheckpoint before anything is changed.
  """
  had_checkpoints = bool(ckpt.steps())
  step, state, data_state = ckpt.restore_latest(abstract_state, meta, config.allow_config_change)
  if state is not None:
    train_data.set_state(data_state)
    log.info("resumed from %s at step %d", ckpt.directory, step)
    return state
  if config.resume:
    other = checkpoint.Checkpointer(config.resume, keep=config.keep_checkpoints, async_save=False)
    try:
      step, state, data_state = other.restore_latest(abstract_state, meta, config.allow_config_change)
    finally:
      other.close()
    if state is None:
      raise ConfigError(f"config.resume={config.resume!r} holds no readable checkpoint")
    train_data.set_state(data_state)
    log.info("resumed from config.resume %s at step %d", config.resume, step)
    return state
  if had_checkpoints:
    log.warning("no readable checkpoint is left in %s; starting from scratch", ckpt.directory)
  state = jax.jit(init, out_shardings=state_shardings)(rng)
  if config.init_from.path:
    state["params"] = _merge_init_params(config.init_from, state["params"], state_shardings["params"],
                                         config.model_name)
    if config.ema_decay > 0:
      state["ema_params"] = state["params"]
    log.info("initialised params from %s (kept fresh: %s)", config.init_from.path, config.init_from.skip)
  return state


def _merge_init_params(init_from, fresh, shardings, model_name):
  """Loaded params where the path does not match init_from.skip and shapes agree; fresh ones elsewhere.

  init_from.path is an effjax checkpoint directory or an official weights file (effjax.weights); a learned
  position embedding of another token grid is resampled (effjax.weights.posemb).
  """
  if os.path.isfile(init_from.path):
    loaded = weights.load_official(init_from.path, model_name)
  else:
    loaded = checkpoint.restore_params(init_from.path)
  flat_loaded = {sharding.path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(loaded)}
  skip = re.compile(init_from.skip) if init_from.skip else None

  def pick(path, value, sh):
    name = sharding.path_str(path)
    if skip is not None and skip.search(name):
      return value
    if name not in flat_loaded:
      raise ConfigError(f"init_from {init_from.path}: param {name} is missing; add it to init_from.skip")
    new = np.asarray(flat_loaded[name])
    if new.shape != value.shape and re.search(posemb.NAME, name) and new.shape[-1] == value.shape[-1]:
      new = posemb.resample(new, value.shape[-2])
    if new.shape != value.shape:
      raise ConfigError(f"init_from {init_from.path}: param {name} has shape {new.shape}, the model "
                        f"needs {value.shape}; add it to init_from.skip")
    return jax.device_put(new.astype(value.dtype), sh)
  return jax.tree_util.tree_map_with_path(pick, fresh, shardings)


def _step_flops(compiled_step):
  """FLOPs of one compiled train step from XLA's cost analysis (None if unavailable)."""
  try:
    cost = compiled_step.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) or None
  except Exception:  # cost analysis is best-effort and backend dependent
    return None


def make_train_step(config, model, task, tx, schedule, compute_dtype):
  """(state, batch) -> (state, metrics): gradient accumulation, mixed precision, EMA, norms."""
  accum = config.grad_accum_steps

  def loss_fn(params, model_state, batch, rng):
    variables = {"params": _cast_floats(params, compute_dtype), **model_state}
    batch = {k: v.astype(compute_dtype) if k in task.compute_inputs and jnp.issubdtype(v.dtype, jnp.floating)
             else v for k, v in batch.items()}
    loss, aux = task.loss(model, variables, batch, rng, train=True)
    return loss.astype(jnp.float32), aux

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step_fn(state, batch):
    rng = jax.random.fold_in(state["rng"], state["step"])
    params = state["params"]
    if accum == 1:
      (loss, aux), grads = grad_fn(params, state["model_state"], batch, rng)
      model_state, task_metrics = aux["model_state"] or state["model_state"], aux["metrics"]
    else:
      micro = jax.tree.map(lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]), batch)

      def body(carry, inputs):
        grads_sum, loss_sum, metric_sum, model_state = carry
        i, mb = inputs
        (l, aux), g = grad_fn(params, model_state, mb, jax.random.fold_in(rng, i))
        model_state = aux["model_state"] or model_state
        return (jax.tree.map(jnp.add, grads_sum, g), loss_sum + l,
                jax.tree.map(jnp.add, metric_sum, aux["metrics"]), model_state), None

      first_metrics = jax.eval_shape(lambda: grad_fn(params, state["model_state"],
                                                     jax.tree.map(lambda x: x[0], micro), rng)[0][1]["metrics"])
      zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)
      carry = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32), zeros(first_metrics),
               state["model_state"])
      (grads, loss, task_metrics, model_state), _ = jax.lax.scan(body, carry, (jnp.arange(accum), micro))
      grads = jax.tree.map(lambda g: g / accum, grads)
      loss = loss / accum
      task_metrics = jax.tree.map(lambda m: m / accum, task_metrics)

    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    new_state = {**state, "step": state["step"] + 1, "params": new_params, "opt_state": opt_state,
                 "model_state": model_state}
    if config.ema_decay > 0:
      d = config.ema_decay
      new_state["ema_params"] = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state["ema_params"], new_params)
    step_metrics = {"loss": loss, "learning_rate": schedule(state["step"]), "grad_norm": optax.tree.norm(grads),
                    "param_norm": optax.tree.norm(new_params), "update_norm": optax.tree.norm(updates),
                    **{k: v.astype(jnp.float32) for k, v in task_metrics.items()}}
    return new_state, step_metrics

  return step_fn
