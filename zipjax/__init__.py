"""zipjax: annotation-free open-vocabulary instance segmentation (the Zip method) in JAX/Flax.

Public API (re-exports only; see each module for details).
"""
__version__ = "0.1.0"

from zipjax.errors import CheckpointError, InputError, ZipjaxError
from zipjax.clip import ClipModel, load_clip
from zipjax.sam import load_sam
from zipjax.pipeline.discover import discover, discover_batch, discover_instances

__all__ = [
    "CheckpointError", "InputError", "ZipjaxError",
    "ClipModel", "load_clip",
    "load_sam",
    "discover", "discover_batch", "discover_instances",
]
