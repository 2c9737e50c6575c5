"""What the efficiency table measures of one config: its cost (params, XLA FLOPs, train-step memory, img/s),
its accuracy after training through the shared trainer, and the machine it ran on (see efficiency.py)."""
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from effjax import components, metrics as metrics_lib, optim, runtime, sharding, train
from effjax.data import pipeline


def count_params(params):
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def _fill(abstract):
  """Concrete values for abstract variables, without compiling the model's initialiser (seconds per model): the
  cost figures depend on shapes only. Params ~ N(0, 0.02²), other collections (e.g. batch statistics) ones."""
  rng = np.random.default_rng(0)

  def fill(path, s):
    if not np.issubdtype(s.dtype, np.floating):
      return np.zeros(s.shape, s.dtype)
    if getattr(path[0], "key", None) == "params":
      return (0.02 * rng.standard_normal(s.shape)).astype(s.dtype)
    return np.ones(s.shape, s.dtype)
  return jax.tree.map(jax.numpy.asarray, jax.tree_util.tree_map_with_path(fill, abstract))


def _step_times(fn, steps):
  """Wall seconds of each of `steps` calls of fn() (each waits for its result) after one warm-up call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def costs(config, input_shape, timed_steps, train_step=True):
  """Cost of `config`'s model on random inputs of `input_shape` [B, H, W, C] (float32, one device).

  Returns params and forward GFLOPs per image; with train_step also the train step's GFLOPs per image (as XLA
  counts them: see efficiency.py's docstring) and
  compiled memory (bytes) and, when timed_steps > 0, training and inference images/s (median of timed_steps
  steps after one warm-up step).
  """
  model = components.load("models", config.model_name).Model(**config.model)
  task = components.load("tasks", config.task_name).Task(config)
  batch_size = input_shape[0]
  rng = jax.random.PRNGKey(0)
  batch = {"image": jax.random.normal(rng, input_shape, jnp.float32),
           "label": jax.random.randint(jax.random.PRNGKey(1), (batch_size,), 0, task.num_classes)}
  variables = dict(_fill(jax.eval_shape(lambda r: task.init_variables(model, r, batch), rng)))
  params = variables.pop("params")
  out = {"params": count_params(params), "batch": batch_size, "input_shape": list(input_shape[1:])}

  predict = jax.jit(lambda v, b: task.predict(model, v, b))
  full = {"params": params, **variables}
  start = time.perf_counter()
  predict_c = predict.lower(full, batch).compile()
  out["gflops_per_image"] = _flops(predict_c) / batch_size / 1e9
  if not train_step:
    return out

  tx, schedule = optim.make_optimizer(config.optimizer, 1000, 100)
  step = train.make_train_step(config, model, task, tx, schedule, train.COMPUTE_DTYPES[config.compute_dtype])
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
           "model_state": variables, "ema_params": {}, "rng": jax.random.PRNGKey(3)}
  step_c = jax.jit(step, donate_argnums=0, compiler_options=runtime.compiler_options()).lower(state, batch).compile()
  out["compile_s"] = time.perf_counter() - start
  out["train_gflops_per_image_xla"] = _flops(step_c) / batch_size / 1e9
  m = step_c.memory_analysis()
  out["train_memory"] = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "temp", "output", "alias")}
  out["train_memory_bytes"] = (out["train_memory"]["argument"] + out["train_memory"]["temp"]
                               + out["train_memory"]["output"] - out["train_memory"]["alias"])
  if timed_steps > 0:  # inference first: the train steps donate (delete) the params they share with `full`
    out["infer_step_s"] = _step_times(lambda: predict_c(full, batch), timed_steps)
    out["infer_img_s"] = batch_size / float(np.median(out["infer_step_s"]))
    holder = [state]

    def train_once():
      holder[0], metrics = step_c(holder[0], batch)
      return metrics["loss"]
    out["train_step_s"] = _step_times(train_once, timed_steps)
    out["train_img_s"] = batch_size / float(np.median(out["train_step_s"]))
  return out


def runlocal_input_shape(config):
  """[B, H, W, C] of the evaluation images of `config`'s data (B = the number of devices)."""
  mesh = sharding.make_mesh(config.mesh)
  batch = next(pipeline.eval_batches(config.data, mesh.size, sharding.batch_sharding(mesh)))
  return tuple(jax.tree.map(lambda x: x.shape, batch)["image"])


def train_accuracy(config):
  """Trains `config` through the shared trainer in a fresh workdir; accuracy, wall time and throughput."""
  with tempfile.TemporaryDirectory(prefix="effjax_efficiency_") as workdir:
    start = time.perf_counter()
    result = train.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - start
    rows = [r for r in metrics_lib.read_jsonl(workdir) if "train/examples_per_s" in r]
  speeds = [r["train/examples_per_s"] for r in rows[1:]] or [r["train/examples_per_s"] for r in rows]
  return {"accuracy": float(result["eval/accuracy"]), "steps": int(result["step"]), "train_wall_s": wall,
          "train_img_s": float(np.median(speeds)), "final_train_loss": float(result.get("train/loss", float("nan")))}


def machine():
  """CPU, cores, load, allocator, XLA_FLAGS, the train step's compiler options and versions of this process."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
  except OSError:
    pass
  return {"cpu": cpu, "cpu_count": os.cpu_count(),
          "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
          "platform": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
          "devices": f"{jax.device_count()} × {jax.devices()[0].platform}", "allocator": runtime.allocator(),
          "LD_PRELOAD": os.environ.get("LD_PRELOAD", ""), "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
          "train_step_compiler_options": runtime.compiler_options() or {},
          "load_average_before": list(os.getloadavg())}
