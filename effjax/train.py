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
from effjax.train_config import COMPUTE_DTYPES, check_data, check_schema, eval_spec, validate
from effjax.weights import posemb

log = metrics_lib.logger()
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
  check_schema(ml_collections.ConfigDict(config))
  with preemption.Sigterm() as sigterm, checkpoint.workdir_lock(workdir):
    return _train_and_evaluate(config, workdir, sigterm)


@dataclasses.dataclass
class TrainStep:
  """The trainer's model, task, optimizer, abstract train state with its shardings, and jitted update step.

  `step` is `jax.jit(step_fn)` with the trainer's shardings, donation and compile options; compile it with
  `step.lower(abstract_state, batch_spec).compile()` (effjax.aot does the same for a TPU topology).
  """
  model: object
  task: object
  tx: object
  schedule: object
  compute_dtype: object
  init: object            # rng -> train state (unsharded); jit it with out_shardings=state_shardings
  rng: jax.Array
  abstract_state: dict    # ShapeDtypeStructs carrying their shardings
  state_shardings: dict
  batch_spec: dict        # one global training batch: ShapeDtypeStructs carrying the batch sharding
  step: object


def build_train_step(config, mesh, example_batch, num_steps, steps_per_epoch) -> TrainStep:
  """Builds everything the update step needs on `mesh`, from shapes only (no data, no arrays).

  example_batch: ShapeDtypeStructs of one batch (any leading size; the training batch gets config.batch_size).
  The compile options are runtime.compiler_options() of the mesh's platform (the CPU options on CPU only).
  """
  model = components.load("models", config.model_name).Model(**config.model)
  task = components.load("tasks", config.task_name).Task(config)
  tx, schedule = optim.make_optimizer(config.optimizer, num_steps, steps_per_epoch, seed=config.seed)
  compute_dtype = COMPUTE_DTYPES[config.compute_dtype]

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
  batch_sharding = sharding.batch_sharding(mesh)
  batch_spec = jax.tree.map(lambda s: jax.ShapeDtypeStruct((config.batch_size,) + s.shape[1:], s.dtype,
                                                          sharding=batch_sharding),
                            {k: v for k, v in example_batch.items() if k != task.padding_key})
  step = jax.jit(make_train_step(config, model, task, tx, schedule, compute_dtype, steps_per_epoch),
                 in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, repl),
                 donate_argnums=0, compiler_options=runtime.compiler_options(mesh.devices.flat[0].platform))
  return TrainStep(model, task, tx, schedule, compute_dtype, init, rng, abstract_state, state_shardings,
                   batch_spec, step)


def _train_and_evaluate(config, workdir, sigterm):
  config = ml_collections.ConfigDict(config)
  config.lock()
  mesh = sharding.make_mesh(config.mesh)
  validate(config, mesh.size)
  batch_sharding = sharding.batch_sharding(mesh)
  train_data = pipeline.train_data(config.data, config.batch_size, batch_sharding, config.seed)
  check_data(config, train_data.info)
  eval_source = pipeline.make_source(config.data, config.data.eval_split)
  evals = _make_evals(config, eval_source)

  os.makedirs(workdir, exist_ok=True)
  num_steps = total_steps(config, train_data.num_examples)
  steps_per_epoch = max(train_data.num_examples // config.batch_size, 1)
  example_batch = next(pipeline.eval_batches(config.data, mesh.size, batch_sharding, eval_source))
  example_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), example_batch)
  built = build_train_step(config, mesh, example_batch, num_steps, steps_per_epoch)
  model, task, compute_dtype = built.model, built.task, built.compute_dtype
  abstract_state, state_shardings = built.abstract_state, built.state_shardings

  meta = checkpoint.describe(config, abstract_state)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  fresh = not (os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir))
  init_loaded = _read_init_from(config, abstract_state) if config.init_from.path and fresh else None
  ckpt = checkpoint.Checkpointer(ckpt_dir, keep=config.keep_checkpoints)
  try:
    state = _initial_state(config, ckpt, abstract_state, state_shardings, built.init, built.rng, train_data, meta,
                           init_loaded)
  except BaseException:
    ckpt.close()
    if fresh and os.path.isdir(ckpt_dir) and not os.listdir(ckpt_dir):
      os.rmdir(ckpt_dir)  # a run that fails at start leaves no empty checkpoints/ behind
    raise
  if jax.process_index() == 0:  # only once the checkpoints are known to belong to this config
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  start_step = int(jax.device_get(state["step"]))

  # the training batches' own shapes (training may use another resolution than evaluation, e.g. ResNet-RS), compiled
  # once per shape: progressive resolution (config.data.pp_train_schedule) changes them between stages
  compiled = {}

  def compile_step(element_spec):
    key = tuple((k, s.shape, s.dtype) for k, s in sorted(element_spec.items()))
    if key not in compiled:
      batch_spec = jax.tree.map(lambda s: jax.ShapeDtypeStruct((config.batch_size,) + s.shape, s.dtype,
                                                              sharding=batch_sharding), element_spec)
      step = built.step.lower(abstract_state, batch_spec).compile()
      compiled[key] = step, _step_flops(step)
    return compiled[key]
  compile_step(train_data.element_spec)
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
  window_start, data_wait, wait_warned, window_flops = time.time(), 0.0, False, 0.0

  def flush(step):
    """Checks every step's metrics since the last flush (naming the first non-finite one), logs the mean."""
    nonlocal pending, window_start, last_train, data_wait, wait_warned, window_flops
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
    if window_flops:
      mean["train/flops_per_s"] = window_flops / elapsed
    writer.write(step, mean)
    last_train = mean
    pending, window_start, data_wait, window_flops = [], time.time(), 0.0, 0.0

  with sigterm.loop():
    try:
      for step in range(start_step + 1, num_steps + 1):
        wait_start = time.time()
        batch = next(train_data)
        data_wait += time.time() - wait_start
        train_step, flops = compile_step({k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in batch.items()})
        state, step_metrics = train_step(state, batch)
        window_flops += flops or 0.0
        pending.append((step, step_metrics))
        if step == start_step + 1 or step % config.log_every_steps == 0 or step == num_steps:
          flush(step)
        progress.update(step, last_train.get("train/loss", float("nan")))
        if sigterm.agreed(step):
          flush(step)
          ckpt.save(step, state, train_data.get_state(), meta, force=True)
          ckpt.wait()
          log.warning("%s: saved checkpoint at step %d and stopped", sigterm.name, step)
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
  """One evaluation: its name, evaluator type, data config, source and cadence (see train_config.eval_spec)."""
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
    type_, data, every = eval_spec(config, name)
    key = (data.source, data.eval_split)
    if key not in sources:
      sources[key] = pipeline.make_source(data, data.eval_split)
    evals.append(_Eval(name, type_, data, sources[key], every))
  return evals


