"""The PyTorch / NumPy references the tests compare to.

`openai-clip` and `segment-anything` import torchvision in their package `__init__`, and PyPI's torchvision
does not import beside the CPU torch build used here, so their model modules are loaded without running the
package `__init__`. The same for `sam2` (its `__init__` starts hydra; scripts/_env.sh installs it, iopath and
portalocker without dependencies).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def _bare_package(name: str):
  """Registers package `name` in sys.modules without executing its __init__.py."""
  if name in sys.modules and getattr(sys.modules[name], "__zipjax_bare__", False):
    return sys.modules[name]
  spec = importlib.util.find_spec(name)
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(f"reference package {name!r} is not installed (pip install 'zipjax[test]')")
  pkg = types.ModuleType(name)
  pkg.__path__ = list(spec.submodule_search_locations)
  pkg.__zipjax_bare__ = True
  sys.modules[name] = pkg
  return pkg


def clip_modules():
  """-> (clip.model, clip.simple_tokenizer) from the openai-clip package."""
  _bare_package("clip")
  return importlib.import_module("clip.model"), importlib.import_module("clip.simple_tokenizer")


def sam_modules():
  """-> (segment_anything.modeling, segment_anything.build_sam) from the segment-anything package."""
  _bare_package("segment_anything")
  return (importlib.import_module("segment_anything.modeling"),
          importlib.import_module("segment_anything.build_sam"))


def sam2_modules() -> dict:
  """SAM 2's model modules from the `sam2` package, without its `__init__` (which starts hydra) and without
  `sam2.utils.transforms` (torchvision): name -> module for 'hieradet', 'image_encoder', 'position_encoding',
  'memory_attention', 'memory_encoder', 'transformer', 'sam2_base'."""
  _bare_package("sam2")
  names = {"hieradet": "sam2.modeling.backbones.hieradet", "image_encoder": "sam2.modeling.backbones.image_encoder",
           "position_encoding": "sam2.modeling.position_encoding", "memory_attention": "sam2.modeling.memory_attention",
           "memory_encoder": "sam2.modeling.memory_encoder", "transformer": "sam2.modeling.sam.transformer",
           "sam2_base": "sam2.modeling.sam2_base", "sam2_utils": "sam2.modeling.sam2_utils"}
  return {k: importlib.import_module(v) for k, v in names.items()}
