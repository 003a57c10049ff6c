"""Box conversions and overlaps for the set loss (jnp, differentiable, broadcasting over leading axes).

Boxes are `cxcywh` (centre, width, height) or `xyxy` (corners), in any unit as long as both sides agree.
`pairwise_*` functions compare every box of [..., N, 4] with every box of [..., M, 4] -> [..., N, M];
`elementwise_*` compare aligned boxes [..., 4] with [..., 4] -> [...]. Divisions are guarded by `EPS` so
degenerate (zero-area) boxes give finite values and finite gradients.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-7


def cxcywh_to_xyxy(b: jax.Array) -> jax.Array:
  """[..., 4] (cx, cy, w, h) -> [..., 4] (x0, y0, x1, y1)."""
  cx, cy, w, h = jnp.moveaxis(b, -1, 0)
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def xyxy_to_cxcywh(b: jax.Array) -> jax.Array:
  """[..., 4] (x0, y0, x1, y1) -> [..., 4] (cx, cy, w, h)."""
  x0, y0, x1, y1 = jnp.moveaxis(b, -1, 0)
  return jnp.stack([0.5 * (x0 + x1), 0.5 * (y0 + y1), x1 - x0, y1 - y0], axis=-1)


def area(b: jax.Array) -> jax.Array:
  """xyxy [..., 4] -> [...] (negative sides count as 0)."""
  return jnp.maximum(b[..., 2] - b[..., 0], 0.0) * jnp.maximum(b[..., 3] - b[..., 1], 0.0)


def _iou_parts(b1: jax.Array, b2: jax.Array):
  """Aligned (broadcast) xyxy boxes -> intersection, union, enclosing-box area."""
  lt = jnp.maximum(b1[..., :2], b2[..., :2])
  rb = jnp.minimum(b1[..., 2:], b2[..., 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = area(b1) + area(b2) - inter
  elt = jnp.minimum(b1[..., :2], b2[..., :2])
  erb = jnp.maximum(b1[..., 2:], b2[..., 2:])
  ewh = jnp.maximum(erb - elt, 0.0)
  return inter, union, ewh[..., 0] * ewh[..., 1]


def elementwise_iou(b1: jax.Array, b2: jax.Array) -> jax.Array:
  """IoU of aligned xyxy boxes [..., 4], [..., 4] -> [...]."""
  inter, union, _ = _iou_parts(b1, b2)
  return inter / (union + EPS)


def elementwise_giou(b1: jax.Array, b2: jax.Array) -> jax.Array:
  """Generalised IoU (Rezatofighi et al. 2019) of aligned xyxy boxes -> [...] in [-1, 1]:
  IoU - (enclosing area - union) / enclosing area."""
  inter, union, enclosing = _iou_parts(b1, b2)
  return inter / (union + EPS) - (enclosing - union) / (enclosing + EPS)


def pairwise_iou(b1: jax.Array, b2: jax.Array) -> jax.Array:
  """xyxy [..., N, 4] x [..., M, 4] -> IoU [..., N, M]."""
  return elementwise_iou(b1[..., :, None, :], b2[..., None, :, :])


def pairwise_giou(b1: jax.Array, b2: jax.Array) -> jax.Array:
  """xyxy [..., N, 4] x [..., M, 4] -> GIoU [..., N, M]."""
  return elementwise_giou(b1[..., :, None, :], b2[..., None, :, :])


__all__ = ["EPS", "cxcywh_to_xyxy", "xyxy_to_cxcywh", "area", "elementwise_iou", "elementwise_giou",
           "pairwise_iou", "pairwise_giou"]
