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

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zipjax.errors import CheckpointError, CorruptCheckpointError, InputError
from zipjax.io.atomic import atomic_write_json
from zipjax import parallel
from zipjax.train.metrics import MetricsWriter
from zipjax.train.optim import make_optimizer

EXIT_PREEMPTED = 143  # 128 + SIGTERM
# config groups that a resumed run must share with the run that started the workdir
FIXED_KEYS = ("model", "loss", "text", "data", "optim", "batch_size", "seed", "total_steps", "init_checkpoint",
              "init_workdir")


# -------------------------------------------------------------------------------------------------- task
@dataclasses.dataclass
class Task:
  """What the trainer trains: pure functions, jittable.

  Attributes:
    init: rng -> params (random initialisation).
    forward: (params, batch, train, rng) -> model outputs.
    loss: (outputs, batch, rng) -> (scalar loss, dict of scalar metrics).
  """
  init: Callable
  forward: Callable
  loss: Callable


def detector_config(config):
  from zipjax.models.detector import DetectorConfig  # pylint: disable=import-outside-toplevel
  return DetectorConfig.from_config(config.model)


def detector_task(config) -> Task:
  """The open-vocabulary detector (`zipjax.models.detector`) with its set loss (`zipjax.train.losses`)."""
  from zipjax.models.detector import Detector  # pylint: disable=import-outside-toplevel
  from zipjax.train.losses import set_loss  # pylint: disable=import-outside-toplevel
  cfg = detector_config(config)
  model = Detector(cfg)
  loss_cfg = config.loss

  def init(rng):
    s = cfg.input_size
    return model.init(rng, jnp.zeros((1, s, s, 3), jnp.uint8), jnp.zeros((1, 1, cfg.embed_dim), jnp.float32),
                      jnp.ones((1, 1), bool))["params"]

  def forward(params, batch, train, rng):
    return model.apply({"params": params}, batch["image"], batch["queries"], batch["query_valid"], train=train,
                       rngs={"dropout": rng} if train else None)

  def loss(out, batch, rng):
    return set_loss(out, batch, loss_cfg, rng=rng)

  return Task(init=init, forward=forward, loss=loss)


# ----------------------------------------------------------------------------------------------- text
def _text_settings(config) -> dict:
  """Where the text tower comes from: {'checkpoint': path} or {'arch': {...}, 'seed': s}, plus templates."""
  init_ckpt = str(config.get("init_checkpoint", "") or "")
  text = config.text
  if not init_ckpt and str(config.get("init_workdir", "") or ""):
    prev = load_run_config(str(config.init_workdir))
    init_ckpt = str(prev.get("init_checkpoint", "") or "")
    text = prev.text
  out = {"templates": str(text.templates)}
  if init_ckpt:
    out["checkpoint"] = init_ckpt
  else:
    out["arch"] = dict(text.arch.to_dict() if hasattr(text.arch, "to_dict") else text.arch)
    out["seed"] = int(text.seed)
  return out


def text_encoder(config):
  """The frozen CLIP whose text tower embeds class names (see the module docstring)."""
  from zipjax.clip import ClipModel, load_clip  # pylint: disable=import-outside-toplevel
  from zipjax.models.clip_net import CLIPConfig  # pylint: disable=import-outside-toplevel
  settings = _text_settings(config)
  if "checkpoint" in settings:
    from zipjax.weights import resolve  # pylint: disable=import-outside-toplevel
    return load_clip(resolve(settings["checkpoint"], "clip"))
  arch = settings["arch"]
  # the vision tower is never used: the smallest ViT that builds
  cfg = CLIPConfig(embed_dim=int(config.model.embed_dim), image_resolution=32, vision_layers=1, vision_width=64,
                   vision_patch_size=16, **arch)
  return ClipModel.random(cfg, seed=settings["seed"])