def _has_eval_row(workdir, step):
  path = os.path.join(workdir, "metrics.jsonl")
  return os.path.exists(path) and any(
      r["step"] == step and any(k.startswith("eval/") for k in r) for r in metrics_lib.read_jsonl(workdir))


def _initial_state(config, ckpt, abstract_state, state_shardings, init, rng, train_data, meta, init_loaded=None):
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
    if not os.path.isdir(config.resume):
      raise ConfigError(f"config.resume={config.resume!r} is not a directory (a WORKDIR/checkpoints to resume)")
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
  if config.init_from.path and init_loaded is None:  # the workdir's checkpoints were all unreadable
    init_loaded = _read_init_from(config, abstract_state)
  state = jax.jit(init, out_shardings=state_shardings)(rng)
  if config.init_from.path:
    state = _put_init(state, init_loaded, state_shardings)
    if config.ema_decay > 0:
      state["ema_params"] = state["params"]
    log.info("initialised %s from %s", ", ".join(c for c in init_loaded if init_loaded[c]), config.init_from.path)
  return state


def _read_init_from(config, abstract_state):
  """{collection: {path: host array}} from config.init_from.path, checked against the model's abstract state.

  The file (an effjax checkpoint directory or an official weights file, effjax.weights) is read and compared
  before anything is compiled. Every model collection it carries is loaded (params, and e.g. batch-norm
  statistics). A learned position embedding of another token grid is resampled (effjax.weights.posemb).
  Paths matching init_from.skip (default: the model module's HEAD) keep their fresh init. Any other mismatch
  stops the run with one line naming the first one: a path the model needs that the file lacks, a shape
  that differs, or a path of the file that the model does not use (unless init_from.allow_unused).
  """
  path, model_name = config.init_from.path, config.model_name
  skip_regex = config.init_from.skip
  if skip_regex is None:
    skip_regex = components.load("models", model_name).HEAD
  try:
    skip = re.compile(skip_regex) if skip_regex else None
  except re.error as e:
    raise ConfigError(f"config.init_from.skip={skip_regex!r} is not a regular expression: {e}") from None
  if not os.path.exists(path):
    raise ConfigError(f"config.init_from.path={path!r} does not exist (an official weights file or an effjax "
                      f"checkpoints directory)")
  try:
    variables = (weights.load_official_variables(path, model_name) if os.path.isfile(path)
                 else checkpoint.restore_variables(path))
  except ValueError as e:
    raise ConfigError(f"config.init_from.path: {(str(e).splitlines() or [''])[0]}") from None
  wanted = {"params": abstract_state["params"], **abstract_state["model_state"]}

  def flat(tree):
    return {sharding.path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}
  out, differ, first = {}, 0, None
  for collection in sorted(set(wanted) | set(variables), key=lambda c: c != "params"):
    show = (lambda n: n) if collection == "params" else (lambda n, c=collection: f"{c}/{n}")
    model, file = flat(wanted.get(collection, {})), flat(variables.get(collection, {}))
    out[collection] = {}
    for name, spec in model.items():
      if skip is not None and skip.search(name):
        continue
      if name not in file:
        raise ConfigError(f"init_from {path}: {show(name)} {tuple(spec.shape)} of the model is not in the file; "
                          f"add it to config.init_from.skip to keep it fresh")
      value = np.asarray(file[name])
      if value.shape != spec.shape and re.search(posemb.NAME, name) and value.shape[-1] == spec.shape[-1]:
        log.info("init_from: resampled %s from %d to %d positions (%s)", name, value.shape[-2], spec.shape[-2],
                 posemb.__name__)
        value = posemb.resample(value, spec.shape[-2])
      if value.shape != spec.shape:
        differ += 1
        first = first or (show(name), value.shape, spec.shape)
      out[collection][name] = value
    if first is None and not config.init_from.allow_unused:
      unused = [n for n in file if n not in model and not (skip is not None and skip.search(n))]
      if unused:
        raise ConfigError(f"init_from {path}: {show(unused[0])} {np.shape(file[unused[0]])} of the file is not "
                          f"in the model {model_name!r} ({len(unused)} unused in all; another depth or variant?); "
                          f"set config.init_from.allow_unused=True to load the rest anyway")
  if first is not None:
    name, have, need = first
    hint = ("another variant (width)?" if differ > 1 else "add it to config.init_from.skip to keep it fresh")
    raise ConfigError(f"init_from {path}: {name} has shape {have} in the file, {need} in the model "
                      f"({differ} params differ; {hint})")
  return out


