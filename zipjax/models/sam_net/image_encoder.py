"""SAM's image encoder: a ViTDet-style ViT with windowed attention, decomposed relative positions and a neck.

Equal to `segment_anything.modeling.image_encoder.ImageEncoderViT` as built by `build_sam_vit_{b,l,h}`
(LayerNorm eps 1e-6, qkv bias, absolute and relative positions, window 14, neck to `out_chans`). Inputs and
outputs are NHWC: pixels [B, S, S, 3] (normalised, padded) -> embeddings [B, S/16, S/16, out_chans].

Attributes:
  ImageEncoderViT: the encoder.
  Block: one transformer block (windowed when `window_size > 0`, global otherwise).
  Attention: multi-head attention with decomposed relative position bias.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zipjax.models.sam_net.common import LN_EPS_ENCODER, Dtype, MLPBlock, attention, layer_norm


def rel_pos_index(q_size: int, k_size: int) -> np.ndarray:
  """[q_size, k_size] indices into a relative-position table of length 2 * max(q, k) - 1.

  `get_rel_pos` of segment_anything: coordinates are scaled when q and k differ in size, then truncated.
  """
  q_coords = np.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
  k_coords = np.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
  rel = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
  return rel.astype(np.int64)


def decomposed_rel_pos_bias(q: jax.Array, rel_pos_h: jax.Array, rel_pos_w: jax.Array,
                            size: tuple[int, int]) -> jax.Array:
  """Decomposed relative-position logits bias (MViTv2), for queries and keys on the same grid.

  Args:
    q: unscaled queries [B, H*W, N, D].
    rel_pos_h: table [2H-1, D].
    rel_pos_w: table [2W-1, D].
    size: (H, W).

  Returns:
    bias [B, N, H*W, H*W] to add to the attention logits.
  """
  h, w = size
  if rel_pos_h.shape[0] != 2 * h - 1 or rel_pos_w.shape[0] != 2 * w - 1:
    raise ValueError(f"relative position tables {rel_pos_h.shape[0]}x{rel_pos_w.shape[0]} do not fit a "
                     f"{h}x{w} grid (the encoder runs only at its configured image size)")
  r_h = rel_pos_h[rel_pos_index(h, h)]  # [H, H, D]
  r_w = rel_pos_w[rel_pos_index(w, w)]  # [W, W, D]
  b, _, n, d = q.shape
  r_q = q.reshape(b, h, w, n, d)  # [B, H, W, N, D]
  rel_h = jnp.einsum("bhwnc,hkc->bnhwk", r_q, r_h.astype(q.dtype))  # [B, N, H, W, kH]
  rel_w = jnp.einsum("bhwnc,wkc->bnhwk", r_q, r_w.astype(q.dtype))  # [B, N, H, W, kW]
  bias = rel_h[..., :, None] + rel_w[..., None, :]  # [B, N, H, W, kH, kW]
  return bias.reshape(b, n, h * w, h * w)  # [B, N, HW, HW]


def rel_pos_as_qk(q: jax.Array, k: jax.Array, v: jax.Array, rel_pos_h: jax.Array, rel_pos_w: jax.Array,
                  size: tuple[int, int], scale: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Folds the decomposed relative-position bias into the q.k product, so no [T, S] bias array exists.

  bias[t, s] = rel_h[t, row(s)] + rel_w[t, col(s)], hence
  q'_t = [scale * q_t, rel_h[t, :], rel_w[t, :]] and k'_s = [k_s, onehot(row(s)), onehot(col(s))] give
  q'_t . k'_s = scale * q_t . k_s + bias[t, s]. Values are zero-padded to the same head dim (fused kernels
  want one head dim); both widths are padded to a multiple of 8. Used by the fused-attention path, where it
  lets flash-style kernels run without materialising the bias.

  Args:
    q, k, v: [B, H*W, N, D] (q unscaled).
    rel_pos_h, rel_pos_w: tables [2H-1, D], [2W-1, D].
    size: (H, W).
    scale: q.k multiplier.

  Returns:
    q' [B, HW, N, D'], k' [B, HW, N, D'], v' [B, HW, N, D'] with D' >= D + H + W; attend with scale 1 and
    keep the first D output channels.
  """
  h, w = size
  b, t, n, d = q.shape
  r_h = rel_pos_h[rel_pos_index(h, h)].astype(q.dtype)  # [H, kH, D]
  r_w = rel_pos_w[rel_pos_index(w, w)].astype(q.dtype)  # [W, kW, D]
  r_q = q.reshape(b, h, w, n, d)  # [B, H, W, N, D]
  rel_h = jnp.einsum("bhwnc,hkc->bhwnk", r_q, r_h).reshape(b, t, n, h)  # [B, HW, N, kH]
  rel_w = jnp.einsum("bhwnc,wkc->bhwnk", r_q, r_w).reshape(b, t, n, w)  # [B, HW, N, kW]
  rows = np.repeat(np.eye(h, dtype=np.float32), w, axis=0)  # [HW, kH]: key s is in row s // W
  cols = np.tile(np.eye(w, dtype=np.float32), (h, 1))  # [HW, kW]: key s is in column s % W
  onehot = jnp.asarray(np.concatenate([rows, cols], axis=1), k.dtype)  # [HW, kH + kW]
  extra = (-(d + h + w)) % 8
  q2 = jnp.concatenate([q * jnp.asarray(scale, q.dtype), rel_h, rel_w, jnp.zeros((b, t, n, extra), q.dtype)],
                       axis=-1)  # [B, HW, N, D']
  k2 = jnp.concatenate([k, jnp.broadcast_to(onehot[None, :, None, :], (b, t, n, h + w)),
                        jnp.zeros((b, t, n, extra), k.dtype)], axis=-1)  # [B, HW, N, D']
  v2 = jnp.concatenate([v, jnp.zeros((b, t, n, h + w + extra), v.dtype)], axis=-1)  # [B, HW, N, D']
  return q2, k2, v2


