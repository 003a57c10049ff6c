"""The detector trainer behind `zipjax train`: sharded optax steps, orbax checkpoints, exact resume, metrics.

    python -m zipjax train --config configs/train_smoke.py --train-json ANN --images-root DIR --workdir W \
        [--val-json ANN2 --val-images-root DIR2] [--config.key=value ...]

One run, in order (`train`):
  1. Mesh from `config.mesh` (`zipjax/parallel/`, shared with the labelling engine); the batch is split over
     every mesh axis.
  2. Data (`zipjax/data/coco_train.py`): the training set, its query names (categories, or "object" in
     class-agnostic mode) and their CLIP text embeddings, computed once by the frozen text tower
     (`text_encoder`: the CLIP of `init_checkpoint`, else a random text tower from `config.text`, inherited
     from `init_workdir`'s run when that is set).
  3. State `{params, opt_state, step, rng}` with shardings from `config.sharding_rules` (FSDP over the data
     axis, big_vision style), inferred on `jax.eval_shape` and created straight into shards by jitted
     initialisers with `out_shardings`. Fresh runs: random parameters (`config.seed`), then the CLIP backbone
     of `config.init_checkpoint` or the final parameters of `config.init_workdir`'s run; resumed runs: the
     latest checkpoint of W (parameters, optimizer state, step, RNG key, data iterator), restored into shards.
  4. The step: `jax.jit` with in/out shardings and the state donated. Loss = the task's loss (the detector's
     set loss); per-step randomness is `fold_in(rng, step)`, so it does not depend on restarts or devices.
     Optimizer: `zipjax/train/optim.py` (AdamW, warm-up + cosine, per-module learning rates, clipping).
  5. Loop until `config.total_steps`: metrics of every `log_every`-th step (fetched one step late, so the host
     does not wait for the device), `MetricsWriter` (metrics.jsonl, perf.jsonl, TensorBoard), a tqdm bar,
     evaluation every `eval.every` steps and at the end on `--val-json` (class-agnostic and class-aware box and
     mask AP through `zipjax.eval.evaluate`, recorded in the step's metrics; `eval.at_start`: also the initial
     parameters, as step 0), orbax checkpoints every
     `checkpoint.every` steps (asynchronous, keeping the last `checkpoint.keep`) and at the end. SIGTERM:
     the current step finishes, a checkpoint is saved, `train` returns `EXIT_PREEMPTED` (143). With several
     processes a SIGTERM to any of them stops all after the same step (a collective decision carried by the
     step itself, `_Preemption`), so they save one checkpoint together and all return 143.
  6. A rerun with the same workdir resumes; a run whose checkpoint is at `total_steps` says so and returns 0.
     `W/config.json` records the run's config; a rerun whose model, loss, text, data, optimizer, batch size,
     seed, step count or initialisation differ is refused (use a new workdir).

Determinism: the input stream is a function of the data seed (`coco_train`), the step of the state and the
parameters of the checkpoint; XLA on a given backend is deterministic, so the same command writes the same
metrics.jsonl, and a run killed at any point and rerun writes the same metrics and final parameters as an
uninterrupted one (tests/train/test_trainer_resume.py kills a real process with SIGKILL).

Multi-host: every process runs the same command (`config.distributed=True` starts `jax.distributed` through
`zipjax.parallel.initialize`: ZIPJAX_COORDINATOR / ZIPJAX_NUM_PROCESSES / ZIPJAX_PROCESS_ID, a TPU slice, or the
cluster's own detection; gloo collectives on CPU); each decodes its slice of every global batch; orbax writes one
checkpoint; process 0 writes metrics and config.json and scores the COCO evaluation (every process predicts its
part). Two processes x 4 CPU devices give one process x 8 devices' metrics and parameters up to float rounding
(tests/train/test_trainer_multiprocess.py).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from zipjax import parallel
from zipjax.data import coco_train
from zipjax.errors import CheckpointError, InputError
from zipjax.io.atomic import atomic_write_json
from zipjax.models.detector import load_backbone
from zipjax.train.checkpoints import Checkpoints, restore_latest_params
from zipjax.train.evaluator import Evaluator, load_val_set
from zipjax.train.metrics import MetricsWriter
from zipjax.train.optim import make_optimizer
from zipjax.train.task import (Task, class_queries, compiler_options, config_to_dict, detector_config,
                               detector_task, load_run_config, text_encoder)

EXIT_PREEMPTED = 143  # 128 + SIGTERM
# config groups that a resumed run must share with the run that started the workdir
FIXED_KEYS = ("model", "loss", "text", "data", "optim", "batch_size", "seed", "total_steps", "init_checkpoint",
              "init_workdir")


def _check_same_run(workdir: str, config, write: bool = True) -> None:
  """Refuses a workdir started with another config (FIXED_KEYS); with `write`, records the config."""
  path = os.path.join(workdir, "config.json")
  new = config_to_dict(config)
  writer = jax.process_index() == 0  # every process checks, process 0 writes
  if not os.path.exists(path):
    if write and writer:
      atomic_write_json(path, new)
    return
  old = config_to_dict(load_run_config(workdir))
  diff = [k for k in FIXED_KEYS if old.get(k) != new.get(k)]
  if diff:
    raise InputError(f"{workdir} was started with a different config ({', '.join(diff)} differ); rerun with the "
                     "same config to resume, or use a new --workdir")
  if old != new and write and writer:  # eval, checkpoint, logging or mesh settings may change between restarts
    atomic_write_json(path, new)


# -------------------------------------------------------------------------------------------- trainer
class Trainer:
  """Sharded train state and jitted step for a task.

  Attributes:
    config: the run's ConfigDict.
    task: the Task.
    mesh: the device mesh.
    tx: the optax optimizer.
    schedules: {group: learning-rate schedule}.
    state_shapes: ShapeDtypeStructs of the state.
    state_shardings: NamedShardings of the state.
    batch_sharding: NamedSharding of batch arrays (leading dimension over all mesh axes).
  """

  def __init__(self, config, task: Task, mesh=None):
    self.config = config
    self.task = task
    self.mesh = mesh if mesh is not None else parallel.create_mesh(config.mesh)
    bs = int(config.batch_size)
    if bs % self.mesh.devices.size:
      raise InputError(f"batch_size {bs} is not a multiple of the {self.mesh.devices.size} devices of the mesh")
    key = jax.random.PRNGKey(int(config.seed))
    self._init_key, self._state_key = jax.random.split(key)
    param_shapes = jax.eval_shape(task.init, self._init_key)
    self.tx, self.schedules = make_optimizer(config.optim, int(config.total_steps), param_shapes)
    self.state_shapes = jax.eval_shape(self._make_state, param_shapes)
    rules, min_size = list(config.sharding_rules), int(config.fsdp_min_size)
    rep = parallel.replicated(self.mesh)
    self.state_shardings = {
        "params": parallel.param_shardings(self.state_shapes["params"], self.mesh, rules, min_size),
        "opt_state": parallel.param_shardings(self.state_shapes["opt_state"], self.mesh, rules, min_size),
        "step": rep, "rng": rep}
    self.batch_sharding = parallel.batch_sharding(self.mesh, self.mesh.axis_names)  # every device: data parallel
    self.compiler_options = compiler_options(config)
    self._step = jax.jit(self._train_step, in_shardings=(self.state_shardings, self.batch_sharding),
                         out_shardings=(self.state_shardings, rep), donate_argnums=(0,),
                         compiler_options=self.compiler_options)

  # ---- state
  def _make_state(self, params):
    return {"params": params, "opt_state": self.tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": self._state_key}

  def init_params(self):
    """Random parameters, created in their shards."""
    return jax.jit(self.task.init, out_shardings=self.state_shardings["params"],
                   compiler_options=self.compiler_options)(self._init_key)

  def place_params(self, params):
    """Host or device parameters -> parameters in their shards (float32)."""
    return jax.device_put(jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params),
                          self.state_shardings["params"])

  def init_state(self, params=None):
    """The step-0 state (optimizer state created in its shards); random parameters when `params` is None."""
    if params is None:
      params = self.init_params()
    make = jax.jit(self._make_state, in_shardings=(self.state_shardings["params"],),
                   out_shardings=self.state_shardings, compiler_options=self.compiler_options)
    return make(params)

  def abstract_state(self):
    """ShapeDtypeStructs with shardings: the restore target of a checkpoint."""
    return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                  self.state_shapes, self.state_shardings)

  # ---- step
  def _train_step(self, state, batch):
    step = state["step"]
    rng_model, rng_loss = jax.random.split(jax.random.fold_in(state["rng"], step))

    def loss_fn(params):
      out = self.task.forward(params, batch, True, rng_model)
      return self.task.loss(out, batch, rng_loss)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(metrics)
    metrics.update(loss=loss, grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(params))
    if "stop" in batch:  # the processes' preemption flags (trainer._Preemption), reduced with the step
      metrics["stop"] = jnp.max(batch["stop"])
    for name, sched in self.schedules.items():
      metrics[f"lr/{name}"] = jnp.asarray(sched(step), jnp.float32)
    return {"params": params, "opt_state": opt_state, "step": step + 1, "rng": state["rng"]}, metrics

  def step(self, state, batch):
    """One update: state (donated) + global batch -> (new state, metrics as device scalars)."""
    return self._step(state, batch)

  def global_batch(self, local: dict) -> dict:
    return parallel.global_batch(local, self.batch_sharding)


def restore_params(workdir: str, trainer: Trainer):
  """The latest parameters of another run's workdir, restored into `trainer`'s parameter shardings."""
  return restore_latest_params(workdir, trainer.abstract_state()["params"])[0]


def initial_params(config, trainer: Trainer, clip=None, log: Callable = print):
  """Parameters of a fresh run, in their shards: the final parameters of `config.init_workdir`'s run, or random
  ones (`config.seed`) whose backbone (and class projection) come from the CLIP ViT `clip` when
  `config.init_checkpoint` is set."""
  if str(config.get("init_workdir", "") or ""):
    params = restore_params(str(config.init_workdir), trainer)
    log(f"initialised from the final parameters of {config.init_workdir}")
    return params
  params = trainer.init_params()
  if str(config.get("init_checkpoint", "") or ""):
    clip = clip if clip is not None else text_encoder(config)
    host = {"params": jax.device_get(params)}
    params = trainer.place_params(load_backbone(host, clip, detector_config(config))["params"])
    log(f"backbone initialised from {config.init_checkpoint}")
  return params


# ------------------------------------------------------------------------------------------------ run
@dataclasses.dataclass
class RunResult:
  """What `train` did.

  Attributes:
    status: 'done' (total_steps reached), 'already_done' (nothing to do) or 'preempted' (SIGTERM).
    step: the step of the final state.
    start_step: the step the run started from.
    exit_code: 0 for done/already_done, EXIT_PREEMPTED for preempted.
    last_metrics: the last logged metrics record.
  """
  status: str
  step: int
  start_step: int
  exit_code: int
  last_metrics: dict


class _Preemption:
  """SIGTERM -> a flag the loop polls (installed in the main thread only).

  With several processes a SIGTERM may reach only some of them, so the decision to stop is collective: each
  step's batch carries every process's flag (`stop`, one value per example row) and the step returns their
  maximum (`metrics['stop']`, replicated). After dispatching step s the loop reads the maximum of step s - 1
  (`should_stop`), which every process reads alike, so all of them stop and save after the same step s. One
  process: the local flag, at once.
  """

  def __init__(self, collective: bool = False):
    self.requested = False
    self.collective = collective
    self._old = None
    self._last = None  # the previous step's metrics['stop'] (a device scalar)

  def local_rows(self, n: int) -> np.ndarray:
    """This process's `stop` rows of the next batch."""
    return np.full((n,), 1 if self.requested else 0, np.int32)

  def should_stop(self, metrics) -> bool:
    """Whether to save and stop after the step whose metrics these are (see the class docstring)."""
    if not self.collective:
      return self.requested
    prev, self._last = self._last, metrics["stop"]
    return prev is not None and int(jax.device_get(prev)) > 0

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handler)
    return self

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    self.requested = True

  def __exit__(self, *a):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
    return False