def class_queries(config, clip_model, names) -> np.ndarray:
  """float32 [Q, D] unit-norm text embeddings of the class names (prompt ensemble or bare names)."""
  from zipjax.pipeline.semantic import text_queries  # pylint: disable=import-outside-toplevel
  templates = _text_settings(config)["templates"]
  if templates not in ("ensemble", "bare"):
    raise InputError(f"config.text.templates must be 'ensemble' or 'bare', got {templates!r}")
  q = text_queries(clip_model, list(names), None if templates == "ensemble" else ["{}"])
  if q.shape[-1] != int(config.model.embed_dim):
    raise CheckpointError(f"text embeddings have width {q.shape[-1]}, the detector's embed_dim is "
                          f"{config.model.embed_dim}")
  return q


# --------------------------------------------------------------------------------------------- config
def config_to_dict(config) -> dict:
  return json.loads(config.to_json()) if hasattr(config, "to_json") else json.loads(json.dumps(config))


def load_run_config(workdir: str):
  """The ConfigDict a run recorded in `workdir/config.json`."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise InputError(f"{workdir}: not a zipjax train workdir (no config.json)")
  try:
    with open(path, encoding="utf-8") as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, json.JSONDecodeError) as e:
    raise InputError(f"{path}: cannot read ({e})") from e


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
def compiler_options(config) -> dict | None:
  """XLA options of the jitted functions: `config.xla_opt_level` >= 0 sets `xla_backend_optimization_level`
  (0 compiles a CPU program several times faster and runs it slower: for tests and smoke runs)."""
  level = int(config.get("xla_opt_level", -1))
  return {"xla_backend_optimization_level": level} if level >= 0 else None


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


# ---------------------------------------------------------------------------------------- checkpoints
@contextlib.contextmanager
def _quiet_orbax_read_only():
  """Drops orbax's "Given directory is read only=..." warning (absl), logged each time a reader opens a run's
  checkpoints read-only on purpose; every other message passes."""
  logger = logging.getLogger("absl")

  def keep(record):
    return not str(record.getMessage()).startswith("Given directory is read only")

  logger.addFilter(keep)
  try:
    yield
  finally:
    logger.removeFilter(keep)


class Checkpoints:
  """orbax CheckpointManager of `W/checkpoints`: items `state` (PyTree), `data` (grain iterator), `meta` (JSON).

  Attributes:
    directory: the checkpoint folder.
    manager: the orbax CheckpointManager.
  """

  def __init__(self, directory: str, every: int, keep: int, asynchronous: bool = True, read_only: bool = False):
    import grain.python as grain  # pylint: disable=import-outside-toplevel
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    self._ocp = ocp
    self._grain = grain
    self.directory = os.path.abspath(directory)
    # the trainer decides when to save (every `every` steps, at the end, on SIGTERM) and forces each save;
    # a reader (detect, self-training's prediction) opens the folder read-only with the options orbax expects
    # of a reader, so orbax has nothing to warn about
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=0 if read_only else max(int(every), 1),
        max_to_keep=None if read_only else max(int(keep), 1),
        enable_async_checkpointing=bool(asynchronous), create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only)
    with _quiet_orbax_read_only():
      self.manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": ocp.PyTreeCheckpointHandler(), "data": grain.PyGrainCheckpointHandler(),
                         "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state, iterator, meta: dict) -> bool:
    """Saves step `step` (asynchronously when configured; the arrays are copied before this returns)."""
    ocp = self._ocp
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state), data=self._grain.PyGrainCheckpointSave(iterator),
        meta=ocp.args.JsonSave(meta)), force=True)

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=self._ocp.args.Composite(meta=self._ocp.args.JsonRestore()))["meta"]

  def restore_state(self, step: int, abstract, partial: bool = False):
    """The state (or, with `partial`, the subtree given by `abstract`) restored into `abstract`'s shardings.

    Raises:
      CheckpointError: the checkpoint's stored arrays (names and shapes, from its metadata) are not those of
        `abstract`: another model or optimizer.
      CorruptCheckpointError: its metadata or its arrays cannot be read (truncated, missing or garbled files).
    """
    ocp = self._ocp
    where = f"{self.directory}: checkpoint {step}"
    try:
      have = _leaf_shapes(self.manager.item_metadata(step)["state"])
    except Exception as e:  # pylint: disable=broad-except  (orbax / tensorstore raise many kinds)
      raise CorruptCheckpointError(f"{where} is corrupt: its metadata cannot be read ({_first_line(e)})") from None
    want = _leaf_shapes(abstract)
    diffs = [f"{k}: missing" for k in want if k not in have]
    diffs += [f"{k}: shape {have[k]} (the model has {want[k]})" for k in want if k in have and have[k] != want[k]]
    if not partial:
      diffs += [f"{k}: not in the model" for k in have if k not in want]
    if diffs:
      raise CheckpointError(f"{where} does not match the model/optimizer of this config ({len(diffs)} difference(s): "
                            + "; ".join(diffs[:5]) + ")")
    args = ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                  partial_restore=partial)
    try:
      return self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(f"{where} is corrupt: the arrays its metadata lists cannot be read "
                                   f"({_first_line(e)})") from None

  def steps(self) -> list:
    """The finished checkpoint steps, oldest first."""
    return sorted(int(s) for s in self.manager.all_steps())

  def restore_data(self, step: int, iterator) -> None:
    self.manager.restore(step, args=self._ocp.args.Composite(data=self._grain.PyGrainCheckpointRestore(iterator)))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _key_name(k) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _leaf_shapes(tree) -> dict:
  """'a.b.0.c' -> shape of every array leaf (dict keys, sequence indices and attribute names alike)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {".".join(_key_name(k) for k in path): tuple(getattr(leaf, "shape", ())) for path, leaf in leaves}


