"""Nested variable dicts <-> flat {'a/b/c': leaf} dicts (the paths the key tables, filters and files use)."""
from __future__ import annotations

from typing import Mapping

import numpy as np


def flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
  """Nested dict -> {'a/b/c': leaf}."""
  out = {}
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(flatten(v, path))
    else:
      out[path] = v
  return out


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
  """{'a/b/c': leaf} -> nested dict."""
  tree: dict = {}
  for path, v in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


__all__ = ["flatten", "unflatten"]
