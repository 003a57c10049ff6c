"""The one fault-injection hook of the kill tests: `ZIPJAX_FAULT=<point>[@<n>]` SIGKILLs the process the n-th
time (default the first) `fault(point)` is reached, or, for `fault_when(point, ready)`, as soon as `ready()`
holds once the point is armed (a daemon thread polls it: e.g. mid-training, once a checkpoint exists).

Points: `label.step`, `shard.written`, `merge.record`, `commit.file` (zipjax/io/shards.py, zipjax/jobs/label.py),
`segment.batch`, `detect.batch` (zipjax/jobs/folder_run.py), `selftrain.train.<r>`, `selftrain.predict.<r>`,
`selftrain.merge.<r>` (zipjax/jobs/selftrain.py, round r).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Callable

ENV = "ZIPJAX_FAULT"
_COUNTS: dict[str, int] = {}


def _armed(point: str) -> int:
  """The n of `ZIPJAX_FAULT=point@n` (0: not this point)."""
  name, _, nth = os.environ.get(ENV, "").partition("@")
  return int(nth or 1) if name == point else 0


def fault(point: str) -> None:
  """SIGKILLs this process the n-th time it reaches `point` when `ZIPJAX_FAULT` names it."""
  nth = _armed(point)
  if not nth:
    return
  _COUNTS[point] = _COUNTS.get(point, 0) + 1
  if _COUNTS[point] == nth:
    os.kill(os.getpid(), signal.SIGKILL)


def fault_when(point: str, ready: Callable[[], bool], poll_s: float = 0.01) -> threading.Thread | None:
  """When `ZIPJAX_FAULT` names `point`: a daemon thread that SIGKILLs this process once `ready()` is true."""
  if not _armed(point):
    return None

  def watch():
    while True:
      try:
        if ready():
          os.kill(os.getpid(), signal.SIGKILL)
      except OSError:
        pass
      time.sleep(poll_s)

  t = threading.Thread(target=watch, daemon=True)
  t.start()
  return t


__all__ = ["ENV", "fault", "fault_when"]