def _put_init(state, loaded, state_shardings):
  """`state` with the leaves of `loaded` ({collection: {path: array}}, from _read_init_from) put in place."""
  def put(collection, subtree, shardings):
    def pick(p, value, sh):
      new = loaded.get(collection, {}).get(sharding.path_str(p))
      return value if new is None else jax.device_put(new.astype(value.dtype), sh)
    return jax.tree_util.tree_map_with_path(pick, subtree, shardings)
  state = dict(state, params=put("params", state["params"], state_shardings["params"]))
  state["model_state"] = {c: put(c, v, state_shardings["model_state"][c]) for c, v in state["model_state"].items()}
  return state


def _step_flops(compiled_step):
  """FLOPs of one compiled train step from XLA's cost analysis (None if unavailable)."""
  try:
    cost = compiled_step.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) or None
  except Exception:  # cost analysis is best-effort and backend dependent
    return None


def make_train_step(config, model, task, tx, schedule, compute_dtype, steps_per_epoch=None):
  """(state, batch) -> (state, metrics): gradient accumulation, mixed precision, EMA, norms; the params pass
  through the model module's `param_constraint(config)` after each update when it has one (None: no constraint).
  The model module's `param_penalty(config)`, when it has one, gives fn(params, epoch) -> (term, metrics): the term
  is added to the task's loss and the metrics logged; epoch = step // steps_per_epoch (0-based, as the official
  PyTorch loops count it; steps_per_epoch None: every step counts as epoch 0)."""
  accum = config.grad_accum_steps
  module = components.load("models", config.model_name)
  constraint = getattr(module, "param_constraint", lambda config: None)(config)
  penalty = getattr(module, "param_penalty", lambda config: None)(config)

  def loss_fn(params, model_state, batch, rng, epoch):
    variables = {"params": _cast_floats(params, compute_dtype), **model_state}
    batch = {k: v.astype(compute_dtype) if k in task.compute_inputs and jnp.issubdtype(v.dtype, jnp.floating)
             else v for k, v in batch.items()}
    loss, aux = task.loss(model, variables, batch, rng, train=True)
    loss = loss.astype(jnp.float32)
    if penalty is not None:
      term, metrics = penalty(params, epoch)
      loss, aux = loss + term, {**aux, "metrics": {**aux["metrics"], **metrics}}
    return loss, aux

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step_fn(state, batch):
    rng = jax.random.fold_in(state["rng"], state["step"])
    params = state["params"]
    epoch = state["step"] // steps_per_epoch if steps_per_epoch else jnp.zeros((), jnp.int32)
    if accum == 1:
      (loss, aux), grads = grad_fn(params, state["model_state"], batch, rng, epoch)
      model_state, task_metrics = aux["model_state"] or state["model_state"], aux["metrics"]
    else:
      micro = jax.tree.map(lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]), batch)

      def body(carry, inputs):
        grads_sum, loss_sum, metric_sum, model_state = carry
        i, mb = inputs
        (l, aux), g = grad_fn(params, model_state, mb, jax.random.fold_in(rng, i), epoch)
        model_state = aux["model_state"] or model_state
        return (jax.tree.map(jnp.add, grads_sum, g), loss_sum + l,
                jax.tree.map(jnp.add, metric_sum, aux["metrics"]), model_state), None

      first_metrics = jax.eval_shape(lambda: grad_fn(params, state["model_state"],
                                                     jax.tree.map(lambda x: x[0], micro), rng, epoch)[0][1]["metrics"])
      zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)
      carry = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32), zeros(first_metrics),
               state["model_state"])
      (grads, loss, task_metrics, model_state), _ = jax.lax.scan(body, carry, (jnp.arange(accum), micro))
      grads = jax.tree.map(lambda g: g / accum, grads)
      loss = loss / accum
      task_metrics = jax.tree.map(lambda m: m / accum, task_metrics)

    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    if constraint is not None:
      new_params = constraint(new_params)
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
