"""A training run's checkpoints: orbax's CheckpointManager of `W/checkpoints` with three items, `state` (the
train state PyTree, restored straight into its shardings), `data` (the grain iterator) and `meta` (JSON: the
data's identity and the step). The manager owns the save cadence (`checkpoint.every` steps, the last
`checkpoint.keep` kept, asynchronous writes); the trainer forces a save at the end and on preemption. Readers
(`zipjax detect`, self-training's prediction, `init_workdir`) open the folder read-only and restore the
parameters alone (`load_params`, `restore_latest_params`), falling back to the previous checkpoint when the
latest one is corrupt where asked. A checkpoint of another model or optimizer is a `CheckpointError` naming the
differences; unreadable files are a `CorruptCheckpointError`.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable

import grain.python as grain
import jax
import orbax.checkpoint as ocp
import tensorstore as ts

from zipjax import parallel
from zipjax.errors import CheckpointError, CorruptCheckpointError
from zipjax.train.task import detector_task


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
    self.directory = os.path.abspath(directory)
    # the manager's cadence saves every `every` steps; the trainer forces the saves at the end and on SIGTERM;
    # a reader (detect, self-training's prediction) opens the folder read-only with the options orbax expects
    # of a reader, so orbax has nothing to warn about
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=0 if read_only else max(int(every), 1),
        # steps that are multiples of `every` (orbax's default policy would also save the first step it sees)
        save_decision_policy=None if read_only else ocp.checkpoint_managers.FixedIntervalPolicy(max(int(every), 1)),
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

  def should_save(self, step: int) -> bool:
    """Whether the manager's cadence (every `every` steps) saves after step `step`."""
    return bool(self.manager.should_save(step))

  def save(self, step: int, state, iterator, meta: dict, force: bool = False) -> bool:
    """Saves step `step` when the cadence says so or `force` (the end, a preemption); asynchronously when
    configured (the arrays are copied before this returns)."""
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state), data=grain.PyGrainCheckpointSave(iterator),
        meta=ocp.args.JsonSave(meta)), force=force)

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore_state(self, step: int, abstract, partial: bool = False):
    """The state (or, with `partial`, the subtree given by `abstract`) restored into `abstract`'s shardings.

    Raises:
      CheckpointError: the checkpoint's stored arrays (names and shapes, from its metadata) are not those of
        `abstract`: another model or optimizer.
      CorruptCheckpointError: its metadata or its arrays cannot be read (truncated, missing or garbled files).
    """
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
    _check_readable(os.path.join(self.directory, str(step), "state"), set(want), where)
    try:
      return self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(f"{where} is corrupt: the arrays its metadata lists cannot be read "
                                   f"({_first_line(e)})") from None

  def steps(self) -> list:
    """The finished checkpoint steps, oldest first."""
    return sorted(int(s) for s in self.manager.all_steps())

  def restore_data(self, step: int, iterator) -> None:
    self.manager.restore(step, args=ocp.args.Composite(data=grain.PyGrainCheckpointRestore(iterator)))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _key_name(k) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _check_readable(state_dir: str, names: set, where: str) -> None:
  """Reads, one after another, every stored value of the arrays `names` (all of them when no key matches) from the
  checkpoint's OCDBT store, raising CorruptCheckpointError on the first that cannot be read.

  orbax reads all arrays concurrently; when one read fails it abandons the others in a closed event loop, and
  each then prints a traceback (at exit, through no hook we could filter), after zipjax's one-line error. Reading
  the bytes first, sequentially and outside asyncio, finds a truncated or missing file before orbax starts.
  """
  if not os.path.exists(os.path.join(state_dir, "manifest.ocdbt")):
    return  # not an OCDBT checkpoint: orbax's own errors
  try:
    kv = ts.KvStore.open({"driver": "ocdbt", "base": "file://" + os.path.abspath(state_dir) + "/"}).result()
    keys = kv.list().result()
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptCheckpointError(f"{where} is corrupt: its array store cannot be opened ({_first_line(e)})") from None
  named = [(k, k.decode("utf-8", "replace").split("/")[0]) for k in keys]  # (key, array name)
  for key, name in [kn for kn in named if kn[1] in names] or named:
    try:
      kv.read(key).result()
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(f"{where} is corrupt: array {name} cannot be read ({_first_line(e)})") from None


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


def restore_latest_params(workdir: str, abstract_params, step: int | None = None, fallback: bool = False,
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


def load_params(workdir: str, config, mesh, step: int | None = None, fallback: bool = False,
                log: Callable = print) -> tuple:
  """(detector parameters replicated over `mesh`, checkpoint step) of a run's checkpoint `step` (default: the
  latest); with `fallback`, the previous checkpoint when that one is corrupt (logged)."""
  task = detector_task(config)
  shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  rep = parallel.replicated(mesh)
  abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)
  return restore_latest_params(workdir, abstract, step, fallback, log)


__all__ = ["Checkpoints", "latest_checkpoint_step", "restore_latest_params", "load_params"]
