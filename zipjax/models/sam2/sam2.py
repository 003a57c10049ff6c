"""SAM 2 (image mode) as one Flax module, and the one config table for the sam2.1 sizes.

What `SAM2ImagePredictor` computes, with the model `build_sam2` builds from the sam2.1 configs: the image
encoder (Hiera + FPN neck, levels at strides 4, 8, 16), the high-resolution skips `conv_s0` / `conv_s1` of the
mask decoder applied once per image, `no_mem_embed` added to the stride-16 embedding, the prompt encoder (box
corners as points with labels 2 and 3, plus the padding point) and the mask decoder (multimask or the dynamic
single-mask output, sigmoid IoU head, object-score head). No video memory (memory attention / encoder,
object pointers): zipjax segments single images.

The prompt encoder, the two-way transformer and the mask decoder are SAM v1's modules
(`zipjax/models/sam/`), with their SAM 2 options switched on: one implementation of each. Their submodules
carry SAM v1's names (the converter maps SAM 2's `mlp.layers.0/1` of the two-way transformer to `lin1/lin2`).

Attributes:
  Sam2Config: architecture and compute options (frozen dataclass; JSON-able via `to_dict`).
  SAM2_SIZES: the sam2.1 sizes 'tiny', 'small', 'base_plus', 'large' (Hiera hyper-parameters of the yaml
    configs in facebookresearch/sam2 `sam2/configs/sam2.1/`).
  Sam2: image encoder + prompt encoder + mask decoder; methods `image_features`, `embed_images`, `decode`.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from zipjax.models.sam_net.common import SamConfigBase
from zipjax.models.sam_net.model import init_prompts, prompt_and_mask_decoder
from zipjax.models.sam2.image_encoder import Hiera, ImageEncoder

# name -> Hiera hyper-parameters of sam2.1_hiera_{t,s,b+,l}.yaml (the others are Hiera's defaults there:
# q_pool 3, q_stride (2, 2), dim_mul 2, head_mul 2, mlp_ratio 4; the neck is the same for all four).
SAM2_SIZES = {
    "tiny": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                 window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 14, 7)),
    "small": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
                  window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 14, 7)),
    "base_plus": dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
                      window_pos_embed_bkg_spatial_size=(14, 14), window_spec=(8, 4, 14, 7)),
    "large": dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                  window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 16, 8)),
}
_ALIASES = {"t": "tiny", "s": "small", "b+": "base_plus", "base+": "base_plus", "l": "large"}


def size_key(name: str) -> str:
  """'sam2.1_hiera_base_plus', 'hiera_b+', 'b+', 'base_plus' ... -> 'base_plus' (ValueError if unknown)."""
  key = str(name).lower()
  for prefix in ("sam2.1_", "sam2_", "hiera_"):
    key = key[len(prefix):] if key.startswith(prefix) else key
  key = _ALIASES.get(key, key)
  if key not in SAM2_SIZES:
    raise ValueError(f"unknown SAM 2 size {name!r}; known: {', '.join(SAM2_SIZES)}")
  return key


@dataclasses.dataclass(frozen=True)
class Sam2Config(SamConfigBase):
  """SAM 2 architecture (what the converter infers from a checkpoint) and compute options.

  Attributes:
    embed_dim: Hiera width of stage 1.
    num_heads: Hiera heads of stage 1.
    stages: blocks per stage.
    global_att_blocks: blocks with global attention.
    window_spec: window side per stage.
    window_pos_embed_bkg_spatial_size: (h, w) of the background positional embedding.
    q_pool: stage changes with query pooling (3).
    q_stride: pooling stride ((2, 2)).
    dim_mul, head_mul: width / heads multipliers per stage (2, 2).
    mlp_ratio: 4.
    img_size: square input side (1024; the image is resized to it, not padded).
    backbone_stride: stride of the image embedding (16).
    d_model: neck / prompt / decoder width (256).
    fpn_top_down_levels: neck levels with top-down fusion ((2, 3)).
    scalp: lowest-resolution levels dropped (1).
    mask_in_chans: mask-prompt downscaling width (16).
    decoder_depth: two-way transformer blocks (2).
    decoder_num_heads: 8.
    decoder_mlp_dim: 2048.
    num_multimask_outputs: 3.
    iou_head_depth: 3.
    iou_head_hidden_dim: 256.
    use_high_res_features: the decoder's high-resolution skips (True in sam2.1).
    iou_prediction_use_sigmoid: True in sam2.1.
    pred_obj_scores: object-score head (True in sam2.1).
    pred_obj_scores_mlp: the head is an MLP (True in sam2.1).
    directly_add_no_mem_embed: add `no_mem_embed` to the image embedding (True in sam2.1).
    dynamic_multimask_via_stability: single-mask fallback (True: what `build_sam2` sets for the predictors).
    dynamic_multimask_stability_delta: 0.05.
    dynamic_multimask_stability_thresh: 0.98.
    dtype: compute dtype name ('float32' default and parity reference, 'bfloat16'); parameters stay float32.
    fused_attention: `jax.nn.dot_product_attention` (True, 'xla' or 'cudnn'; a name applies to the Hiera
      trunk, the mask decoder then uses the XLA implementation).
    remat: rematerialise Hiera blocks (for training / memory).
  """
  embed_dim: int = 112
  num_heads: int = 2
  stages: tuple[int, ...] = (2, 3, 16, 3)
  global_att_blocks: tuple[int, ...] = (12, 16, 20)
  window_spec: tuple[int, ...] = (8, 4, 14, 7)
  window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
  q_pool: int = 3
  q_stride: tuple[int, int] = (2, 2)
  dim_mul: float = 2.0
  head_mul: float = 2.0
  mlp_ratio: float = 4.0
  img_size: int = 1024
  backbone_stride: int = 16
  d_model: int = 256
  fpn_top_down_levels: tuple[int, ...] = (2, 3)
  scalp: int = 1
  mask_in_chans: int = 16
  decoder_depth: int = 2
  decoder_num_heads: int = 8
  decoder_mlp_dim: int = 2048
  num_multimask_outputs: int = 3
  iou_head_depth: int = 3
  iou_head_hidden_dim: int = 256
  use_high_res_features: bool = True
  iou_prediction_use_sigmoid: bool = True
  pred_obj_scores: bool = True
  pred_obj_scores_mlp: bool = True
  directly_add_no_mem_embed: bool = True
  dynamic_multimask_via_stability: bool = True
  dynamic_multimask_stability_delta: float = 0.05
  dynamic_multimask_stability_thresh: float = 0.98
  dtype: str = "float32"
  fused_attention: bool | str = False
  remat: bool = False

  family: ClassVar[str] = "sam2"
  _TITLE: ClassVar[str] = "SAM 2"
  _TUPLES: ClassVar[tuple[str, ...]] = ("stages", "global_att_blocks", "window_spec",
                                        "window_pos_embed_bkg_spatial_size", "q_stride", "fpn_top_down_levels")

  def __post_init__(self):
    self._check_compute()
    n = len(self.stages)
    if len(self.window_spec) != n or min(self.stages, default=0) < 1:
      raise ValueError(f"stages {self.stages} and window_spec {self.window_spec} must have the same length, "
                       "with at least one block per stage")
    if self.q_pool != n - 1 or self.q_stride != (2, 2):
      raise ValueError(f"q_pool must be {n - 1} (every stage halves the grid) with q_stride (2, 2), got "
                       f"{self.q_pool}, {self.q_stride}")
    kept = n - self.scalp
    if kept != 3 or self.backbone_stride != 4 * 2 ** (kept - 1):
      raise ValueError(f"the image predictor uses 3 FPN levels (strides 4, 8, 16): got {n} stages, scalp "
                       f"{self.scalp}, backbone_stride {self.backbone_stride}")
    if self.img_size % (4 * self.window_spec[0]) or self.img_size % (4 * 2 ** (n - 1)):
      raise ValueError(f"img_size {self.img_size} must be a multiple of {4 * self.window_spec[0]} (window "
                       f"positional embedding) and of {4 * 2 ** (n - 1)} (the stage strides)")
    bad = [i for i in self.global_att_blocks if not 0 <= i < sum(self.stages)]
    if bad:
      raise ValueError(f"global attention blocks {bad} outside depth {sum(self.stages)}")
    heads, dim = self.num_heads, self.embed_dim
    for _ in range(n):
      if heads < 1 or dim % heads:
        raise ValueError(f"Hiera heads {heads} must divide width {dim} at every stage")
      heads, dim = int(heads * self.head_mul), int(dim * self.dim_mul)

  @classmethod
  def from_size(cls, name: str, **overrides) -> "Sam2Config":
    """'tiny' | 'small' | 'base_plus' | 'large' (also 't', 's', 'b+', 'l', 'hiera_b+', 'sam2.1_hiera_tiny')."""
    return cls(**{**SAM2_SIZES[size_key(name)], **overrides})

  @classmethod
  def mini(cls, **overrides) -> "Sam2Config":
    """A small model for tests and smoke runs (not an official size): 128-pixel input (8x8 embedding),
    Hiera width 16 with 1, 1, 2, 1 blocks, windows 4, 4, 4, 2 and global block 3, the full decoder structure
    at width 64."""
    base = dict(embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,), window_spec=(4, 4, 4, 2),
                window_pos_embed_bkg_spatial_size=(4, 4), img_size=128, d_model=64, decoder_mlp_dim=128,
                iou_head_hidden_dim=64)
    return cls(**{**base, **overrides})

  @property
  def embedding_size(self) -> int:
    return self.img_size // self.backbone_stride

  @property
  def prompt_embed_dim(self) -> int:
    return self.d_model

  def size_name(self) -> str | None:
    """'tiny' / 'small' / 'base_plus' / 'large' when the trunk matches a sam2.1 size at 1024, else None."""
    default = Sam2Config(dtype=self.dtype)
    rest = {k: v for k, v in self.to_dict(with_compute=False).items() if k not in SAM2_SIZES["tiny"]}
    if rest != {k: v for k, v in default.to_dict(with_compute=False).items() if k not in SAM2_SIZES["tiny"]}:
      return None
    for name, arch in SAM2_SIZES.items():
      if all(getattr(self, k) == tuple(v) if isinstance(v, tuple) else getattr(self, k) == v
             for k, v in arch.items()):
        return name
    return None

  def trunk(self, name: str | None = None) -> Hiera:
    """The Hiera of this config (a Flax module)."""
    return Hiera(embed_dim=self.embed_dim, num_heads=self.num_heads, stages=self.stages,
                 global_att_blocks=self.global_att_blocks, window_spec=self.window_spec,
                 window_pos_embed_bkg_spatial_size=self.window_pos_embed_bkg_spatial_size, q_pool=self.q_pool,
                 q_stride=self.q_stride, dim_mul=self.dim_mul, head_mul=self.head_mul, mlp_ratio=self.mlp_ratio,
                 dtype=self.compute_dtype, fused_attention=self.fused_attention, remat=self.remat, name=name)


class Sam2(nn.Module):
  """SAM 2 in image mode: `embed_images` (heavy, once per image) and `decode` (light, per prompt set).

  Attributes:
    config: the Sam2Config.
  """
  config: Sam2Config

  def setup(self):
    cfg = self.config
    dt = cfg.compute_dtype
    self.image_encoder = ImageEncoder(cfg.trunk(), cfg.d_model, cfg.fpn_top_down_levels, cfg.scalp, dtype=dt)
    self.sam_prompt_encoder, self.sam_mask_decoder = prompt_and_mask_decoder(
        cfg, use_high_res_features=cfg.use_high_res_features,
        iou_prediction_use_sigmoid=cfg.iou_prediction_use_sigmoid, pred_obj_scores=cfg.pred_obj_scores,
        pred_obj_scores_mlp=cfg.pred_obj_scores_mlp,
        dynamic_multimask_via_stability=cfg.dynamic_multimask_via_stability,
        dynamic_multimask_stability_delta=cfg.dynamic_multimask_stability_delta,
        dynamic_multimask_stability_thresh=cfg.dynamic_multimask_stability_thresh)
    if cfg.directly_add_no_mem_embed:
      self.no_mem_embed = self.param("no_mem_embed", nn.initializers.zeros, (1, 1, cfg.d_model), jnp.float32)

  def image_features(self, pixels: jax.Array) -> list[jax.Array]:
    """Normalised pixels [B, S, S, 3] -> the neck's FPN levels (`backbone_fpn`), float32:
    [B, S/4, S/4, d], [B, S/8, S/8, d], [B, S/16, S/16, d]."""
    return self.image_encoder(pixels)

  def embed_images(self, pixels: jax.Array) -> dict[str, jax.Array]:
    """Normalised pixels [B, S, S, 3] -> what `SAM2ImagePredictor.set_image` keeps, float32:
    {'image_embed': [B, S/16, S/16, d] (+ no_mem_embed), 'feat_s0': [B, S/4, S/4, d/8] (conv_s0),
    'feat_s1': [B, S/8, S/8, d/4] (conv_s1)}."""
    fpn = self.image_features(pixels)
    emb = fpn[-1]
    if self.config.directly_add_no_mem_embed:
      emb = emb + self.no_mem_embed[None]  # [B, e, e, d]
    out = {"image_embed": emb}
    if self.config.use_high_res_features:
      out["feat_s0"], out["feat_s1"] = self.sam_mask_decoder.project_high_res(fpn[0], fpn[1])
    return out

  def prompt_embeddings(self, points=None, boxes=None, masks=None):
    """Prompts as `SAM2ImagePredictor._predict` gives them to the prompt encoder -> (sparse [N, T, d], dense
    [N, e, e, d]): box corners become points labelled 2 and 3, placed before the points; the prompt encoder
    is called without boxes, so it appends one padding point.

    Args:
      points: (coords [N, P, 2] xy, labels [N, P]) in the input frame, or None.
      boxes: [N, 4] xyxy in the input frame, or None.
      masks: [N, 4e, 4e, 1] low-res mask logits, or None.
    """
    if boxes is not None:
      n = boxes.shape[0]
      coords = boxes.astype(jnp.float32).reshape(n, 2, 2)  # [N, 2, 2]
      labels = jnp.broadcast_to(jnp.asarray([[2, 3]], jnp.int32), (n, 2))  # [N, 2]
      if points is not None:
        coords = jnp.concatenate([coords, points[0].astype(jnp.float32)], axis=1)  # [N, 2 + P, 2]
        labels = jnp.concatenate([labels, points[1].astype(jnp.int32)], axis=1)  # [N, 2 + P]
      points = (coords, labels)
    return self.sam_prompt_encoder(points=points, boxes=None, masks=masks)

  def decode(self, embedding: dict[str, jax.Array], points=None, boxes=None, masks=None,
             multimask_output: bool = False, with_object_scores: bool = False):
    """Prompts of ONE image -> (low-res logits [N, K, 4e, 4e], IoU [N, K][, object-score logits [N, 1]]).

    Args:
      embedding: `embed_images` of one image (arrays with or without the batch axis of 1).
      points, boxes, masks: see `prompt_embeddings`.
      multimask_output: K = 3 masks instead of 1 (with 1: the dynamic single-mask output).
      with_object_scores: also return the object-score logits.
    """
    cfg = self.config
    e, d = cfg.embedding_size, cfg.d_model
    sparse, dense = self.prompt_embeddings(points, boxes, masks)
    emb = embedding["image_embed"].reshape(1, e, e, d)  # [1, e, e, d]
    high = None
    if cfg.use_high_res_features:
      high = (embedding["feat_s0"].reshape(1, 4 * e, 4 * e, d // 8),  # [1, 4e, 4e, d/8]
              embedding["feat_s1"].reshape(1, 2 * e, 2 * e, d // 4))  # [1, 2e, 2e, d/4]
    masks_out, iou, obj = self.sam_mask_decoder(emb, self.sam_prompt_encoder.get_dense_pe(), sparse, dense,
                                                multimask_output, high_res_features=high)
    return (masks_out, iou, obj) if with_object_scores else (masks_out, iou)

  def __call__(self, pixels: jax.Array):
    """Touches every parameter (for `init` / `jax.eval_shape`): encoder, points + boxes + mask prompts."""
    emb = self.embed_images(pixels)
    points, boxes, masks = init_prompts(self.config.embedding_size)
    one = jax.tree_util.tree_map(lambda x: x[:1], emb)
    _, dense = self.sam_prompt_encoder(boxes=boxes)  # the no-mask embedding
    one["image_embed"] = one["image_embed"] + 0.0 * dense[:1]
    return self.decode(one, points=points, boxes=boxes, masks=masks, multimask_output=True,
                       with_object_scores=True)