class Attention(nn.Module):
  """Multi-head self-attention on a [B, H, W, C] grid with decomposed relative positions.

  Attributes:
    num_heads: heads.
    input_size: (H, W) of the grid the relative tables are sized for.
    dtype: compute dtype.
    fused: use `jax.nn.dot_product_attention`, with the relative positions folded into q and k
      (`rel_pos_as_qk`) instead of a materialised bias.
  """
  num_heads: int
  input_size: tuple[int, int]
  dtype: Dtype = jnp.float32
  fused: bool | str = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, dim = x.shape
    head_dim = dim // self.num_heads
    rel_pos_h = self.param("rel_pos_h", nn.initializers.zeros, (2 * self.input_size[0] - 1, head_dim),
                           jnp.float32)
    rel_pos_w = self.param("rel_pos_w", nn.initializers.zeros, (2 * self.input_size[1] - 1, head_dim),
                           jnp.float32)
    qkv = nn.Dense(3 * dim, dtype=self.dtype, name="qkv")(x)  # [B, H, W, 3C]
    qkv = qkv.reshape(b, h * w, 3, self.num_heads, head_dim)  # [B, HW, 3, N, D]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, HW, N, D] each
    if self.fused:
      q2, k2, v2 = rel_pos_as_qk(q, k, v, rel_pos_h, rel_pos_w, (h, w), head_dim**-0.5)  # [B, HW, N, D']
      out = attention(q2, k2, v2, 1.0, fused=self.fused)[..., :head_dim]  # [B, HW, N, D]
    else:
      bias = decomposed_rel_pos_bias(q, rel_pos_h, rel_pos_w, (h, w))  # [B, N, HW, HW]
      out = attention(q, k, v, head_dim**-0.5, bias=bias)  # [B, HW, N, D]
    out = out.reshape(b, h, w, dim)  # [B, H, W, C]
    return nn.Dense(dim, dtype=self.dtype, name="proj")(out)


def window_partition(x: jax.Array, window: int) -> tuple[jax.Array, tuple[int, int]]:
  """[B, H, W, C] -> windows [B * nH * nW, window, window, C], zero-padding H and W up to multiples."""
  b, h, w, c = x.shape
  pad_h = (window - h % window) % window
  pad_w = (window - w % window) % window
  if pad_h or pad_w:
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
  hp, wp = h + pad_h, w + pad_w
  x = x.reshape(b, hp // window, window, wp // window, window, c)  # [B, nH, win, nW, win, C]
  x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, nH, nW, win, win, C]
  return x.reshape(-1, window, window, c), (hp, wp)  # [B*nH*nW, win, win, C]


def window_unpartition(windows: jax.Array, window: int, pad_hw: tuple[int, int],
                       hw: tuple[int, int]) -> jax.Array:
  """Inverse of `window_partition`: windows -> [B, H, W, C] (padding removed)."""
  hp, wp = pad_hw
  h, w = hw
  c = windows.shape[-1]
  b = windows.shape[0] // ((hp // window) * (wp // window))
  x = windows.reshape(b, hp // window, wp // window, window, window, c)  # [B, nH, nW, win, win, C]
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)  # [B, Hp, Wp, C]
  return x[:, :h, :w, :]


