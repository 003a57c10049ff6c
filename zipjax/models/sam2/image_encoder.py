"""SAM 2's image encoder: the Hiera trunk (hieradet) and the FPN neck, NHWC.

Equal to `sam2.modeling.backbones.hieradet.Hiera` + `sam2.modeling.backbones.image_encoder.FpnNeck` as the
sam2.1 configs build them (LayerNorm eps 1e-6, exact GELU, q-pooling by 2x2 max pooling at the first block of
stages 2..4, windowed attention except in `global_att_blocks`, a bicubic-interpolated background positional
embedding plus a tiled window positional embedding, 1x1 lateral convs and nearest top-down fusion on the
levels `fpn_top_down_levels`). The neck's sine positional encodings feed only the video memory attention and
are not computed.

Attributes:
  MultiScaleAttention: attention with optional query pooling.
  MultiScaleBlock: one Hiera block (optional dim change, q-pooling, windows).
  Hiera: the trunk -> one feature map per stage.
  FpnNeck: lateral 1x1 convs + top-down fusion -> d_model channels per level.
  ImageEncoder: trunk + neck, keeping the `len(stages) - scalp` highest-resolution levels.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from zipjax.models.sam_net.common import LN_EPS_ENCODER, Dtype, attention, layer_norm
from zipjax.models.sam_net.image_encoder import window_partition, window_unpartition
from zipjax.models.sam_net.mask_decoder import MLP
from zipjax.ops.resize import resize_bicubic


def max_pool(x: jax.Array, stride: tuple[int, int]) -> jax.Array:
  """`nn.MaxPool2d(kernel_size=stride, stride=stride)` (floor mode) on [B, H, W, C]."""
  b, h, w, c = x.shape
  sh, sw = stride
  x = x[:, :h // sh * sh, :w // sw * sw]
  return x.reshape(b, h // sh, sh, w // sw, sw, c).max(axis=(2, 4))  # [B, H/sh, W/sw, C]


class MultiScaleAttention(nn.Module):
  """Self-attention on [B, H, W, dim] -> [B, H', W', dim_out] (H' = H / q_stride with query pooling).

  Attributes:
    dim_out: output width (q, k, v width).
    num_heads: heads.
    q_stride: max-pool stride of the queries, or None.
    dtype: compute dtype.
    fused: `jax.nn.dot_product_attention` (True or an implementation name).
  """
  dim_out: int
  num_heads: int
  q_stride: tuple[int, int] | None = None
  dtype: Dtype = jnp.float32
  fused: bool | str = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, _ = x.shape
    head_dim = self.dim_out // self.num_heads
    qkv = nn.Dense(3 * self.dim_out, dtype=self.dtype, name="qkv")(x)  # [B, H, W, 3 Co]
    qkv = qkv.reshape(b, h * w, 3, self.num_heads, head_dim)  # [B, HW, 3, N, D]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, HW, N, D] each
    if self.q_stride:
      q = max_pool(q.reshape(b, h, w, self.dim_out), self.q_stride)  # [B, H', W', Co]
      h, w = q.shape[1], q.shape[2]
      q = q.reshape(b, h * w, self.num_heads, head_dim)  # [B, H'W', N, D]
    out = attention(q, k, v, head_dim**-0.5, fused=self.fused)  # [B, H'W', N, D]
    out = out.reshape(b, h, w, self.dim_out)  # [B, H', W', Co]
    return nn.Dense(self.dim_out, dtype=self.dtype, name="proj")(out)


class MultiScaleBlock(nn.Module):
  """Pre-norm Hiera block: [B, H, W, dim] -> [B, H', W', dim_out].

  Attributes:
    dim_out: output width (a `proj` Dense maps the shortcut when it differs from the input width).
    num_heads: heads.
    mlp_ratio: MLP hidden width / dim_out.
    q_stride: query pooling stride (stage change), or None.
    window_size: window side (0 = global attention).
    dtype: compute dtype.
    fused: fused attention.
  """
  dim_out: int
  num_heads: int
  mlp_ratio: float = 4.0
  q_stride: tuple[int, int] | None = None
  window_size: int = 0
  dtype: Dtype = jnp.float32
  fused: bool | str = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    shortcut = x  # [B, H, W, C]
    x = layer_norm(LN_EPS_ENCODER, self.dtype, "norm1")(x)
    if dim != self.dim_out:
      shortcut = nn.Dense(self.dim_out, dtype=self.dtype, name="proj")(x)  # [B, H, W, Co]
      if self.q_stride:
        shortcut = max_pool(shortcut, self.q_stride)  # [B, H', W', Co]
    window = self.window_size
    if window > 0:
      x, pad_hw = window_partition(x, window)  # [B*nW, win, win, C]
    x = MultiScaleAttention(self.dim_out, self.num_heads, self.q_stride, dtype=self.dtype, fused=self.fused,
                            name="attn")(x)  # [B*nW, win', win', Co] or [B, H', W', Co]
    if window > 0:
      h, w = shortcut.shape[1], shortcut.shape[2]
      if self.q_stride:  # the windows shrank with the queries
        window = window // self.q_stride[0]
        pad_hw = (h + (window - h % window) % window, w + (window - w % window) % window)
      x = window_unpartition(x, window, pad_hw, (h, w))  # [B, H', W', Co]
    x = shortcut + x
    y = layer_norm(LN_EPS_ENCODER, self.dtype, "norm2")(x)
    return x + MLP(int(self.dim_out * self.mlp_ratio), self.dim_out, 2, act="gelu", dtype=self.dtype,
                   name="mlp")(y)


class PatchEmbed(nn.Module):
  """`sam2.modeling.backbones.utils.PatchEmbed`: Conv2d 7x7, stride 4, padding 3 (submodule `proj`).

  Attributes:
    embed_dim: output channels.
    dtype: compute dtype.
  """
  embed_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Conv(self.embed_dim, (7, 7), strides=(4, 4), padding=((3, 3), (3, 3)), dtype=self.dtype,
                   name="proj")(x)


class Lateral(nn.Module):
  """One `nn.Sequential(conv=Conv2d(dim, d_model, 1))` of `FpnNeck.convs` (submodule `conv`).

  Attributes:
    features: d_model.
    dtype: compute dtype.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Conv(self.features, (1, 1), dtype=self.dtype, name="conv")(x)


class Hiera(nn.Module):
  """Hiera trunk: pixels [B, S, S, 3] -> [stage 1 [B, S/4, S/4, C], ..., stage 4 [B, S/32, S/32, 8C]].

  Attributes:
    embed_dim: width of stage 1 (C).
    num_heads: heads of stage 1.
    stages: blocks per stage.
    global_att_blocks: blocks with global attention.
    window_spec: window side per stage (the first block of a stage keeps the previous stage's window).
    window_pos_embed_bkg_spatial_size: (h, w) of the background positional embedding (interpolated).
    q_pool: number of stage changes with query pooling.
    q_stride: pooling stride.
    dim_mul, head_mul: width / heads multipliers at a stage change.
    mlp_ratio: MLP hidden width / width.
    dtype: compute dtype.
    fused_attention: fused attention.
    remat: rematerialise each block in the backward pass.
  """
  embed_dim: int = 96
  num_heads: int = 1
  stages: Sequence[int] = (2, 3, 16, 3)
  global_att_blocks: Sequence[int] = (12, 16, 20)
  window_spec: Sequence[int] = (8, 4, 14, 7)
  window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
  q_pool: int = 3
  q_stride: tuple[int, int] = (2, 2)
  dim_mul: float = 2.0
  head_mul: float = 2.0
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  fused_attention: bool | str = False
  remat: bool = False

  def block_specs(self) -> list[tuple[int, int, tuple[int, int] | None, int]]:
    """(dim_out, num_heads, q_stride, window) of every block, as `Hiera.__init__` builds them."""
    stage_ends = [sum(self.stages[:i]) - 1 for i in range(1, len(self.stages) + 1)]
    q_pool_blocks = [e + 1 for e in stage_ends[:-1]][:self.q_pool]
    dim, heads, cur_stage, specs = self.embed_dim, self.num_heads, 1, []
    for i in range(sum(self.stages)):
      window = 0 if i in tuple(self.global_att_blocks) else self.window_spec[cur_stage - 1]
      if i - 1 in stage_ends:
        dim, heads, cur_stage = int(dim * self.dim_mul), int(heads * self.head_mul), cur_stage + 1
      specs.append((dim, heads, tuple(self.q_stride) if i in q_pool_blocks else None, window))
    return specs

  def pos_embed_at(self, pos_embed: jax.Array, pos_embed_window: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """`Hiera._get_pos_embed`: bicubic background [1, h0, w0, C] -> [1, H, W, C] plus the tiled window one."""
    h, w = hw
    win_h, win_w = pos_embed_window.shape[1], pos_embed_window.shape[2]
    if h % win_h or w % win_w:
      raise ValueError(f"the {h}x{w} token grid is not a multiple of the {win_h}x{win_w} window positional "
                       f"embedding (image size must be a multiple of {4 * win_h})")
    pe = resize_bicubic(pos_embed, (h, w))  # [1, H, W, C]
    return pe + jnp.tile(pos_embed_window, (1, h // win_h, w // win_w, 1))  # [1, H, W, C]

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    x = PatchEmbed(self.embed_dim, dtype=self.dtype, name="patch_embed")(x)  # [B, S/4, S/4, C]
    bh, bw = self.window_pos_embed_bkg_spatial_size
    pos_embed = self.param("pos_embed", nn.initializers.zeros, (1, bh, bw, self.embed_dim), jnp.float32)
    w0 = self.window_spec[0]
    pos_embed_window = self.param("pos_embed_window", nn.initializers.zeros, (1, w0, w0, self.embed_dim),
                                  jnp.float32)
    x = x + self.pos_embed_at(pos_embed, pos_embed_window, (x.shape[1], x.shape[2])).astype(x.dtype)
    stage_ends = {sum(self.stages[:i]) - 1 for i in range(1, len(self.stages) + 1)}
    block_cls = nn.remat(MultiScaleBlock) if self.remat else MultiScaleBlock
    outputs = []
    for i, (dim_out, heads, q_stride, window) in enumerate(self.block_specs()):
      x = block_cls(dim_out, heads, self.mlp_ratio, q_stride, window, dtype=self.dtype,
                    fused=self.fused_attention, name=f"blocks_{i}")(x)
      if i in stage_ends:
        outputs.append(x)
    return outputs


class FpnNeck(nn.Module):
  """Lateral 1x1 convs to `d_model` and nearest x2 top-down fusion on `fpn_top_down_levels`.

  `convs_j` is the lateral conv of level n - j (n = len(levels) - 1: `convs_0` takes the lowest resolution),
  as in `FpnNeck.forward`.

  Attributes:
    d_model: output channels (256).
    fpn_top_down_levels: levels (0 = highest resolution) that add the upsampled coarser level.
    dtype: compute dtype.
  """
  d_model: int = 256
  fpn_top_down_levels: Sequence[int] = (2, 3)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array]) -> list[jax.Array]:
    n = len(xs) - 1
    out: list = [None] * len(xs)
    prev = None
    for i in range(n, -1, -1):
      lateral = Lateral(self.d_model, dtype=self.dtype, name=f"convs_{n - i}")(xs[i])  # [B, h, w, d]
      if i in tuple(self.fpn_top_down_levels) and prev is not None:
        top_down = jnp.repeat(jnp.repeat(prev.astype(jnp.float32), 2, axis=1), 2, axis=2)  # [B, 2h, 2w, C]
        prev = lateral + top_down.astype(lateral.dtype)
      else:
        prev = lateral
      out[i] = prev
    return out


class ImageEncoder(nn.Module):
  """Trunk + neck: pixels [B, S, S, 3] -> FPN features, highest resolution first, float32:
  [B, S/4, S/4, d], [B, S/8, S/8, d], [B, S/16, S/16, d] (with scalp 1 of the 4 levels).

  Attributes:
    trunk: the Hiera.
    d_model: neck width.
    fpn_top_down_levels: see FpnNeck.
    scalp: lowest-resolution levels dropped.
    dtype: compute dtype.
  """
  trunk: Hiera
  d_model: int = 256
  fpn_top_down_levels: Sequence[int] = (2, 3)
  scalp: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    feats = self.trunk(x)
    feats = FpnNeck(self.d_model, self.fpn_top_down_levels, dtype=self.dtype, name="neck")(feats)
    if self.scalp > 0:
      feats = feats[:-self.scalp]
    return [f.astype(jnp.float32) for f in feats]
