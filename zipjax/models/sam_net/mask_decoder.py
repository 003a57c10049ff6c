"""SAM's mask decoder: two-way transformer, transposed-conv upscaling, hypernetwork masks and IoU head.

Equal to `segment_anything.modeling.mask_decoder.MaskDecoder`. NHWC: image embeddings [N, h, w, C] ->
low-res mask logits [N, K, 4h, 4w] and IoU predictions [N, K] (K = num_multimask_outputs if multimask,
else 1).

Attributes:
  MLP: ReLU MLP (`layers_i`).
  MaskDecoder: the decoder.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from zipjax.models.sam_net.common import LN_EPS_ENCODER, ConvTransposeStride, Dtype, gelu, layer_norm
from zipjax.models.sam_net.transformer import TwoWayTransformer


class MLP(nn.Module):
  """`num_layers` Dense layers with ReLU between them.

  Attributes:
    hidden_dim: width of the hidden layers.
    output_dim: output width.
    num_layers: layers.
    dtype: compute dtype.
  """
  hidden_dim: int
  output_dim: int
  num_layers: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = nn.Dense(self.output_dim if last else self.hidden_dim, dtype=self.dtype, name=f"layers_{i}")(x)
      if not last:
        x = jax.nn.relu(x)
    return x


class MaskDecoder(nn.Module):
  """Predicts masks from image embeddings and prompt embeddings.

  Attributes:
    transformer_dim: C (256 in SAM).
    num_multimask_outputs: masks in multimask mode (3).
    iou_head_depth: IoU MLP layers (3).
    iou_head_hidden_dim: IoU MLP width (256).
    transformer_depth: two-way transformer blocks (2).
    transformer_heads: heads (8).
    transformer_mlp_dim: token MLP width (2048).
    dtype: compute dtype.
    fused_attention: fused attention in the transformer.
  """
  transformer_dim: int = 256
  num_multimask_outputs: int = 3
  iou_head_depth: int = 3
  iou_head_hidden_dim: int = 256
  transformer_depth: int = 2
  transformer_heads: int = 8
  transformer_mlp_dim: int = 2048
  dtype: Dtype = jnp.float32
  fused_attention: bool = False

  @nn.compact
  def __call__(self, image_embeddings: jax.Array, image_pe: jax.Array, sparse_prompt_embeddings: jax.Array,
               dense_prompt_embeddings: jax.Array, multimask_output: bool) -> tuple[jax.Array, jax.Array]:
    """Args:
      image_embeddings: [N, h, w, C] (one row per prompt set; broadcast a single image beforehand or pass
        [1, h, w, C] to share it).
      image_pe: [1, h, w, C].
      sparse_prompt_embeddings: [N, T, C].
      dense_prompt_embeddings: [N, h, w, C].
      multimask_output: K = num_multimask_outputs masks (tokens 1..) instead of the single one (token 0).

    Returns:
      masks [N, K, 4h, 4w] (logits) and iou_pred [N, K].
    """
    c = self.transformer_dim
    num_mask_tokens = self.num_multimask_outputs + 1
    iou_token = nn.Embed(1, c, name="iou_token").embedding  # [1, C]
    mask_tokens = nn.Embed(num_mask_tokens, c, name="mask_tokens").embedding  # [K+1, C]
    n = sparse_prompt_embeddings.shape[0]
    output_tokens = jnp.concatenate([iou_token, mask_tokens], axis=0)  # [K+2, C]
    output_tokens = jnp.broadcast_to(output_tokens[None], (n, *output_tokens.shape))  # [N, K+2, C]
    tokens = jnp.concatenate([output_tokens, sparse_prompt_embeddings.astype(jnp.float32)], axis=1)

    src = image_embeddings + dense_prompt_embeddings  # [N, h, w, C]
    _, h, w, _ = src.shape
    hs, src = TwoWayTransformer(self.transformer_depth, self.transformer_heads, self.transformer_mlp_dim,
                                dtype=self.dtype, fused=self.fused_attention, name="transformer")(
                                    src, image_pe, tokens)
    iou_token_out = hs[:, 0, :]  # [N, C]
    mask_tokens_out = hs[:, 1:1 + num_mask_tokens, :]  # [N, K+1, C]

    src = src.reshape(n, h, w, c)  # [N, h, w, C]
    up = ConvTransposeStride(c // 4, 2, dtype=self.dtype, name="output_upscaling_0")(src)  # [N, 2h, 2w, C/4]
    up = gelu(layer_norm(LN_EPS_ENCODER, self.dtype, "output_upscaling_1")(up))
    up = gelu(ConvTransposeStride(c // 8, 2, dtype=self.dtype, name="output_upscaling_3")(up))  # [N,4h,4w,C/8]
    hyper_in = jnp.stack([
        MLP(c, c // 8, 3, dtype=self.dtype, name=f"output_hypernetworks_mlps_{i}")(mask_tokens_out[:, i, :])
        for i in range(num_mask_tokens)
    ], axis=1)  # [N, K+1, C/8]
    masks = jnp.einsum("nkc,nhwc->nkhw", hyper_in, up.astype(hyper_in.dtype))  # [N, K+1, 4h, 4w]
    iou_pred = MLP(self.iou_head_hidden_dim, num_mask_tokens, self.iou_head_depth, dtype=self.dtype,
                   name="iou_prediction_head")(iou_token_out)  # [N, K+1]
    sl = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, sl].astype(jnp.float32), iou_pred[:, sl].astype(jnp.float32)
