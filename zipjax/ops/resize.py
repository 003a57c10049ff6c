"""Resizes that reproduce PyTorch's `F.interpolate` exactly (not `jax.image.resize`'s kernels).

Interpolation is written as two small matrices built on the host for the static sizes, applied with einsum,
so the result is exact, differentiable and cheap for the sizes Zip uses (positional embeddings, similarity
maps).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Two-tap form of torch bilinear interpolation (align_corners=False): (i0, i1, w0, w1), each [out].

  Not cached: host code calls it for per-image sizes (a cache would grow with the number of sizes).
  """
  # float32 arithmetic, as ATen's area_pixel_compute_source_index for float inputs
  scale = np.float32(in_size) / np.float32(out_size)
  dst = np.arange(out_size, dtype=np.float32)
  src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
  i0 = np.minimum(src.astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = (src - i0.astype(np.float32)).astype(np.float32)
  w0 = (np.float32(1.0) - w1).astype(np.float32)
  return i0, i1, w0, w1


def bilinear_rows(in_size: int, out_size: int, rows=None) -> np.ndarray:
  """Rows `rows` (default all) of the [out, in] bilinear matrix, float32, without caching."""
  i0, i1, w0, w1 = bilinear_taps(in_size, out_size)
  if rows is not None:
    i0, i1, w0, w1 = i0[rows], i1[rows], w0[rows], w1[rows]
  m = np.zeros((len(i0), in_size), np.float32)
  r = np.arange(len(i0))
  np.add.at(m, (r, i0), w0)
  np.add.at(m, (r, i1), w1)
  return m


@functools.lru_cache(maxsize=256)
def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of torch bilinear interpolation, align_corners=False, no antialias (cached: for the
  few static sizes of jitted code)."""
  return bilinear_rows(in_size, out_size)


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear resize of the two spatial axes of `x` [..., H, W, C] to `size` (torch align_corners=False)."""
  h, w = x.shape[-3], x.shape[-2]
  out_h, out_w = size
  if (h, w) == (out_h, out_w):
    return x
  my = jnp.asarray(bilinear_matrix(h, out_h))  # [out_h, h]
  mx = jnp.asarray(bilinear_matrix(w, out_w))  # [out_w, w]
  y = jnp.einsum("oh,...hwc->...owc", my, x, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("pw,...owc->...opc", mx, y, precision=jax.lax.Precision.HIGHEST)


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of torch bicubic interpolation (`F.interpolate(mode='bicubic')`, align_corners=False,
  no antialias): Keys' cubic convolution with A = -0.75 on the four taps floor(src) - 1 .. floor(src) + 2,
  source index `scale * (dst + 0.5) - 0.5` (not clamped, as ATen's cubic path), taps clamped to the edge
  (ATen's `upsample_get_value_bounded`). Cached: for the few static sizes of jitted code."""
  a = -0.75
  scale = np.float32(in_size) / np.float32(out_size)
  src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
  i0 = np.floor(src).astype(np.int64)
  t = (src - i0.astype(np.float32)).astype(np.float64)

  def conv1(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def conv2(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  coeffs = (conv2(t + 1.0), conv1(t), conv1(1.0 - t), conv2(2.0 - t))
  m = np.zeros((out_size, in_size), np.float64)
  r = np.arange(out_size)
  for k, c in enumerate(coeffs):
    np.add.at(m, (r, np.clip(i0 - 1 + k, 0, in_size - 1)), c)
  return m.astype(np.float32)


def resize_bicubic(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bicubic resize of the two spatial axes of `x` [..., H, W, C] to `size` (torch align_corners=False)."""
  h, w = x.shape[-3], x.shape[-2]
  my = jnp.asarray(bicubic_matrix(h, size[0]))  # [out_h, h]
  mx = jnp.asarray(bicubic_matrix(w, size[1]))  # [out_w, w]
  y = jnp.einsum("oh,...hwc->...owc", my, x, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("pw,...owc->...opc", mx, y, precision=jax.lax.Precision.HIGHEST)


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source indices of PyTorch's legacy 'nearest' mode: floor(dst * in / out)."""
  scale = np.float32(in_size) / np.float32(out_size)
  idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(idx, in_size - 1)
