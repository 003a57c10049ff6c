"""The few collectives a multi-process job needs, on JAX's own distributed runtime.

`Comm()` wraps `jax.experimental.multihost_utils`: `allgather` (small host arrays; every process gets the
`[processes, ...]` stack), `barrier`, and `agree` (process 0 runs a check and every process raises if it
failed). With one process everything is local and free. `initialize(coordinator, num_processes, process_id)`
starts `jax.distributed` when a multi-process run is asked for (flags, JAX's environment variables, or a
multi-host TPU VM) and is a no-op otherwise.
"""
from __future__ import annotations

import os

import numpy as np

from zipjax.errors import InputError

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def wants_distributed(coordinator=None, num_processes=None, process_id=None) -> bool:
  """Whether this process belongs to a multi-process run: flags, JAX's environment variables, or a TPU VM
  slice with several workers (whose metadata jax.distributed reads by itself)."""
  if coordinator or num_processes is not None or process_id is not None:
    return True
  if any(os.environ.get(k) for k in _ENV):
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts jax.distributed for a multi-process run (see `wants_distributed`) -> whether it did.

  Uses `zipjax.parallel.initialize` when the package provides it; otherwise calls `jax.distributed.initialize`
  directly, with gloo as the CPU collectives implementation (CPU processes can then talk to each other).
  """
  if not wants_distributed(coordinator, num_processes, process_id):
    return False
  import jax  # pylint: disable=import-outside-toplevel
  if jax.distributed.is_initialized():
    return True
  try:
    from zipjax import parallel  # pylint: disable=import-outside-toplevel
    init = getattr(parallel, "initialize", None)
  except ImportError:
    init = None
  if init is not None:
    init(coordinator=coordinator, num_processes=num_processes, process_id=process_id)
    return True
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except Exception:  # pylint: disable=broad-except
    pass  # older/newer jax without this option: CPU multi-process is then unavailable, accelerators are fine
  try:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(f"cannot start jax.distributed (coordinator {coordinator}, {num_processes} processes, "
                     f"process id {process_id}): {type(e).__name__}: {e}") from e
  return True


class Comm:
  """Collectives between the processes of one job.

  Attributes:
    index: this process's index (0 reports progress, takes the lock and merges).
    count: number of processes.
  """

  def __init__(self, index: int | None = None, count: int | None = None):
    if index is None or count is None:
      import jax  # pylint: disable=import-outside-toplevel
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
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return np.asarray(multihost_utils.process_allgather(x, tiled=False)).reshape((self.count,) + x.shape)

  def barrier(self, name: str) -> None:
    if self.count > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
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


__all__ = ["Comm", "initialize", "wants_distributed"]
