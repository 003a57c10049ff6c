"""Segment Anything (SAM v1) in Flax: image encoder, prompt encoder, two-way transformer, mask decoder."""
from zipjax.models.sam_net.model import SAM_SIZES, Sam, SamConfig

__all__ = ["SAM_SIZES", "Sam", "SamConfig"]