def _to_float(metrics) -> dict:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def train(config, train_json: str, images_root: str, workdir: str, val_json: str | None = None,
          val_images_root: str | None = None, task: Task | None = None, progress: bool = True,
          log: Callable = print, skip_bad_images: bool = False) -> RunResult:
  """Trains (or resumes) the run of `workdir` to `config.total_steps`; see the module docstring.

  Every training (and validation) image file is checked before step 0 (exists, is an image of the annotated
  size); bad ones are refused in one message, or left out with a warning under `skip_bad_images`."""
  workdir = os.path.abspath(workdir)
  total = int(config.total_steps)
  if total < 1:
    raise InputError(f"config.total_steps must be >= 1, got {total}")
  if bool(config.get("distributed", False)):
    parallel.initialize(auto=True)
  # Everything that can refuse the run is checked before anything is written to the workdir (config.json claims
  # it) and before orbax starts its threads: the config against the workdir's, the data, the images, the model
  # and text tower, the batch layout.
  _check_same_run(workdir, config, write=False)
  t0 = time.perf_counter()
  d = config.data
  train_set = coco_train.load_train_set(train_json, images_root, class_agnostic=bool(d.class_agnostic),
                                        fraction=float(d.fraction), fraction_seed=int(d.fraction_seed),
                                        min_score=float(d.min_score), keep_empty=bool(d.keep_empty), check=True,
                                        skip_bad=skip_bad_images, progress=progress)
  val_set = load_val_set(val_json, val_images_root or images_root, skip_bad_images, progress) if val_json else None
  for what, skipped in (("training", train_set.skipped), ("validation", val_set.skipped if val_set else [])):
    if skipped:
      shown = "; ".join(f"{p}: {why}" for p, why in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
      log(f"warning: --skip-bad-images: {len(skipped)} {what} image(s) left out ({shown})")
  trainer = Trainer(config, task or detector_task(config))
  clip = text_encoder(config)
  pcount, pindex = jax.process_count(), jax.process_index()
  meta = {"dataset": train_set.digest, "num_images": len(train_set.records), "names": train_set.names,
          "batch_size": int(config.batch_size), "data_seed": int(d.seed)}
  dataset = coco_train.make_dataset(train_set, coco_train.augment_params(config, train=True), int(config.batch_size),
                                    int(d.seed), pindex, pcount)
  os.makedirs(workdir, exist_ok=True)
  ck = Checkpoints(os.path.join(workdir, "checkpoints"), every=int(config.checkpoint.every),
                   keep=int(config.checkpoint.keep), asynchronous=bool(config.checkpoint.asynchronous))
  try:
    latest = ck.latest_step()
    if latest is not None:  # the data is part of the run's identity, finished or not
      _check_same_data(workdir, ck.restore_meta(int(latest)), meta)
    if latest is not None and latest >= total:
      log(f"{workdir}: already trained to step {latest} (total_steps {total}); nothing to do")
      return RunResult("already_done", int(latest), int(latest), 0, {})
    _check_same_run(workdir, config)  # everything checked: config.json claims the workdir
    return _train(config, workdir, val_set, progress, log, ck, latest, t0, train_set, trainer, clip, meta, dataset)
  finally:
    ck.wait()
    ck.close()


def _check_same_data(workdir: str, old: dict, meta: dict) -> None:
  for k in ("dataset", "batch_size", "data_seed"):
    if old.get(k) != meta[k]:
      raise InputError(f"{workdir}: the checkpoint was made with another {k} ({old.get(k)!r}, now {meta[k]!r}); "
                       "resume with the same training data and config, or use a new --workdir")


def _train(config, workdir, val_set, progress, log, ck, latest, t0, train_set, trainer, clip, meta, dataset):
  total = int(config.total_steps)
  d = config.data
  queries = class_queries(config, clip, train_set.names)  # [Q, D]
  pcount, pindex = jax.process_count(), jax.process_index()
  global_bs = int(config.batch_size)
  local_bs = global_bs // pcount

  if latest is None:
    start = 0
    state = trainer.init_state(initial_params(config, trainer, clip, log))
    iterator = coco_train.make_iterator(dataset, int(d.workers), int(d.threads))
  else:
    start = int(latest)
    state = ck.restore_state(start, trainer.abstract_state())
    iterator = coco_train.make_iterator(dataset, int(d.workers), int(d.threads))
    try:
      ck.restore_data(start, iterator)
    except Exception as e:  # pylint: disable=broad-except
      # e.g. another decoding worker count: the stream is indexable, so restart it at the batch index
      log(f"note: data iterator state not restored ({type(e).__name__}); restarting the stream at batch {start}")
      iterator = coco_train.make_iterator(dataset, int(d.workers), int(d.threads), start=start)
    log(f"resumed {workdir} at step {start}")
  if int(state["step"]) != start:
    raise CheckpointError(f"{workdir}: checkpoint {start} holds step {int(state['step'])}")

  evaluator = None
  if val_set is not None:
    evaluator = Evaluator(config, val_set, trainer.mesh, clip)

  writer = MetricsWriter(workdir, resume_step=start, enabled=pindex == 0)
  q_local = np.ascontiguousarray(np.broadcast_to(queries[None], (local_bs,) + queries.shape))
  qv_local = np.ones((local_bs, queries.shape[0]), bool)
  log_every, eval_every = max(int(config.log_every), 1), int(config.eval.every)
  status, last = "done", {}
  pending = None  # (step, device metrics, perf) logged one step late
  t_last, step_last = time.perf_counter(), start
  setup_s = time.perf_counter() - t0

  def flush_pending():
    nonlocal pending, last
    if pending is None:
      return
    s, m, perf, extra = pending
    rec = _to_float(m)
    rec.update(extra)
    writer.write(s, rec, perf)
    last = dict(rec, step=s)
    pending = None

  if evaluator is not None and start == 0 and bool(config.eval.get("at_start", False)):
    writer.write(0, evaluator(state["params"]))  # the initial parameters (random or init_checkpoint), step 0
  bar = tqdm(total=total, initial=start, unit="step", desc="train", disable=not progress or pindex != 0,
             file=sys.stderr, dynamic_ncols=True)
  step = start
  with _Preemption(collective=pcount > 1) as preempt:
    while step < total:
      local = next(iterator)
      local["queries"] = q_local
      local["query_valid"] = qv_local
      if preempt.collective:
        local["stop"] = preempt.local_rows(local_bs)
      state, metrics = trainer.step(state, trainer.global_batch(local))
      step += 1
      stop = preempt.should_stop(metrics)
      if preempt.collective:
        metrics = {k: v for k, v in metrics.items() if k != "stop"}
      extra = {}
      if evaluator is not None and (step == total or (eval_every > 0 and step % eval_every == 0)):
        extra = evaluator(state["params"])
      if step % log_every == 0 or step == total or extra:
        flush_pending()
        now = time.perf_counter()
        rate = (step - step_last) / max(now - t_last, 1e-9)
        perf = {"steps_per_s": rate, "examples_per_s": rate * global_bs, "seconds": now - t0}
        t_last, step_last = now, step
        pending = (step, metrics, perf, extra)
        if extra:
          flush_pending()
      bar.update(1)
      if step % log_every == 0 and last:
        bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}", refresh=False)
      force = step == total or stop
      if force or ck.should_save(step):
        flush_pending()
        ck.save(step, state, iterator, dict(meta, step=step), force=force)
      if stop and step < total:
        status = "preempted"
        break
  flush_pending()
  bar.close()
  ck.wait()
  writer.close()
  elapsed = time.perf_counter() - t0
  done = step - start
  log(f"{'stopped by SIGTERM at' if status == 'preempted' else 'trained to'} step {step}/{total} "
      f"({done} steps in {elapsed:.1f}s, setup {setup_s:.1f}s"
      f"{f', {done / max(elapsed - setup_s, 1e-9):.2f} steps/s' if done else ''}); checkpoint in "
      f"{os.path.join(workdir, 'checkpoints')}")
  if status == "preempted":
    log("rerun the same command to resume")
  return RunResult(status, step, start, EXIT_PREEMPTED if status == "preempted" else 0, last)


# the task, checkpoint and evaluation names stay importable from here (`zipjax.train.trainer` is what users
# and the commands import); each lives in its own module
__all__ = ["Trainer", "restore_params", "initial_params", "RunResult", "train", "EXIT_PREEMPTED", "FIXED_KEYS"]
