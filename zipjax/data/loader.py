"""grain pipeline of a labelling job: this process's shard of the work list, decoded and prepared in parallel.

`process_stream(worklist, indices, prepare, ...)` builds

  grain.MapDataset.source(indices)[process_index::process_count]      each process reads only its shard
    .map(load + prepare)                                              decode (PIL) + engine host preprocessing
    .to_iter_dataset(ReadOptions(num_threads=workers, prefetch_buffer_size=prefetch))

and iterates it in order. Decoding and preprocessing (PIL, numpy: they release the GIL for the heavy parts)
run in `workers` threads and up to `prefetch` prepared images wait in the buffer, so the host prepares the
next images while the device runs the current step. Threads rather than processes: the job process holds an
initialised JAX runtime (forking it is unsafe) and prepared images would otherwise be copied between
processes. Interleaved sharding (`[p::P]`) gives every process a mix of the list, whatever its order.

A failure while loading or preparing an image (bad file, refused size, an exception inside `prepare`) is
returned as a `Loaded` with a `reason`; the stream never stops because of one image.
"""
from __future__ import annotations

import grain
import numpy as np

from zipjax.configs import Limits
from zipjax.data.sources import Loaded, WorkList
from zipjax.errors import InputError


class _Prepare:
  """Picklable map function: work-list index -> Loaded with `.item` = prepare(image) (or a reason)."""

  def __init__(self, worklist: WorkList, limits: Limits, prepare, keep_image: bool = False):
    self.worklist = worklist
    self.limits = limits
    self.prepare = prepare
    self.keep_image = keep_image

  def __call__(self, index) -> Loaded:
    index = int(index)
    try:
      out = self.worklist.load(index, self.limits)
    except Exception as e:  # pylint: disable=broad-except
      return Loaded(index, self.worklist.key(index), self.worklist.key(index),
                    reason=f"cannot load ({type(e).__name__}: {e})")
    if out.image is not None and self.prepare is not None:
      try:
        out.item = self.prepare(out.image)
      except InputError as e:
        out.reason = str(e)
      except Exception as e:  # pylint: disable=broad-except
        out.reason = f"preprocessing failed ({type(e).__name__}: {e})"
      out.height, out.width = out.image.shape[:2]
      if not self.keep_image:
        out.image = None
    return out


def process_stream(worklist: WorkList, indices, prepare, limits: Limits, *, process_index: int = 0,
                   process_count: int = 1, workers: int = 8, prefetch: int = 16, keep_image: bool = False):
  """Iterator over `Loaded` items of this process's shard of `indices` (work-list positions), in order.

  Args:
    worklist: the job's work list.
    indices: int array of the positions still to do (the same on every process).
    prepare: `uint8 [H, W, 3] -> engine item` (`zipjax.engine.prepare` bound to the engine's spec), or None.
    limits: decoding limits.
    process_index, process_count: this process and how many share the list.
    workers: decoding threads.
    prefetch: prepared images buffered ahead of the consumer.
    keep_image: keep the decoded image on each item (`.image`).
  """
  indices = np.asarray(indices, dtype=np.int64)
  ds = grain.MapDataset.source(indices)[process_index::process_count]
  ds = ds.map(_Prepare(worklist, limits, prepare, keep_image))
  opts = grain.ReadOptions(num_threads=max(1, int(workers)), prefetch_buffer_size=max(1, int(prefetch)))
  return iter(ds.to_iter_dataset(opts))


__all__ = ["process_stream"]
