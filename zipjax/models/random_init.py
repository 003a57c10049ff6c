"""Fast random variables for a model, from its variable shapes (no Flax `init`, which is slow for big models).

Leaves are drawn by name: kernels ~ N(0, 1/fan_in), embeddings ~ N(0, 0.02), LayerNorm/BatchNorm scales and
running variances = 1, biases and running means = 0, other arrays ~ N(0, 0.02). Good enough for smoke runs and
for tests that compare two implementations on the same random weights.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from zipjax.models.tree import unflatten


def random_variables(shapes: Mapping[str, tuple], seed: int = 0, std: Mapping[str, float] | None = None,
                     zeros: tuple[str, ...] = (), leaf_filter=None) -> dict:
  """'collection/path' -> shape  ==>  nested float32 numpy variables.

  `std` maps leaf names to the standard deviation of their normal draw (overriding the defaults above);
  leaves named in `zeros` are zero. `leaf_filter` (`zipjax.models.storage.LeafFilter`) drops or casts each leaf
  as it is drawn; every leaf is still drawn in order, so the kept ones have the values they have without it.
  """
  std = dict(std or {})
  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in sorted(shapes.items()):
    leaf = path.rsplit("/", 1)[-1]
    if leaf in zeros:
      arr = np.zeros(shape, np.float32)
    elif leaf in std:
      arr = rng.standard_normal(shape, np.float32) * np.float32(std[leaf])
    elif leaf in ("scale", "var"):
      arr = np.ones(shape, np.float32)
    elif leaf in ("bias", "mean"):
      arr = np.zeros(shape, np.float32)
    elif leaf == "kernel" and len(shape) >= 2:
      fan_in = int(np.prod(shape[:-1]))
      arr = rng.standard_normal(shape, np.float32) / np.float32(np.sqrt(fan_in))
    else:
      arr = rng.standard_normal(shape, np.float32) * np.float32(0.02)
    if leaf_filter is not None:
      arr = leaf_filter(path, arr)
      if arr is None:
        continue
    flat[path] = arr
  return unflatten(flat)
