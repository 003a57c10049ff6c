"""Training logs: `W/metrics.jsonl` (deterministic), `W/perf.jsonl` (timings), TensorBoard events in `W/tb/`.

- `metrics.jsonl`: one JSON object per logged step, `{"step": s, name: value, ...}` with keys sorted and values
  as Python floats (exact `repr` round trip). It holds only values that are a function of the command (losses,
  learning rates, gradient norms, evaluation AP), so the same command writes the same bytes, and a resumed run
  writes what an uninterrupted one would have: on resume from step s, lines of later steps (written after the
  last checkpoint of a killed run) and a torn last line are removed first (atomic rewrite).
- `perf.jsonl`: `{"step", "steps_per_s", "examples_per_s", "seconds"}`: wall-clock numbers, which differ run to
  run, kept out of metrics.jsonl.
- TensorBoard: every metric and perf value as a scalar (tensorboardX, no TensorFlow); on resume the writer
  purges events of steps after the restored one.
Only process 0 writes (the other processes get a writer that does nothing).
"""
from __future__ import annotations

import json
import math
import os

from tensorboardX import SummaryWriter

from zipjax.io.atomic import atomic_write_text


def _clean(v):
  v = float(v)
  return v if math.isfinite(v) else None


def _truncate(path: str, last_step: int) -> None:
  """Keeps the complete lines of `path` whose step is <= last_step."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    text = f.read()
  keep = []
  for line in text.split("\n"):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      break  # a torn line can only be the last one
    if not isinstance(rec, dict) or int(rec.get("step", 1 << 62)) > last_step:
      break
    keep.append(line)
  new = "".join(line + "\n" for line in keep)
  if new != text:
    atomic_write_text(path, new)


class MetricsWriter:
  """Appends to metrics.jsonl / perf.jsonl and writes TensorBoard scalars.

  Attributes:
    workdir: the run folder.
    enabled: whether this process writes (process 0).
  """

  def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")
    self.perf_path = os.path.join(workdir, "perf.jsonl")
    _truncate(self.metrics_path, resume_step)
    _truncate(self.perf_path, resume_step)
    self._metrics = open(self.metrics_path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
    self._perf = open(self.perf_path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
    self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, metrics: dict, perf: dict | None = None) -> None:
    """Logs the metrics (and optional timings) of `step`; lines are flushed at once."""
    if not self.enabled:
      return
    rec = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
    self._metrics.write(json.dumps(rec, sort_keys=True, allow_nan=False) + "\n")
    self._metrics.flush()
    for k, v in metrics.items():
      if _clean(v) is not None:
        self._tb.add_scalar(k, float(v), int(step))
    if perf:
      self._perf.write(json.dumps({"step": int(step), **{k: _clean(v) for k, v in perf.items()}},
                                  sort_keys=True) + "\n")
      self._perf.flush()
      for k, v in perf.items():
        if _clean(v) is not None:
          self._tb.add_scalar(f"perf/{k}", float(v), int(step))

  def flush(self) -> None:
    if self.enabled:
      self._metrics.flush()
      self._perf.flush()
      os.fsync(self._metrics.fileno())
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self.flush()
      self._metrics.close()
      self._perf.close()
      self._tb.close()
      self.enabled = False


def read_metrics(workdir: str) -> list[dict]:
  """The records of W/metrics.jsonl (complete lines)."""
  path = os.path.join(workdir, "metrics.jsonl")
  out = []
  if not os.path.exists(path):
    return out
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError:
          break
  return out


__all__ = ["MetricsWriter", "read_metrics"]
