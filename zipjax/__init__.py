"""zipjax: annotation-free open-vocabulary instance segmentation (the Zip method) in JAX/Flax.

Public API (re-exports only; see each module for details).
"""
__version__ = "0.1.0"

from zipjax.errors import CheckpointError, InputError, ZipjaxError
from zipjax.sam import load_sam


__all__ = [
    "CheckpointError", "InputError", "ZipjaxError",
    "load_sam",

]
