"""A small stand-in for `zipjax.engine.Engine` with the same interface, for fast tests of the job around it.

Instances are derived from the image content only (so they do not depend on batch-mates, buckets or process
count, like the real engine's): for class c, the mask is `image[..., c % 3] > 127 + 16 * (c // 3)`, its box is
the mask's bounding box and its score the masked pixels' mean of that channel / 255. An image whose pixel (0, 0)
is (1, 2, 3) fails inside the step (`{"error": ...}`).
"""
from __future__ import annotations

import dataclasses
import threading

import numpy as np


@dataclasses.dataclass
class FakeSpec:
  num_buckets: int = 2


@dataclasses.dataclass
class FakeItem:
  bucket: int
  image: np.ndarray


def fake_prepare(image: np.ndarray, spec: FakeSpec) -> FakeItem:
  h, w = image.shape[:2]
  bucket = (0 if h >= w else 1) % spec.num_buckets
  return FakeItem(bucket, image)


def expected_instances(image: np.ndarray, n_classes: int) -> list[dict]:
  out = []
  for c in range(n_classes):
    ch = image[..., c % 3].astype(np.int32)
    mask = ch > 127 + 16 * (c // 3)
    if not mask.any():
      continue
    ys, xs = np.nonzero(mask)
    out.append({"category": c, "score": float(ch[mask].mean() / 255.0),
                "box": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)], "mask": mask})
  out.sort(key=lambda d: -d["score"])
  return out


class FakeEngine:
  """Attributes: as zipjax.engine.Engine's (spec, local_batch, num_buckets, timings), plus `calls`."""

  def __init__(self, config=None, random_init=False, local_batch: int = 2, num_buckets: int = 2,
               fail_after_steps: int | None = None):
    self.spec = FakeSpec(num_buckets)
    self.per_device_batch = local_batch
    self.local_batch = local_batch
    self.num_buckets = num_buckets
    self.timings = {"step": 0.0}
    self.names: list[str] = []
    self.calls: list[tuple[int, int]] = []
    self.fail_after_steps = fail_after_steps
    self._lock = threading.Lock()

  def set_classes(self, names):
    self.names = list(names)

  def run_local(self, bucket, items):
    assert len(items) <= self.local_batch
    if self.fail_after_steps is not None and len(self.calls) >= self.fail_after_steps:
      raise KeyboardInterrupt("fake engine stops")
    self.calls.append((bucket, len(items)))
    outs = []
    for it in items:
      assert it.bucket == bucket
      if tuple(it.image[0, 0]) == (1, 2, 3):
        outs.append({"error": "fake failure inside the step"})
      else:
        outs.append({"instances": expected_instances(it.image, len(self.names)), "probs": None})
    return outs

  def compiled_programs(self):
    return {"step": len({b for b, _ in self.calls})}


def factory(**kw):
  """`make_engine` for `run_label`; the engine made last is in `factory.last`."""
  def make(config, random_init):
    eng = FakeEngine(config, random_init, **kw)
    make.engines.append(eng)
    return eng, lambda image: fake_prepare(image, eng.spec)
  make.engines = []
  return make


class ThreadGroup:
  """`n` simulated processes (threads) sharing allgather / barrier."""

  def __init__(self, n: int):
    self.n = n
    self.slots = [None] * n
    self.bar = threading.Barrier(n, timeout=120)


class ThreadComm:
  """`zipjax.jobs.comm.Comm` for one thread of a ThreadGroup."""

  def __init__(self, group: ThreadGroup, index: int):
    self.group, self.index, self.count = group, index, group.n

  @property
  def is_main(self):
    return self.index == 0

  def allgather(self, x):
    self.group.slots[self.index] = np.asarray(x)
    self.group.bar.wait()
    out = np.stack(self.group.slots)
    self.group.bar.wait()
    return out

  def barrier(self, name):
    self.group.bar.wait()

  def agree(self, fn, what):
    from zipjax.jobs.comm import Comm  # pylint: disable=import-outside-toplevel
    return Comm.agree(self, fn, what)
