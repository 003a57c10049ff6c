"""Transformer pieces shared by CLIP's text tower and ViT, named after OpenAI's `clip.model` state dict."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LN_EPS = 1e-5


def layer_norm(name: str) -> nn.LayerNorm:
  """LayerNorm computed in float32 (OpenAI's LayerNorm subclass upcasts), eps 1e-5."""
  return nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, name=name)


def quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(hd) + mask) v, softmax in float32.

  q: [B, Nq, H, hd], k/v: [B, N, H, hd] -> [B, Nq, H, hd].
  """
  hd = q.shape[-1]
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (hd ** -0.5)  # [B, H, Nq, N]
  if mask is not None:
    logits = logits + mask
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)  # [B, Nq, H, hd]


class MultiheadAttention(nn.Module):
  """torch.nn.MultiheadAttention (batch-first here) with its parameter names.

  Attributes:
    width: model width D.
    heads: number of heads; head dim = D // heads.
    dtype: compute dtype.
  """
  width: int
  heads: int
  dtype: Any = jnp.float32

  def setup(self):
    # Stored transposed w.r.t. torch ([D, 3D]) so that x @ in_proj_weight is the projection.
    self.in_proj_weight = self.param("in_proj_weight", nn.initializers.lecun_normal(),
                                     (self.width, 3 * self.width))
    self.in_proj_bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * self.width,))
    self.out_proj = nn.Dense(self.width, dtype=self.dtype, name="out_proj")

  def qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[B, N, D] -> q, k, v each [B, N, heads, head_dim]."""
    b, n, _ = x.shape
    w = self.in_proj_weight.astype(self.dtype)
    y = jnp.dot(x.astype(self.dtype), w) + self.in_proj_bias.astype(self.dtype)  # [B, N, 3D]
    y = y.reshape(b, n, 3, self.heads, self.width // self.heads)  # [B, N, 3, H, hd]
    return y[:, :, 0], y[:, :, 1], y[:, :, 2]

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(hd) + mask) v, then out_proj. q: [B, Nq, H, hd], k/v: [B, N, H, hd] -> [B, Nq, D]."""
    b, nq, h, hd = q.shape
    out = dot_product_attention(q, k, v, mask)  # [B, Nq, H, hd]
    return self.out_proj(out.reshape(b, nq, h * hd))  # [B, Nq, D]

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    return self.attend(*self.qkv(x), mask=mask)


class MLP(nn.Module):
  """c_fc -> QuickGELU -> c_proj."""
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(4 * self.width, dtype=self.dtype, name="c_fc")(x)
    return nn.Dense(self.width, dtype=self.dtype, name="c_proj")(quick_gelu(x))


class ResidualAttentionBlock(nn.Module):
  """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).

  `surgery(...)` is the CLIP Surgery dual path (zip_method.md section 1), which adds no parameters.

  Attributes:
    width: model width.
    heads: attention heads.
    dtype: compute dtype.
  """
  width: int
  heads: int
  dtype: Any = jnp.float32

  def setup(self):
    self.ln_1 = layer_norm("ln_1")
    self.attn = MultiheadAttention(self.width, self.heads, dtype=self.dtype, name="attn")
    self.ln_2 = layer_norm("ln_2")
    self.mlp = MLP(self.width, dtype=self.dtype, name="mlp")

  def _ln(self, ln, x):
    return ln(x).astype(self.dtype)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    x = x + self.attn(self._ln(self.ln_1, x), mask=mask)
    return x + self.mlp(self._ln(self.ln_2, x))

  def surgery(self, x_new: jax.Array, x_ori: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One dual-path block. The attention input is ln_1(x_ori); for the first surgery block x_new = x_ori = x.

    original path: x_ori + softmax(q k^T) v -> out_proj, then + MLP;
    new path:      x_new + softmax(v v^T) v -> out_proj (q = k = v), no MLP.
    """
    q, k, v = self.attn.qkv(self._ln(self.ln_1, x_ori))
    a_ori = self.attn.attend(q, k, v)
    a_new = self.attn.attend(v, v, v)
    x_ori = x_ori + a_ori
    x_ori = x_ori + self.mlp(self._ln(self.ln_2, x_ori))
    return x_new + a_new, x_ori


class Transformer(nn.Module):
  """A stack of `layers` ResidualAttentionBlocks named resblocks_{i}.

  Attributes:
    width: model width.
    layers: number of blocks.
    heads: attention heads.
    dtype: compute dtype.
  """
  width: int
  layers: int
  heads: int
  dtype: Any = jnp.float32

  def setup(self):
    self.resblocks = [ResidualAttentionBlock(self.width, self.heads, dtype=self.dtype, name=f"resblocks_{i}")
                      for i in range(self.layers)]

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    for block in self.resblocks:
      x = block(x, mask=mask)
    return x

  def surgery(self, x: jax.Array, surgery_depth: int) -> tuple[jax.Array, jax.Array]:
    """Runs the first layers-surgery_depth blocks normally and the rest on the dual path -> (x_new, x_ori)."""
    start = self.layers - surgery_depth
    for block in self.resblocks[:start]:
      x = block(x)
    x_new, x_ori = x, x
    for block in self.resblocks[start:]:
      x_new, x_ori = block.surgery(x_new, x_ori)
    return x_new, x_ori