def _first_line(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _read_checkpoints(workdir: str) -> Checkpoints:
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise CheckpointError(f"{workdir}: no checkpoints/ folder (not a zipjax train workdir)")
  return Checkpoints(ckpt_dir, every=1, keep=1, asynchronous=False, read_only=True)


def latest_checkpoint_step(workdir: str) -> int:
  """The step of the latest finished checkpoint of `workdir` (nothing is restored)."""
  ck = _read_checkpoints(workdir)
  try:
    step = ck.latest_step()
  finally:
    ck.close()
  if step is None:
    raise CheckpointError(f"{workdir}: no finished checkpoint")
  return int(step)


def _restore_latest_params(workdir: str, abstract_params, step: int | None = None, fallback: bool = False,
                           log: Callable = print) -> tuple:
  """(params restored into `abstract_params`' shardings, step) from the checkpoint `step` (default: the latest)
  of `workdir`. With `fallback`, a corrupt checkpoint is skipped for the previous one (saying so)."""
  ck = _read_checkpoints(workdir)
  try:
    step = ck.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"{workdir}: no finished checkpoint")
    earlier = [s for s in ck.steps() if s < int(step)][::-1] if fallback else []
    while True:
      try:
        return ck.restore_state(step, {"params": abstract_params}, partial=True)["params"], int(step)
      except CorruptCheckpointError as e:
        if not earlier:
          raise CorruptCheckpointError(f"{e}; no earlier checkpoint to fall back to" if fallback else str(e)) \
              from None
        log(f"warning: {e}; using the previous checkpoint, {earlier[0]}")
        step = earlier.pop(0)
  finally:
    ck.close()


def restore_params(workdir: str, trainer: Trainer):
  """The latest parameters of another run's workdir, restored into `trainer`'s parameter shardings."""
  return _restore_latest_params(workdir, trainer.abstract_state()["params"])[0]


