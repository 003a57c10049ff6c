"""PyTorch checkpoint -> Flax variables converters, one declared key table per model family.

`CONVERTERS[family](src, dst)` converts a PyTorch file to a converted directory.
"""
from __future__ import annotations

import importlib

# family -> "module:function" (imported lazily so that families stay independent)
CONVERTERS = {
    "clip": "zipjax.convert.clip:convert_file",
    "sam": "zipjax.convert.sam:convert_file",
    "sam2": "zipjax.convert.sam2:convert_file",
}


def get_converter(family: str):
  if family not in CONVERTERS:
    raise KeyError(f"unknown model family {family!r}; known: {', '.join(sorted(CONVERTERS))}")
  mod, fn = CONVERTERS[family].split(":")
  return getattr(importlib.import_module(mod), fn)
