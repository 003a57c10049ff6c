"""CLIP's VisionTransformer (OpenAI `clip.model.VisionTransformer`) with the CLIP Surgery dual path.

Inputs are NHWC float32 pixels, already normalised. Any input whose sides are multiples of the patch size works:
the patch part of the positional embedding is resized bilinearly (torch align_corners=False), the CLS position
is kept, exactly as CLIP Surgery does.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zipjax.models.clip_layers import Transformer, layer_norm
from zipjax.ops.resize import resize_bilinear


class VisionTransformer(nn.Module):
  """ViT image tower.

  Attributes:
    input_resolution: training resolution (sets the positional-embedding grid).
    patch_size: patch side.
    width: token width.
    layers: transformer depth.
    heads: attention heads.
    output_dim: projected embedding size.
    dtype: compute dtype.
  """
  input_resolution: int
  patch_size: int
  width: int
  layers: int
  heads: int
  output_dim: int
  dtype: Any = jnp.float32

  def setup(self):
    grid = self.input_resolution // self.patch_size
    scale = self.width ** -0.5
    self.conv1 = nn.Conv(self.width, (self.patch_size,) * 2, strides=(self.patch_size,) * 2, padding="VALID",
                         use_bias=False, dtype=self.dtype, name="conv1")
    self.class_embedding = self.param("class_embedding", nn.initializers.normal(scale), (self.width,))
    self.positional_embedding = self.param("positional_embedding", nn.initializers.normal(scale),
                                           (grid * grid + 1, self.width))
    self.ln_pre = layer_norm("ln_pre")
    self.transformer = Transformer(self.width, self.layers, self.heads, dtype=self.dtype, name="transformer")
    self.ln_post = layer_norm("ln_post")
    self.proj = self.param("proj", nn.initializers.normal(scale), (self.width, self.output_dim))

  def positional_embedding_for(self, gh: int, gw: int) -> jax.Array:
    """Positional embedding for a gh x gw grid -> [1 + gh*gw, width]."""
    pos = self.positional_embedding
    side = self.input_resolution // self.patch_size
    if (gh, gw) == (side, side):
      return pos
    patch = pos[1:].reshape(side, side, self.width)  # [side, side, C]
    patch = resize_bilinear(patch, (gh, gw)).reshape(gh * gw, self.width)  # [gh*gw, C]
    return jnp.concatenate([pos[:1], patch], axis=0)  # [1 + gh*gw, C]

  def tokens(self, x: jax.Array) -> jax.Array:
    """Pixels [B, H, W, 3] -> ln_pre(patch tokens + CLS + positions) [B, 1 + N, width]."""
    b, h, w, _ = x.shape
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
    x = self.conv1(x.astype(self.dtype))  # [B, gh, gw, C]
    gh, gw = x.shape[1], x.shape[2]
    x = x.reshape(b, gh * gw, self.width)  # [B, N, C]
    cls = jnp.broadcast_to(self.class_embedding.astype(x.dtype), (b, 1, self.width))  # [B, 1, C]
    x = jnp.concatenate([cls, x], axis=1)  # [B, 1 + N, C]
    x = x + self.positional_embedding_for(gh, gw).astype(x.dtype)
    return self.ln_pre(x).astype(self.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    """OpenAI encode_image: projected CLS token [B, output_dim]."""
    x = self.transformer(self.tokens(x))
    return jnp.dot(self.ln_post(x[:, 0]), self.proj.astype(jnp.float32))

  def surgery(self, x: jax.Array, surgery_depth: int) -> jax.Array:
    """CLIP Surgery token features [B, 1 + N, output_dim] (unnormalised).

    The last `surgery_depth` blocks run the dual path; the output is the new path with its CLS token replaced
    by the original path's CLS token, through ln_post and proj.
    """
    x_new, x_ori = self.transformer.surgery(self.tokens(x), surgery_depth)
    x = jnp.concatenate([x_ori[:, :1], x_new[:, 1:]], axis=1)  # [B, 1 + N, C]
    return jnp.dot(self.ln_post(x), self.proj.astype(jnp.float32))