def load_params(workdir: str, config, mesh, step: int | None = None, fallback: bool = False,
                log: Callable = print) -> tuple:
  """(detector parameters replicated over `mesh`, checkpoint step) of a run's checkpoint `step` (default: the
  latest); with `fallback`, the previous checkpoint when that one is corrupt (logged)."""
  task = detector_task(config)
  shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  rep = parallel.replicated(mesh)
  abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)
  return _restore_latest_params(workdir, abstract, step, fallback, log)


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
    from zipjax.models.detector import load_backbone  # pylint: disable=import-outside-toplevel
    clip = clip if clip is not None else text_encoder(config)
    host = {"params": jax.device_get(params)}
    params = trainer.place_params(load_backbone(host, clip, detector_config(config))["params"])
    log(f"backbone initialised from {config.init_checkpoint}")
  return params


# ----------------------------------------------------------------------------------------------- eval
@dataclasses.dataclass
class ValSet:
  """A validation set whose image files were checked up front.

  Attributes:
    gt: the validated ground truth (`zipjax.io.coco.GroundTruth`), without the skipped images.
    paths: image id -> image file, in the ground truth's order.
    skipped: `[(path, reason)]` of the images left out (`skip_bad`).
  """
  gt: Any
  paths: dict
  skipped: list


def load_val_set(val_json: str, images_root: str, skip_bad: bool = False, progress: bool = False) -> ValSet:
  """The ground truth of `val_json` and its image files, every one checked (exists, is an image of the annotated
  size: `zipjax.data.coco_train.check_images`) before training starts; bad ones are refused in one message, or
  left out (with their annotations) under `skip_bad`."""
  from zipjax.data import coco_train  # pylint: disable=import-outside-toplevel
  from zipjax.io import coco as coco_io  # pylint: disable=import-outside-toplevel
  gt = coco_io.load_ground_truth(val_json)
  records = []
  for image_id, img in gt.images.items():
    if "file_name" not in img:
      raise InputError(f"{val_json}: image {image_id} has no file_name")
    records.append({"path": os.path.join(images_root, img["file_name"]), "image_id": image_id,
                    "height": img["height"], "width": img["width"]})
  bad = coco_train.check_images(records, progress=progress)
  if bad and not skip_bad:
    raise InputError(coco_train.bad_images_message(val_json, "validation", bad, len(records)))
  gone = {p for p, _ in bad}
  keep = {r["image_id"]: r["path"] for r in records if r["path"] not in gone}
  if not keep:
    raise InputError(f"{val_json}: no validation image left")
  if bad:
    gt = dataclasses.replace(gt, images={i: im for i, im in gt.images.items() if i in keep},
                             annotations=[a for a in gt.annotations if a["image_id"] in keep])
  return ValSet(gt=gt, paths=keep, skipped=bad)


