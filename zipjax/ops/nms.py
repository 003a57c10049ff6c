"""Boxes from masks, mask / box IoU and greedy NMS with a static maximum count, all jitted.

Boxes are `(x0, y0, x1, y1)` in cell (pixel) units with an exclusive max (`x1 = last column + 1`), the COCO
pixel-boundary convention and the convention of `components.regionprops` (which orders its bboxes
`(min_row, min_col, max_row, max_col)` as skimage does).

NMS is the classical greedy algorithm: visit candidates by decreasing score (ties: lower index first), keep a
candidate when no kept one overlaps it with IoU strictly above the threshold. It takes a precomputed IoU
matrix (`nms`) so that box and mask NMS (`box_nms`, `mask_nms`) share it, and returns the kept indices in
visiting order padded to `max_output` with a `valid` mask.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("inclusive_max",))
def mask_to_box(masks: jax.Array, inclusive_max: bool = False) -> tuple[jax.Array, jax.Array]:
  """Tight boxes of masks.

  Args:
    masks: bool [..., H, W].
    inclusive_max: False: x1/y1 are one past the last column/row; True: the last column/row itself (as the
      released code's `mask2bbox`).

  Returns:
    (float32 boxes [..., 4] as (x0, y0, x1, y1), bool valid [...] = mask not empty; empty masks get zeros).
  """
  masks = masks.astype(bool)
  h, w = masks.shape[-2:]
  any_row = jnp.any(masks, axis=-1)  # [..., H]
  any_col = jnp.any(masks, axis=-2)  # [..., W]
  rows = jnp.arange(h)
  cols = jnp.arange(w)
  y0 = jnp.min(jnp.where(any_row, rows, h), axis=-1)
  y1 = jnp.max(jnp.where(any_row, rows, -1), axis=-1)
  x0 = jnp.min(jnp.where(any_col, cols, w), axis=-1)
  x1 = jnp.max(jnp.where(any_col, cols, -1), axis=-1)
  end = 0 if inclusive_max else 1
  valid = jnp.any(any_row, axis=-1)
  box = jnp.stack([x0, y0, x1 + end, y1 + end], axis=-1).astype(jnp.float32)  # [..., 4]
  return jnp.where(valid[..., None], box, 0.0), valid


@jax.jit
def mask_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """IoU of every mask of `a` [N, H, W] with every mask of `b` [M, H, W] -> float32 [N, M] (0 if both empty)."""
  fa = a.reshape(a.shape[0], -1).astype(jnp.float32)  # [N, H*W]
  fb = b.reshape(b.shape[0], -1).astype(jnp.float32)  # [M, H*W]
  inter = jnp.dot(fa, fb.T, precision=jax.lax.Precision.HIGHEST)  # [N, M]
  union = jnp.sum(fa, -1)[:, None] + jnp.sum(fb, -1)[None, :] - inter
  return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 0.0)


@jax.jit
def box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """IoU of boxes `a` [N, 4] and `b` [M, 4] (x0, y0, x1, y1) -> float32 [N, M] (0 where the union is empty)."""
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  area_a = jnp.clip(a[:, 2] - a[:, 0], 0) * jnp.clip(a[:, 3] - a[:, 1], 0)  # [N]
  area_b = jnp.clip(b[:, 2] - b[:, 0], 0) * jnp.clip(b[:, 3] - b[:, 1], 0)  # [M]
  lt = jnp.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
  rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])  # [N, M, 2]
  wh = jnp.clip(rb - lt, 0)  # [N, M, 2]
  inter = wh[..., 0] * wh[..., 1]
  union = area_a[:, None] + area_b[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=("max_output",))
def nms(iou: jax.Array, scores: jax.Array, valid: jax.Array | None = None, *, threshold: float | jax.Array,
        max_output: int) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS on a precomputed IoU matrix.

  Args:
    iou: float32 [N, N] pairwise IoU.
    scores: float32 [N].
    valid: optional bool [N]; invalid candidates are never kept and suppress nothing.
    threshold: suppress a candidate whose IoU with a kept one is > threshold.
    max_output: static length of the output.

  Returns:
    (int32 [max_output] kept indices by decreasing score, padded with 0; bool [max_output] valid).
  """
  n = scores.shape[0]
  if valid is None:
    valid = jnp.ones((n,), bool)
  order = jnp.argsort(-scores.astype(jnp.float32), stable=True)  # [N]
  iou_o = iou[order][:, order]  # [N, N] in visiting order
  valid_o = valid[order]
  over = iou_o > threshold  # [N, N]

  def body(i, keep):
    suppressed = jnp.any(keep & over[i])
    return keep.at[i].set(valid_o[i] & jnp.logical_not(suppressed))

  keep = jax.lax.fori_loop(0, n, body, jnp.zeros((n,), bool))  # [N] in visiting order
  pos = jnp.cumsum(keep.astype(jnp.int32)) - 1  # output slot of each kept candidate
  slot = jnp.where(keep & (pos < max_output), pos, max_output)
  out = jnp.zeros((max_output,), jnp.int32).at[slot].set(order.astype(jnp.int32), mode="drop")
  count = jnp.sum(keep.astype(jnp.int32))
  return out, jnp.arange(max_output) < count


@functools.partial(jax.jit, static_argnames=("max_output",))
def box_nms(boxes: jax.Array, scores: jax.Array, valid: jax.Array | None = None, *,
            threshold: float | jax.Array, max_output: int) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS of boxes [N, 4] (x0, y0, x1, y1) by box IoU; see `nms`."""
  return nms(box_iou(boxes, boxes), scores, valid, threshold=threshold, max_output=max_output)


@functools.partial(jax.jit, static_argnames=("max_output",))
def mask_nms(masks: jax.Array, scores: jax.Array, valid: jax.Array | None = None, *,
             threshold: float | jax.Array, max_output: int) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS of masks [N, H, W] by mask IoU; see `nms`."""
  return nms(mask_iou(masks, masks), scores, valid, threshold=threshold, max_output=max_output)
