"""SAM's prompt encoder: points, boxes and masks -> sparse [N, T, C] and dense [N, h, w, C] embeddings.

Equal to `segment_anything.modeling.prompt_encoder.PromptEncoder` and to SAM 2's
`sam2.modeling.sam.prompt_encoder.PromptEncoder` (the same module, whose points also take labels 2 and 3: box
top-left and bottom-right corners, as `SAM2ImagePredictor` passes boxes). Coordinates are (x, y) pixels in the
input frame (img_size x img_size); point labels are 1 (foreground), 0 (background), -1 (padding, "not a
point"), 2 / 3 (box corners).

Attributes:
  PositionEmbeddingRandom: random Fourier features of (x, y) in [0, 1].
  PromptEncoder: the encoder.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zipjax.models.sam_net.common import LN_EPS_ENCODER, Dtype, gelu, layer_norm


class PositionEmbeddingRandom(nn.Module):
  """Fourier positional encoding with a fixed Gaussian frequency matrix [2, F] -> 2F channels.

  The matrix is a buffer in PyTorch; here it is a parameter (initialised N(0, 1) as there) that training
  code should keep frozen.

  Attributes:
    num_pos_feats: F.
  """
  num_pos_feats: int

  def setup(self):
    self.positional_encoding_gaussian_matrix = self.param(
        "positional_encoding_gaussian_matrix", nn.initializers.normal(1.0), (2, self.num_pos_feats),
        jnp.float32)

  def encode(self, coords: jax.Array) -> jax.Array:
    """coords in [0, 1]^2 [..., 2] -> [..., 2F] (sin then cos)."""
    coords = 2 * coords - 1
    coords = jnp.matmul(coords, self.positional_encoding_gaussian_matrix,
                        precision=jax.lax.Precision.HIGHEST)  # [..., F]
    coords = 2 * np.pi * coords
    return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)  # [..., 2F]

  def dense(self, size: tuple[int, int]) -> jax.Array:
    """Encoding of the pixel-centre grid of `size` (h, w) -> [h, w, 2F]."""
    h, w = size
    y = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h  # [h]
    x = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w  # [w]
    grid = jnp.stack(jnp.broadcast_arrays(x[None, :], y[:, None]), axis=-1)  # [h, w, 2] as (x, y)
    return self.encode(grid)

  def with_coords(self, coords: jax.Array, image_size: tuple[int, int]) -> jax.Array:
    """Pixel coordinates (x, y) [..., 2] in an image of `image_size` (H, W) -> [..., 2F]."""
    scale = jnp.asarray([image_size[1], image_size[0]], jnp.float32)
    return self.encode(coords.astype(jnp.float32) / scale)


class PromptEncoder(nn.Module):
  """Embeds point, box and mask prompts for the mask decoder.

  Attributes:
    embed_dim: C, the prompt embedding width (256 in SAM).
    image_embedding_size: (h, w) of the image embedding (64 x 64 in SAM).
    input_image_size: (H, W) of the padded encoder input (1024 x 1024 in SAM).
    mask_in_chans: hidden channels of the mask downscaling convs (16 in SAM).
    dtype: compute dtype of the mask downscaling path.
  """
  embed_dim: int = 256
  image_embedding_size: tuple[int, int] = (64, 64)
  input_image_size: tuple[int, int] = (1024, 1024)
  mask_in_chans: int = 16
  dtype: Dtype = jnp.float32

  def setup(self):
    self.pe_layer = PositionEmbeddingRandom(self.embed_dim // 2)
    # 0: background point, 1: foreground point, 2: box top-left, 3: box bottom-right (Flax names list
    # members point_embeddings_0 .. point_embeddings_3)
    self.point_embeddings = [nn.Embed(1, self.embed_dim) for _ in range(4)]
    self.not_a_point_embed = nn.Embed(1, self.embed_dim)
    self.no_mask_embed = nn.Embed(1, self.embed_dim)
    c = self.mask_in_chans
    self.mask_downscaling_0 = nn.Conv(c // 4, (2, 2), strides=(2, 2), padding="VALID", dtype=self.dtype)
    self.mask_downscaling_1 = layer_norm(LN_EPS_ENCODER, self.dtype, None)
    self.mask_downscaling_3 = nn.Conv(c, (2, 2), strides=(2, 2), padding="VALID", dtype=self.dtype)
    self.mask_downscaling_4 = layer_norm(LN_EPS_ENCODER, self.dtype, None)
    self.mask_downscaling_6 = nn.Conv(self.embed_dim, (1, 1), dtype=self.dtype)

  def get_dense_pe(self) -> jax.Array:
    """Positional encoding of the image-embedding grid -> [1, h, w, C]."""
    return self.pe_layer.dense(self.image_embedding_size)[None]

  def _embed_points(self, points: jax.Array, labels: jax.Array, pad: bool) -> jax.Array:
    points = points.astype(jnp.float32) + 0.5  # pixel centres
    labels = labels.astype(jnp.int32)
    if pad:
      n = points.shape[0]
      points = jnp.concatenate([points, jnp.zeros((n, 1, 2), jnp.float32)], axis=1)  # [N, P+1, 2]
      labels = jnp.concatenate([labels, -jnp.ones((n, 1), jnp.int32)], axis=1)  # [N, P+1]
    emb = self.pe_layer.with_coords(points, self.input_image_size)  # [N, P, C]
    lab = labels[..., None]  # [N, P, 1]
    emb = jnp.where(lab == -1, 0.0, emb)
    emb = emb + jnp.where(lab == -1, self.not_a_point_embed.embedding[0], 0.0)
    emb = emb + jnp.where(lab == 0, self.point_embeddings[0].embedding[0], 0.0)
    emb = emb + jnp.where(lab == 1, self.point_embeddings[1].embedding[0], 0.0)
    # labels 2 / 3: box corners given as points (SAM 2's image predictor; segment_anything never passes them)
    emb = emb + jnp.where(lab == 2, self.point_embeddings[2].embedding[0], 0.0)
    emb = emb + jnp.where(lab == 3, self.point_embeddings[3].embedding[0], 0.0)
    return emb

  def _embed_boxes(self, boxes: jax.Array) -> jax.Array:
    boxes = boxes.astype(jnp.float32) + 0.5  # pixel centres
    corners = boxes.reshape(-1, 2, 2)  # [N, 2, 2] as (x, y) of top-left, bottom-right
    emb = self.pe_layer.with_coords(corners, self.input_image_size)  # [N, 2, C]
    corner_emb = jnp.stack([self.point_embeddings[2].embedding[0], self.point_embeddings[3].embedding[0]])
    return emb + corner_emb  # [N, 2, C]

  def _embed_masks(self, masks: jax.Array) -> jax.Array:
    x = self.mask_downscaling_0(masks)  # [N, 2h, 2w, c/4]
    x = gelu(self.mask_downscaling_1(x))
    x = self.mask_downscaling_3(x)  # [N, h, w, c]
    x = gelu(self.mask_downscaling_4(x))
    return self.mask_downscaling_6(x).astype(jnp.float32)  # [N, h, w, C]

  def __call__(self, points: tuple[jax.Array, jax.Array] | None = None, boxes: jax.Array | None = None,
               masks: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Embeds prompts; any of them may be None (as in segment_anything).

    Args:
      points: (coords [N, P, 2] xy, labels [N, P] int) or None. Padded with one "not a point" when boxes
        are None, as segment_anything does.
      boxes: [N, 4] xyxy or None.
      masks: [N, 4h, 4w, 1] low-res mask logits or None.

    Returns:
      sparse [N, T, C] (points then box corners) and dense [N, h, w, C].
    """
    if points is not None:
      n = points[0].shape[0]
    elif boxes is not None:
      n = boxes.shape[0]
    elif masks is not None:
      n = masks.shape[0]
    else:
      n = 1
    sparse = jnp.zeros((n, 0, self.embed_dim), jnp.float32)
    if points is not None:
      sparse = jnp.concatenate([sparse, self._embed_points(points[0], points[1], pad=boxes is None)], axis=1)
    if boxes is not None:
      sparse = jnp.concatenate([sparse, self._embed_boxes(boxes)], axis=1)
    if masks is not None:
      dense = self._embed_masks(masks)
    else:
      h, w = self.image_embedding_size
      dense = jnp.broadcast_to(self.no_mask_embed.embedding.reshape(1, 1, 1, -1),  # [1, 1, 1, C]
                               (n, h, w, self.embed_dim))  # [N, h, w, C]
    return sparse, dense