class Evaluator:
  """Periodic COCO evaluation of the detector on a validation set (images decoded once).

  Attributes:
    gt: the validated ground truth (`zipjax.io.coco.GroundTruth`).
    names: the validation category names.
    images: [(image_id, uint8 [H, W, 3])].
    class_agnostic: the model was trained class-agnostic (class-aware metrics are then skipped).
  """

  def __init__(self, config, val_set: "ValSet", predictor, queries_fn: Callable):
    from zipjax.io import images as images_io  # pylint: disable=import-outside-toplevel
    self.gt = val_set.gt
    self.names = [c["name"] for c in self.gt.categories]
    self.class_agnostic = bool(config.data.class_agnostic)
    self.predictor = predictor
    self.images = []
    for image_id, path in val_set.paths.items():
      try:
        arr = images_io.load_image(path, min_side=1, max_side=1 << 16, max_aspect=1e9)
      except InputError as e:
        raise InputError(f"{path}: {e}") from None
      self.images.append((image_id, arr))
    self.queries = queries_fn(["object"] if self.class_agnostic else self.names)

  def predictions(self, params, class_agnostic: bool) -> list:
    """COCO results of every validation image."""
    from zipjax.io.results import encode_rle  # pylint: disable=import-outside-toplevel
    out = []
    bs = self.predictor.batch_size
    for s in range(0, len(self.images), bs):
      chunk = self.images[s:s + bs]
      insts = self.predictor.predict(params, [a for _, a in chunk], self.queries, class_agnostic=class_agnostic)
      for (image_id, _), image_insts in zip(chunk, insts):
        for inst in image_insts:
          x0, y0, x1, y1 = inst["box"]
          rec = {"image_id": image_id, "bbox": [x0, y0, max(x1 - x0, 0.0), max(y1 - y0, 0.0)],
                 "segmentation": encode_rle(inst["mask"]), "score": inst["score"]}
          if not class_agnostic:
            rec["category_name"] = self.names[inst["category"]]
          out.append(rec)
    return out

  def __call__(self, params) -> dict:
    """{'eval/agnostic/bbox_AP50': ..., 'eval/class/segm_AP': ...} (fractions; -1 when undefined)."""
    from zipjax.eval import evaluate  # pylint: disable=import-outside-toplevel
    metrics = {}
    modes = [("agnostic", True)] + ([] if self.class_agnostic else [("class", False)])
    for tag, agnostic in modes:
      preds = self.predictions(params, agnostic)
      if jax.process_index() != 0:
        continue
      res = evaluate(self.gt, preds, iou_type="both", class_agnostic=agnostic)
      for iou in ("bbox", "segm"):
        for k in ("AP", "AP50", "AP75", "AR100"):
          v = res[iou][k]
          metrics[f"eval/{tag}/{iou}_{k}"] = -1.0 if v is None else float(v)
      metrics[f"eval/{tag}/num_pred"] = float(len(preds))
    return metrics


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
    import threading  # pylint: disable=import-outside-toplevel
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
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  from zipjax.data import coco_train  # pylint: disable=import-outside-toplevel
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
    return _train(config, workdir, val_set, progress, log, ck, latest, coco_train, tqdm, t0, train_set, trainer,
                  clip, meta, dataset)
  finally:
    ck.wait()
    ck.close()


def _check_same_data(workdir: str, old: dict, meta: dict) -> None:
  for k in ("dataset", "batch_size", "data_seed"):
    if old.get(k) != meta[k]:
      raise InputError(f"{workdir}: the checkpoint was made with another {k} ({old.get(k)!r}, now {meta[k]!r}); "
                       "resume with the same training data and config, or use a new --workdir")


def _train(config, workdir, val_set, progress, log, ck, latest, coco_train, tqdm, t0, train_set, trainer, clip,
           meta, dataset):
  total = int(config.total_steps)
  d = config.data
  queries_fn = lambda names: class_queries(config, clip, names)  # noqa: E731
  queries = queries_fn(train_set.names)  # [Q, D]
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
    from zipjax.train.predict import DetectorPredictor  # pylint: disable=import-outside-toplevel
    predictor = DetectorPredictor(detector_config(config), trainer.mesh, int(config.eval.batch_size),
                                  score_threshold=float(config.eval.score_threshold),
                                  compiler_options=trainer.compiler_options)
    evaluator = Evaluator(config, val_set, predictor, queries_fn)

  writer = MetricsWriter(workdir, resume_step=start, enabled=pindex == 0)
  q_local = np.ascontiguousarray(np.broadcast_to(queries[None], (local_bs,) + queries.shape))
  qv_local = np.ones((local_bs, queries.shape[0]), bool)
  log_every, eval_every = max(int(config.log_every), 1), int(config.eval.every)
  ckpt_every = max(int(config.checkpoint.every), 1)
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
      if step == total or step % ckpt_every == 0 or stop:
        flush_pending()
        ck.save(step, state, iterator, dict(meta, step=step))
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


__all__ = ["Task", "detector_task", "detector_config", "text_encoder", "class_queries", "load_run_config",
           "compiler_options", "Trainer", "Checkpoints", "restore_params", "load_params", "initial_params",
           "Evaluator", "RunResult", "train", "EXIT_PREEMPTED"]