class Block(nn.Module):
  """Pre-norm transformer block; windowed attention when `window_size > 0`, else global.

  Attributes:
    num_heads: heads.
    mlp_ratio: MLP hidden width / embed dim.
    window_size: window side (0 = global attention).
    input_size: (H, W) of the token grid.
    dtype: compute dtype.
    fused: fused attention (True or a `jax.nn.dot_product_attention` implementation name).
  """
  num_heads: int
  mlp_ratio: float
  window_size: int
  input_size: tuple[int, int]
  dtype: Dtype = jnp.float32
  fused: bool | str = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    shortcut = x
    x = layer_norm(LN_EPS_ENCODER, self.dtype, "norm1")(x)
    attn_size = (self.window_size, self.window_size) if self.window_size > 0 else self.input_size
    attn = Attention(self.num_heads, attn_size, dtype=self.dtype, fused=self.fused, name="attn")
    if self.window_size > 0:
      h, w = x.shape[1], x.shape[2]
      x, pad_hw = window_partition(x, self.window_size)  # [B*nW, win, win, C]
      x = attn(x)
      x = window_unpartition(x, self.window_size, pad_hw, (h, w))  # [B, H, W, C]
    else:
      x = attn(x)
    x = shortcut + x
    y = layer_norm(LN_EPS_ENCODER, self.dtype, "norm2")(x)
    return x + MLPBlock(int(dim * self.mlp_ratio), "gelu", dtype=self.dtype, name="mlp")(y)


class PatchEmbed(nn.Module):
  """Non-overlapping patch projection (Conv2d with kernel = stride = patch).

  Attributes:
    patch_size: patch side.
    embed_dim: output channels.
    dtype: compute dtype.
  """
  patch_size: int
  embed_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.patch_size
    return nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                   name="proj")(x)


class ImageEncoderViT(nn.Module):
  """SAM image encoder: pixels [B, S, S, 3] -> embeddings [B, S/p, S/p, out_chans] (float32).

  Attributes:
    img_size: S, the (square, padded) input side.
    patch_size: p.
    embed_dim: ViT width.
    depth: number of blocks.
    num_heads: attention heads.
    global_attn_indexes: blocks with global attention; all others use windows.
    window_size: window side of the windowed blocks.
    mlp_ratio: MLP hidden width / embed dim.
    out_chans: neck output channels.
    dtype: compute dtype (parameters stay float32).
    fused_attention: use `jax.nn.dot_product_attention` (True: JAX's default implementation; or 'xla' /
      'cudnn').
    remat: rematerialise each block in the backward pass (`nn.remat`).
  """
  img_size: int = 1024
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  global_attn_indexes: Sequence[int] = (2, 5, 8, 11)
  window_size: int = 14
  mlp_ratio: float = 4.0
  out_chans: int = 256
  dtype: Dtype = jnp.float32
  fused_attention: bool | str = False
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.shape[1:] != (self.img_size, self.img_size, 3):
      raise ValueError(f"image encoder expects [B, {self.img_size}, {self.img_size}, 3], got {x.shape}")
    grid = self.img_size // self.patch_size
    x = PatchEmbed(self.patch_size, self.embed_dim, dtype=self.dtype, name="patch_embed")(x)  # [B, g, g, C]
    pos_embed = self.param("pos_embed", nn.initializers.zeros, (1, grid, grid, self.embed_dim), jnp.float32)
    x = x + pos_embed.astype(x.dtype)
    block_cls = nn.remat(Block) if self.remat else Block
    for i in range(self.depth):
      window = 0 if i in tuple(self.global_attn_indexes) else self.window_size
      x = block_cls(self.num_heads, self.mlp_ratio, window, (grid, grid), dtype=self.dtype,
                    fused=self.fused_attention, name=f"blocks_{i}")(x)
    x = nn.Conv(self.out_chans, (1, 1), use_bias=False, dtype=self.dtype, name="neck_0")(x)
    x = layer_norm(LN_EPS_ENCODER, self.dtype, "neck_1")(x)
    x = nn.Conv(self.out_chans, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                name="neck_2")(x)
    x = layer_norm(LN_EPS_ENCODER, self.dtype, "neck_3")(x)
    return x.astype(jnp.float32)  # [B, g, g, out_chans]
