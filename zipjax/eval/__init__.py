"""COCO evaluation (box and mask AP/AR, class-agnostic and class-aware) and pseudo-label quality reports."""
from zipjax.eval.coco import BACKENDS, DEFAULT_BACKEND, STAT_NAMES, compare, evaluate

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "STAT_NAMES", "compare", "evaluate"]
