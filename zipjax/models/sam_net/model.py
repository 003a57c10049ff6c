"""SAM as one Flax module, and the one config table for sizes B, L, H (and tiny test sizes).

Attributes:
  SamConfig: architecture and compute options (frozen dataclass; JSON-able via `to_dict`).
  SAM_SIZES: the official sizes 'vit_b', 'vit_l', 'vit_h' (embed dim, depth, heads, global blocks).
  Sam: image encoder + prompt encoder + mask decoder; methods `embed_images` and `decode`.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from zipjax.models.sam_net.common import SamConfigBase
from zipjax.models.sam_net.image_encoder import ImageEncoderViT
from zipjax.models.sam_net.mask_decoder import MaskDecoder
from zipjax.models.sam_net.prompt_encoder import PromptEncoder

# name -> (embed_dim, depth, num_heads, global_attn_indexes); window 14, patch 16, image 1024 for all.
SAM_SIZES = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


@dataclasses.dataclass(frozen=True)
class SamConfig(SamConfigBase):
  """SAM architecture (what the converter infers from a checkpoint) and compute options.

  Attributes:
    encoder_embed_dim: ViT width.
    encoder_depth: ViT blocks.
    encoder_num_heads: ViT heads.
    encoder_global_attn_indexes: blocks with global attention.
    img_size: padded square input side (1024).
    patch_size: 16.
    window_size: 14.
    mlp_ratio: 4.
    prompt_embed_dim: neck / prompt / decoder width (256).
    mask_in_chans: mask-prompt downscaling width (16).
    decoder_depth: two-way transformer blocks (2).
    decoder_num_heads: 8.
    decoder_mlp_dim: 2048.
    num_multimask_outputs: 3.
    iou_head_depth: 3.
    iou_head_hidden_dim: 256.
    dtype: compute dtype name ('float32' default and parity reference, 'bfloat16'); parameters stay float32.
    fused_attention: use `jax.nn.dot_product_attention`: True (JAX's default implementation, XLA) or an
      implementation name, 'xla' or 'cudnn' (GPU flash kernels, bf16/fp16 only). A name applies to the image
      encoder; the mask decoder's tiny token attention then uses the XLA implementation.
    remat: rematerialise encoder blocks (for training / memory).
  """
  encoder_embed_dim: int = 768
  encoder_depth: int = 12
  encoder_num_heads: int = 12
  encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
  img_size: int = 1024
  patch_size: int = 16
  window_size: int = 14
  mlp_ratio: float = 4.0
  prompt_embed_dim: int = 256
  mask_in_chans: int = 16
  decoder_depth: int = 2
  decoder_num_heads: int = 8
  decoder_mlp_dim: int = 2048
  num_multimask_outputs: int = 3
  iou_head_depth: int = 3
  iou_head_hidden_dim: int = 256
  dtype: str = "float32"
  fused_attention: bool | str = False
  remat: bool = False

  family: ClassVar[str] = "sam"
  _TUPLES: ClassVar[tuple[str, ...]] = ("encoder_global_attn_indexes",)

  def __post_init__(self):
    self._check_compute()
    if self.img_size % self.patch_size:
      raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
    if self.encoder_embed_dim % self.encoder_num_heads:
      raise ValueError(f"encoder_num_heads {self.encoder_num_heads} must divide {self.encoder_embed_dim}")
    bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
    if bad:
      raise ValueError(f"global attention indexes {bad} outside depth {self.encoder_depth}")

  @classmethod
  def from_size(cls, name: str, **overrides) -> "SamConfig":
    """'vit_b' | 'vit_l' | 'vit_h' (also 'b', 'l', 'h') -> config; `overrides` replace fields."""
    key = name if name.startswith("vit_") else f"vit_{name}"
    if key not in SAM_SIZES:
      raise ValueError(f"unknown SAM size {name!r}; known: {', '.join(SAM_SIZES)}")
    dim, depth, heads, glob = SAM_SIZES[key]
    return cls(**{"encoder_embed_dim": dim, "encoder_depth": depth, "encoder_num_heads": heads,
                  "encoder_global_attn_indexes": glob, **overrides})

  @classmethod
  def tiny(cls, **overrides) -> "SamConfig":
    """A small model for tests and smoke runs: 128-pixel input (8x8 tokens), width 64, 4 blocks with
    windows of 4 and global blocks 1 and 3, full SAM decoder structure at width 64."""
    base = dict(encoder_embed_dim=64, encoder_depth=4, encoder_num_heads=4, encoder_global_attn_indexes=(1, 3),
                img_size=128, window_size=3, prompt_embed_dim=64, decoder_mlp_dim=128, iou_head_hidden_dim=64)
    return cls(**{**base, **overrides})

  @property
  def embedding_size(self) -> int:
    return self.img_size // self.patch_size

  def size_name(self) -> str | None:
    """'vit_b' / 'vit_l' / 'vit_h' when the encoder matches an official size at 1024, else None."""
    for name, (dim, depth, heads, glob) in SAM_SIZES.items():
      if (self.encoder_embed_dim, self.encoder_depth, self.encoder_num_heads,
          self.encoder_global_attn_indexes, self.img_size) == (dim, depth, heads, glob, 1024):
        return name
    return None


def prompt_and_mask_decoder(cfg, **decoder_options) -> tuple[PromptEncoder, MaskDecoder]:
  """The prompt encoder and mask decoder of a SamConfig or Sam2Config (for `setup`; SAM 2 passes its
  decoder options)."""
  e, dt = cfg.embedding_size, cfg.compute_dtype
  return (PromptEncoder(embed_dim=cfg.prompt_embed_dim, image_embedding_size=(e, e),
                        input_image_size=(cfg.img_size,) * 2, mask_in_chans=cfg.mask_in_chans, dtype=dt),
          MaskDecoder(transformer_dim=cfg.prompt_embed_dim, num_multimask_outputs=cfg.num_multimask_outputs,
                      iou_head_depth=cfg.iou_head_depth, iou_head_hidden_dim=cfg.iou_head_hidden_dim,
                      transformer_depth=cfg.decoder_depth, transformer_heads=cfg.decoder_num_heads,
                      transformer_mlp_dim=cfg.decoder_mlp_dim, dtype=dt, fused_attention=bool(cfg.fused_attention),
                      **decoder_options))


def init_prompts(e: int):
  """One point, one box and one mask prompt (zeros) for an e x e embedding: what `__call__` touches every
  parameter with."""
  points = (jnp.zeros((1, 1, 2), jnp.float32), jnp.ones((1, 1), jnp.int32))
  return points, jnp.zeros((1, 4), jnp.float32), jnp.zeros((1, 4 * e, 4 * e, 1), jnp.float32)


class Sam(nn.Module):
  """Segment Anything: `embed_images` (heavy, once per image) and `decode` (light, per prompt set).

  Attributes:
    config: the SamConfig.
  """
  config: SamConfig

  def setup(self):
    cfg = self.config
    dt = cfg.compute_dtype
    self.image_encoder = ImageEncoderViT(
        img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.encoder_embed_dim,
        depth=cfg.encoder_depth, num_heads=cfg.encoder_num_heads,
        global_attn_indexes=cfg.encoder_global_attn_indexes, window_size=cfg.window_size,
        mlp_ratio=cfg.mlp_ratio, out_chans=cfg.prompt_embed_dim, dtype=dt,
        fused_attention=cfg.fused_attention, remat=cfg.remat)
    self.prompt_encoder, self.mask_decoder = prompt_and_mask_decoder(cfg)

  def embed_images(self, pixels: jax.Array) -> jax.Array:
    """Normalised, padded pixels [B, S, S, 3] -> image embeddings [B, S/16, S/16, C] float32."""
    return self.image_encoder(pixels)

  def decode(self, image_embedding: jax.Array, points=None, boxes=None, masks=None,
             multimask_output: bool = False) -> tuple[jax.Array, jax.Array]:
    """Prompts of ONE image -> (low-res logits [N, K, 4h, 4w], IoU [N, K]).

    Args:
      image_embedding: [h, w, C] or [1, h, w, C].
      points: (coords [N, P, 2], labels [N, P]) in the padded input frame, or None.
      boxes: [N, 4] xyxy in the padded input frame, or None.
      masks: [N, 4h, 4w, 1] low-res mask logits, or None.
      multimask_output: K = 3 masks instead of 1.
    """
    sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
    emb = image_embedding.reshape(1, *image_embedding.shape[-3:])  # [1, h, w, C]
    return self.mask_decoder(emb, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output)[:2]

  def __call__(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Touches every parameter (for `init` / `jax.eval_shape`): encoder, points + boxes + mask prompts."""
    emb = self.embed_images(pixels)
    points, boxes, masks = init_prompts(self.config.embedding_size)
    _, dense = self.prompt_encoder(boxes=boxes)  # the no-mask embedding
    emb = emb + 0.0 * dense[:1]
    return self.decode(emb[0], points=points, boxes=boxes, masks=masks, multimask_output=True)
