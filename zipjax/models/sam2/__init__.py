"""Segment Anything 2 (image mode) in Flax: Hiera trunk, FPN neck, and SAM's prompt encoder / mask decoder."""
from zipjax.models.sam2.sam2 import SAM2_SIZES, Sam2, Sam2Config

__all__ = ["SAM2_SIZES", "Sam2", "Sam2Config"]
