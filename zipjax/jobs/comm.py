"""The few collectives a multi-process job needs, on JAX's own distributed runtime.

`Comm()` wraps `jax.experimental.multihost_utils`: `allgather` (small host arrays; every process gets the
`[processes, ...]` stack), `barrier`, and `agree` (process 0 runs a check and every process raises if it
failed). With one process everything is local and free. `initialize(coordinator, num_processes, process_id)`
starts `jax.distributed` when a multi-process run is asked for (`zipjax.parallel.initialize`) and is a no-op
otherwise.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from zipjax import parallel
from zipjax.errors import InputError


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts jax.distributed for a multi-process run (`zipjax.parallel.initialize`: the flags, else
  ZIPJAX_COORDINATOR / ZIPJAX_NUM_PROCESSES / ZIPJAX_PROCESS_ID, else automatic on a multi-worker TPU VM; gloo
  collectives on CPU); a plain single-host run is left alone. Returns whether a distributed runtime is up."""
  try:
    return parallel.initialize(coordinator=coordinator, num_processes=num_processes, process_id=process_id)
  except InputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(f"cannot start jax.distributed (coordinator {coordinator}, {num_processes} processes, "
                     f"process id {process_id}): {type(e).__name__}: {e}") from e


class Comm:
  """Collectives between the processes of one job.

  Attributes:
    index: this process's index (0 reports progress, takes the lock and merges).
    count: number of processes.
  """

  def __init__(self, index: int | None = None, count: int | None = None):
    if index is None or count is None:
      index, count = jax.process_index(), jax.process_count()
    self.index = int(index)
    self.count = int(count)

  @property
  def is_main(self) -> bool:
    return self.index == 0

  def allgather(self, x) -> np.ndarray:
    """[processes, ...] stack of every process's `x` (same shape and dtype on all)."""
    x = np.asarray(x)
    if self.count == 1:
      return x[None]
    return np.asarray(multihost_utils.process_allgather(x, tiled=False)).reshape((self.count,) + x.shape)

  def barrier(self, name: str) -> None:
    if self.count > 1:
      multihost_utils.sync_global_devices(name)

  def agree(self, fn, what: str):
    """Runs `fn()` on process 0; when it raises, every process raises (process 0 its own error,
    the others one that points to it). Returns fn's result on process 0, None elsewhere."""
    result, error = None, None
    if self.is_main:
      try:
        result = fn()
      except Exception as e:  # pylint: disable=broad-except  (re-raised below, after telling the others)
        error = e
    ok = self.allgather(np.array([error is None], np.int32))
    if error is not None:
      raise error
    if not ok.all():
      raise InputError(f"process 0 failed to {what} (see its output)")
    return result


__all__ = ["Comm", "initialize"]
