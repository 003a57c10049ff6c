"""SAM's mask decoder: two-way transformer, transposed-conv upscaling, hypernetwork masks and IoU head.

Equal to `segment_anything.modeling.mask_decoder.MaskDecoder`, and with the SAM 2 options on to
`sam2.modeling.sam.mask_decoder.MaskDecoder` (high-resolution feature skips `conv_s0` / `conv_s1`, sigmoid IoU
head, object-score token and head, the dynamic single-mask fallback of `build_sam2`'s postprocessing). NHWC:
image embeddings [N, h, w, C] -> low-res mask logits [N, K, 4h, 4w], IoU predictions [N, K] (K =
num_multimask_outputs if multimask, else 1) and object-score logits [N, 1].

Attributes:
  MLP: MLP (`layers_i`), ReLU (or GELU) between layers, optional sigmoid output.
  MaskDecoder: the decoder.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from zipjax.models.sam_net.common import LN_EPS_ENCODER, ConvTransposeStride, Dtype, gelu, layer_norm
from zipjax.models.sam_net.transformer import TwoWayTransformer


class MLP(nn.Module):
  """`num_layers` Dense layers with an activation between them (`segment_anything`'s and `sam2`'s MLP).

  Attributes:
    hidden_dim: width of the hidden layers.
    output_dim: output width.
    num_layers: layers.
    act: 'relu' (decoders) or 'gelu' (exact; the Hiera blocks' MLP).
    sigmoid_output: apply a sigmoid to the output (SAM 2's IoU head).
    dtype: compute dtype.
  """
  hidden_dim: int
  output_dim: int
  num_layers: int
  act: str = "relu"
  sigmoid_output: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = nn.Dense(self.output_dim if last else self.hidden_dim, dtype=self.dtype, name=f"layers_{i}")(x)
      if not last:
        x = gelu(x) if self.act == "gelu" else jax.nn.relu(x)
    return jax.nn.sigmoid(x) if self.sigmoid_output else x


def stability_scores(mask_logits: jax.Array, delta: float) -> jax.Array:
  """IoU of the masks thresholded at +delta and -delta: [..., h, w] -> [...] (1 where both are empty)."""
  area_i = jnp.sum(mask_logits > delta, axis=(-2, -1)).astype(jnp.float32)
  area_u = jnp.sum(mask_logits > -delta, axis=(-2, -1)).astype(jnp.float32)
  return jnp.where(area_u > 0, area_i / jnp.maximum(area_u, 1.0), 1.0)


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
    use_high_res_features: SAM 2's high-resolution skips (`conv_s0`, `conv_s1`; `project_high_res`).
    iou_prediction_use_sigmoid: sigmoid on the IoU head (SAM 2).
    pred_obj_scores: object-score token and head (SAM 2); without it the object score is 10.
    pred_obj_scores_mlp: the object-score head is a 3-layer MLP (else one Dense).
    dynamic_multimask_via_stability: single-mask output falls back to the best multimask output when its
      stability score is below `dynamic_multimask_stability_thresh` (SAM 2 as `build_sam2` builds it).
    dynamic_multimask_stability_delta: logit margin of the stability score.
    dynamic_multimask_stability_thresh: stability threshold.
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
  use_high_res_features: bool = False
  iou_prediction_use_sigmoid: bool = False
  pred_obj_scores: bool = False
  pred_obj_scores_mlp: bool = False
  dynamic_multimask_via_stability: bool = False
  dynamic_multimask_stability_delta: float = 0.05
  dynamic_multimask_stability_thresh: float = 0.98
  dtype: Dtype = jnp.float32
  fused_attention: bool = False

  def setup(self):
    c = self.transformer_dim
    k = self.num_multimask_outputs + 1
    dt = self.dtype
    self.transformer = TwoWayTransformer(self.transformer_depth, self.transformer_heads, self.transformer_mlp_dim,
                                         dtype=dt, fused=self.fused_attention)
    self.iou_token = nn.Embed(1, c)
    self.mask_tokens = nn.Embed(k, c)
    if self.pred_obj_scores:
      self.obj_score_token = nn.Embed(1, c)
    self.output_upscaling_0 = ConvTransposeStride(c // 4, 2, dtype=dt)
    self.output_upscaling_1 = layer_norm(LN_EPS_ENCODER, dt, None)
    self.output_upscaling_3 = ConvTransposeStride(c // 8, 2, dtype=dt)
    if self.use_high_res_features:
      self.conv_s0 = nn.Conv(c // 8, (1, 1), dtype=dt)
      self.conv_s1 = nn.Conv(c // 4, (1, 1), dtype=dt)
    self.output_hypernetworks_mlps = [MLP(c, c // 8, 3, dtype=dt) for _ in range(k)]
    self.iou_prediction_head = MLP(self.iou_head_hidden_dim, k, self.iou_head_depth,
                                   sigmoid_output=self.iou_prediction_use_sigmoid, dtype=dt)
    if self.pred_obj_scores:
      self.pred_obj_score_head = MLP(c, 1, 3, dtype=dt) if self.pred_obj_scores_mlp else nn.Dense(1, dtype=dt)

  def project_high_res(self, feat_s0: jax.Array, feat_s1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """FPN levels 0 and 1 [B, 4h, 4w, C], [B, 2h, 2w, C] -> [B, 4h, 4w, C/8], [B, 2h, 2w, C/4] (float32), as
    `SAM2Base.forward_image` does once per image."""
    return self.conv_s0(feat_s0).astype(jnp.float32), self.conv_s1(feat_s1).astype(jnp.float32)

  def __call__(self, image_embeddings: jax.Array, image_pe: jax.Array, sparse_prompt_embeddings: jax.Array,
               dense_prompt_embeddings: jax.Array, multimask_output: bool,
               high_res_features: tuple[jax.Array, jax.Array] | None = None):
    """Args:
      image_embeddings: [N, h, w, C] (one row per prompt set; broadcast a single image beforehand or pass
        [1, h, w, C] to share it).
      image_pe: [1, h, w, C].
      sparse_prompt_embeddings: [N, T, C].
      dense_prompt_embeddings: [N, h, w, C].
      multimask_output: K = num_multimask_outputs masks (tokens 1..) instead of the single one (token 0).
      high_res_features: with `use_high_res_features`, the projected levels ([1 or N, 4h, 4w, C/8],
        [1 or N, 2h, 2w, C/4]) from `project_high_res`.

    Returns:
      masks [N, K, 4h, 4w] (logits), iou_pred [N, K] and object_score_logits [N, 1].
    """
    c = self.transformer_dim
    num_mask_tokens = self.num_multimask_outputs + 1
    tokens = [self.iou_token.embedding, self.mask_tokens.embedding]  # [1, C], [K+1, C]
    s = 0
    if self.pred_obj_scores:
      tokens, s = [self.obj_score_token.embedding] + tokens, 1
    output_tokens = jnp.concatenate(tokens, axis=0)  # [s+K+2, C]
    n = sparse_prompt_embeddings.shape[0]
    output_tokens = jnp.broadcast_to(output_tokens[None], (n, *output_tokens.shape))  # [N, s+K+2, C]
    tokens = jnp.concatenate([output_tokens, sparse_prompt_embeddings.astype(jnp.float32)], axis=1)

    src = image_embeddings + dense_prompt_embeddings  # [N, h, w, C]
    _, h, w, _ = src.shape
    hs, src = self.transformer(src, image_pe, tokens)
    iou_token_out = hs[:, s, :]  # [N, C]
    mask_tokens_out = hs[:, s + 1:s + 1 + num_mask_tokens, :]  # [N, K+1, C]

    src = src.reshape(n, h, w, c)  # [N, h, w, C]
    up = self.output_upscaling_0(src)  # [N, 2h, 2w, C/4]
    if self.use_high_res_features:
      if high_res_features is None:
        raise ValueError("this mask decoder uses high-resolution features: pass high_res_features")
      feat_s0, feat_s1 = high_res_features
      up = gelu(self.output_upscaling_1(up + feat_s1.astype(up.dtype)))
      up = gelu(self.output_upscaling_3(up) + feat_s0.astype(up.dtype))  # [N, 4h, 4w, C/8]
    else:
      up = gelu(self.output_upscaling_1(up))
      up = gelu(self.output_upscaling_3(up))  # [N, 4h, 4w, C/8]
    hyper_in = jnp.stack([self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :])
                          for i in range(num_mask_tokens)], axis=1)  # [N, K+1, C/8]
    masks = jnp.einsum("nkc,nhwc->nkhw", hyper_in, up.astype(hyper_in.dtype)).astype(jnp.float32)
    iou_pred = self.iou_prediction_head(iou_token_out).astype(jnp.float32)  # [N, K+1]
    if self.pred_obj_scores:
      obj = self.pred_obj_score_head(hs[:, 0, :]).astype(jnp.float32)  # [N, 1]
    else:
      obj = jnp.full((n, 1), 10.0, jnp.float32)
    if multimask_output:
      return masks[:, 1:], iou_pred[:, 1:], obj
    if self.dynamic_multimask_via_stability:
      return self._dynamic_single_mask(masks, iou_pred) + (obj,)
    return masks[:, :1], iou_pred[:, :1], obj

  def _dynamic_single_mask(self, masks: jax.Array, iou_pred: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`MaskDecoder._dynamic_multimask_via_stability`: token 0's mask, or the best multimask one where token
    0's stability score is below the threshold -> [N, 1, 4h, 4w], [N, 1]."""
    best = jnp.argmax(iou_pred[:, 1:], axis=-1) + 1  # [N]
    best_mask = jnp.take_along_axis(masks, best[:, None, None, None], axis=1)  # [N, 1, 4h, 4w]
    best_iou = jnp.take_along_axis(iou_pred, best[:, None], axis=1)  # [N, 1]
    stable = stability_scores(masks[:, 0], self.dynamic_multimask_stability_delta) >= \
        self.dynamic_multimask_stability_thresh  # [N]
    return (jnp.where(stable[:, None, None, None], masks[:, :1], best_mask),
            jnp.where(stable[:, None], iou_pred[:, :1], best_iou))
