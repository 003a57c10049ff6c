"""zipjax: annotation-free open-vocabulary instance segmentation (the Zip method) in JAX/Flax.

Public API (re-exports only; see each module for details). The names load on first use (PEP 562), so importing
`zipjax` (and the `zipjax` command before it parses its arguments) does not import jax: a Ctrl-C during that
import is then caught by the command's own handler (exit 130, one line) instead of printing a traceback.
"""
import importlib

__version__ = "0.1.0"

from zipjax.errors import CheckpointError, InputError, ZipjaxError

_LAZY = {
    "ClipModel": "zipjax.clip",
    "load_clip": "zipjax.clip",
    "load_sam": "zipjax.sam",
    "discover": "zipjax.pipeline.discover",
    "discover_batch": "zipjax.pipeline.discover",
    "discover_instances": "zipjax.pipeline.discover",
}

__all__ = [
    "CheckpointError", "InputError", "ZipjaxError",
    "ClipModel", "load_clip",
    "load_sam",
    "discover", "discover_batch", "discover_instances",
]


def __getattr__(name):
  if name in _LAZY:
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
  try:  # a submodule (`zipjax.engine`, ...) used as an attribute of the package
    return importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
  return sorted(set(globals()) | set(__all__))
