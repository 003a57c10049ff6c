"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Equal to `segment_anything.modeling.transformer.TwoWayTransformer` (ReLU MLP, LayerNorm eps 1e-5,
cross-attention internal width divided by `attention_downsample_rate`).

Attributes:
  Attention: multi-head attention with separate q/k/v projections to an optionally reduced width.
  TwoWayAttentionBlock: self-attention, token->image, MLP, image->token.
  TwoWayTransformer: `depth` blocks and a final token->image attention.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from zipjax.models.sam_net.common import LN_EPS_DEFAULT, Dtype, MLPBlock, attention, layer_norm


class Attention(nn.Module):
  """Attention with q/k/v projections to `embedding_dim // downsample_rate` channels.

  Attributes:
    num_heads: heads.
    downsample_rate: internal width divisor.
    dtype: compute dtype.
    fused: use `jax.nn.dot_product_attention`.
  """
  num_heads: int
  downsample_rate: int = 1
  dtype: Dtype = jnp.float32
  fused: bool = False

  @nn.compact
  def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    embedding_dim = q.shape[-1]
    internal = embedding_dim // self.downsample_rate
    if internal % self.num_heads:
      raise ValueError(f"num_heads {self.num_heads} must divide the internal width {internal}")
    head_dim = internal // self.num_heads
    q = nn.Dense(internal, dtype=self.dtype, name="q_proj")(q)
    k = nn.Dense(internal, dtype=self.dtype, name="k_proj")(k)
    v = nn.Dense(internal, dtype=self.dtype, name="v_proj")(v)
    q = q.reshape(*q.shape[:-1], self.num_heads, head_dim)  # [B, T, N, D]
    k = k.reshape(*k.shape[:-1], self.num_heads, head_dim)  # [B, S, N, D]
    v = v.reshape(*v.shape[:-1], self.num_heads, head_dim)  # [B, S, N, D]
    out = attention(q, k, v, head_dim**-0.5, fused=self.fused)  # [B, T, N, D]
    out = out.reshape(*out.shape[:-2], internal)  # [B, T, internal]
    return nn.Dense(embedding_dim, dtype=self.dtype, name="out_proj")(out)


class TwoWayAttentionBlock(nn.Module):
  """One block of the two-way transformer.

  Attributes:
    num_heads: heads.
    mlp_dim: hidden width of the token MLP.
    attention_downsample_rate: internal width divisor of the cross-attentions.
    skip_first_layer_pe: the first block's self-attention sees no positional encoding and no residual.
    dtype: compute dtype.
    fused: fused attention.
  """
  num_heads: int
  mlp_dim: int
  attention_downsample_rate: int = 2
  skip_first_layer_pe: bool = False
  dtype: Dtype = jnp.float32
  fused: bool = False

  @nn.compact
  def __call__(self, queries, keys, query_pe, key_pe):
    mk_attn = lambda rate, name: Attention(self.num_heads, rate, self.dtype, self.fused, name=name)  # noqa
    norm = lambda name: layer_norm(LN_EPS_DEFAULT, self.dtype, name)  # noqa: E731
    self_attn = mk_attn(1, "self_attn")
    if self.skip_first_layer_pe:
      queries = self_attn(queries, queries, queries)
    else:
      q = queries + query_pe
      queries = queries + self_attn(q, q, queries)
    queries = norm("norm1")(queries)

    q = queries + query_pe
    k = keys + key_pe
    queries = queries + mk_attn(self.attention_downsample_rate, "cross_attn_token_to_image")(q, k, keys)
    queries = norm("norm2")(queries)

    queries = queries + MLPBlock(self.mlp_dim, "relu", dtype=self.dtype, name="mlp")(queries)
    queries = norm("norm3")(queries)

    q = queries + query_pe
    k = keys + key_pe
    keys = keys + mk_attn(self.attention_downsample_rate, "cross_attn_image_to_token")(k, q, queries)
    keys = norm("norm4")(keys)
    return queries, keys


class TwoWayTransformer(nn.Module):
  """Two-way transformer over image tokens [B, h, w, C] and prompt tokens [B, T, C].

  Attributes:
    depth: blocks (2 in SAM).
    num_heads: heads (8 in SAM).
    mlp_dim: token MLP width (2048 in SAM).
    attention_downsample_rate: 2 in SAM.
    dtype: compute dtype.
    fused: fused attention.
  """
  depth: int = 2
  num_heads: int = 8
  mlp_dim: int = 2048
  attention_downsample_rate: int = 2
  dtype: Dtype = jnp.float32
  fused: bool = False

  @nn.compact
  def __call__(self, image_embedding: jax.Array, image_pe: jax.Array, point_embedding: jax.Array):
    """-> (queries [B, T, C], keys [B, h*w, C])."""
    b, h, w, c = image_embedding.shape
    keys = image_embedding.reshape(b, h * w, c)  # [B, hw, C]
    key_pe = jnp.broadcast_to(image_pe, (b, h, w, c)).reshape(b, h * w, c)  # [B, hw, C]
    queries = point_embedding
    for i in range(self.depth):
      queries, keys = TwoWayAttentionBlock(
          self.num_heads, self.mlp_dim, self.attention_downsample_rate, skip_first_layer_pe=(i == 0),
          dtype=self.dtype, fused=self.fused, name=f"layers_{i}")(queries, keys, point_embedding, key_pe)
    q = queries + point_embedding
    k = keys + key_pe
    attn = Attention(self.num_heads, self.attention_downsample_rate, self.dtype, self.fused,
                     name="final_attn_token_to_image")
    queries = queries + attn(q, k, keys)
    queries = layer_norm(LN_EPS_DEFAULT, self.dtype, "norm_final_attn")(queries)
    return queries, keys
