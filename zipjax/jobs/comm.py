"""The few collectives a multi-process job needs, on JAX's own distributed runtime.

`Comm()` wraps `jax.experimental.multihost_utils`: `allgather` (small host arrays; every process gets the
`[processes, ...]` stack), `barrier`, and `agree` (process 0 runs a check and every process raises if it
failed). With one process everything is local and free. `zipjax.parallel.initialize` starts the runtime.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from zipjax.errors import InputError


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


__all__ = ["Comm"]
