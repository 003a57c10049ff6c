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

from zipjax.errors import InputError
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





# ------------------------------------------------------------------------------------------------- SAM
def build_sam(models_sam, random_init: bool, seed: int, leaf_filter=None, family: str = "sam"):
  """The SAM of `config.models.sam` for `config.sam.family` ('sam' or 'sam2'): random weights of `arch` (a size
  name or a dict of SamConfig / Sam2Config fields), or the checkpoint resolved through `zipjax.weights`;
  `leaf_filter` holds kernels in a compute dtype."""
  from zipjax.sam import load_sam, model_class  # pylint: disable=import-outside-toplevel
  cls = model_class(family)
  arch = models_sam.arch
  if random_init:
    if isinstance(arch, str):
      return cls.random(arch, seed, leaf_filter=leaf_filter)
    d = dict(arch.to_dict() if hasattr(arch, "to_dict") else arch)
    return cls.random(cls.CONFIG.from_dict(d), seed, leaf_filter=leaf_filter)
  from zipjax import weights  # pylint: disable=import-outside-toplevel
  model = load_sam(weights.resolve(models_sam.checkpoint, family), leaf_filter=leaf_filter)
  if model.FAMILY != family:
    raise InputError(f"models.sam.checkpoint {models_sam.checkpoint!r} holds a {model.FAMILY!r} model but "
                     f"sam.family is {family!r}")
  return model


def sam_masks(sam, image: np.ndarray, boxes: np.ndarray, sam_cfg):
  """SAM masks for box prompts on one image.

  The image is embedded once; boxes (xyxy, image pixels) go to the decoder `sam.max_boxes` at a time (the
  last chunk padded by repeating its first box, so one shape compiles); with `sam.multimask` the mask with
  the highest predicted IoU of the K is kept. Masks: upsampled logits > `sam.mask_threshold`.

  Returns:
    (list of bool [H, W] masks, float32 [m] predicted IoU, float32 [m, 4] boxes of the masks (the prompt box
    where a mask is empty)).
  """
  m = len(boxes)
  if m == 0:
    return [], np.zeros((0,), np.float32), np.zeros((0, 4), np.float32)
  pixels, input_size, original = sam.prepare_image(image)  # [S, S, 3]
  emb = sam.image_embeddings(pixels[None])  # [1, S/16, S/16, C] (SAM 2: a dict)
  chunk = int(sam_cfg.max_boxes)
  masks, ious = [], []
  for start in range(0, m, chunk):
    bx = np.asarray(boxes[start:start + chunk], np.float32)
    n = len(bx)
    padded = np.concatenate([bx, np.repeat(bx[:1], chunk - n, 0)], 0)  # [chunk, 4]
    frame = sam.frame_boxes(padded, original)[None]  # [1, chunk, 4]
    logits, iou = sam.predict_boxes(emb, frame, multimask=bool(sam_cfg.multimask))  # [1, c, K, h, w], [1, c, K]
    best = jnp.argmax(iou[0], axis=-1)  # [c]
    low = jnp.take_along_axis(logits[0], best[:, None, None, None], axis=1)[:, 0]  # [c, h, w]
    up = sam.masks_from_logits(low, input_size, original, return_logits=True)  # [c, H, W]
    masks.append(np.asarray(up[:n] > float(sam_cfg.mask_threshold)))
    ious.append(np.asarray(jnp.take_along_axis(iou[0], best[:, None], axis=1)[:n, 0]))
  stack = np.concatenate(masks, 0)  # [m, H, W]
  mbox, valid = nms_ops.mask_to_box(jnp.asarray(stack))
  out_boxes = np.where(np.asarray(valid)[:, None], np.asarray(mbox), boxes).astype(np.float32)
  return list(stack), np.concatenate(ious).astype(np.float32), out_boxes
__all__ = ["geometric_score", "select", "build_sam", "sam_masks"]
