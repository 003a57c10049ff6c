"""Refinement and scoring (zip_method.md section 5): SAM box prompts, scores, per-class mask NMS, top-k.

The selection (`select`) works on one image's instances of all classes at once:
  1. instances scoring under `scoring.min_score` are dropped;
  2. with `scoring.nms`, greedy mask NMS per class (`ops.nms`, IoU strictly above `scoring.nms_threshold`
     suppresses; ties by order);
  3. the `scoring.max_per_image` best remain, by decreasing score (ties: earlier instance first).
Scores: without SAM, the image-level CLIP class probability; with SAM, the geometric mean
sqrt(clip probability * SAM predicted IoU), the IoU clipped to [0, 1].
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from zipjax.ops import nms as nms_ops


def geometric_score(clip_prob, sam_iou) -> np.ndarray:
  """sqrt(clip probability * clip(SAM IoU, 0, 1))."""
  return np.sqrt(np.asarray(clip_prob, np.float32) * np.clip(np.asarray(sam_iou, np.float32), 0.0, 1.0))


@functools.partial(jax.jit, static_argnames=("max_output",))
def _class_nms(masks, scores, valid, threshold, max_output: int):
  return nms_ops.mask_nms(masks, scores, valid, threshold=threshold, max_output=max_output)


def _pad_to(n: int) -> int:
  """Padded candidate count (powers of two from 8) so per-class NMS compiles for few shapes."""
  return max(8, 1 << (max(n, 1) - 1).bit_length())


def select(categories: np.ndarray, scores: np.ndarray, masks: list[np.ndarray], scoring) -> np.ndarray:
  """Indices of the instances to keep, by decreasing score.

  Args:
    categories: int [M] class index of each instance.
    scores: float32 [M].
    masks: M bool [H, W] masks (same image).
    scoring: `config.scoring`.

  Returns:
    int [K] indices into the instances, K <= scoring.max_per_image.
  """
  m = len(scores)
  keep = np.asarray(scores, np.float32) >= float(scoring.min_score)
  if scoring.nms and m:
    for c in np.unique(categories):
      idx = np.nonzero((categories == c) & keep)[0]
      if idx.size < 2:
        continue
      n = _pad_to(idx.size)
      stack = np.zeros((n,) + masks[0].shape, bool)  # [n, H, W]
      stack[:idx.size] = np.stack([masks[i] for i in idx])
      sc = np.zeros((n,), np.float32)
      sc[:idx.size] = scores[idx]
      valid = np.arange(n) < idx.size
      out, ok = _class_nms(jnp.asarray(stack), jnp.asarray(sc), jnp.asarray(valid),
                           jnp.float32(scoring.nms_threshold), n)
      kept = set(idx[np.asarray(out)[np.asarray(ok)]].tolist())
      keep[idx] = [i in kept for i in idx]
  cand = np.nonzero(keep)[0]
  order = cand[np.argsort(-np.asarray(scores, np.float32)[cand], kind="stable")]
  return order[:int(scoring.max_per_image)]


__all__ = ["geometric_score", "select"]
