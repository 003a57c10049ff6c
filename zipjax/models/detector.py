"""An open-vocabulary detector with a mask head: OWL-ViT-style per-token heads on a CLIP ViT (zip_method.md s. 7).

Every output token of the ViT is a candidate object (N = (S / patch)^2 of them). The design follows scenic's
OWL-ViT / OWLv2 (read for understanding, written anew):

- Backbone: CLIP's VisionTransformer with the same submodule names (`backbone/conv1`, `backbone/transformer/
  resblocks_{i}`, ...), built from zipjax.models.clip_layers, so `load_backbone` copies a converted CLIP's
  `visual/*` parameters one to one (the positional embedding is resized to the detector's grid). Optional
  stochastic depth (per block, linear in depth) and `nn.remat` per block.
- Token features: the patch tokens after `ln_post`, multiplied by the CLS token and layer-normalised again
  (OWL-ViT's `merge_class_token='mul-ln'`).
- Box head: a 3-layer GELU MLP whose last layer starts at zero, decoded relative to the token's grid cell
  (`box_param`: OWL-ViT's sigmoid of output + the logit of the cell centre and size, or distances from the cell
  centre to the four edges): an untrained head predicts its own cell.
- Class head: Dense to the text width D (`class_head/dense0`, initialised from CLIP's `visual.proj` by
  `load_backbone`, so a loaded model starts in CLIP's joint space), L2-normalised dot product with the queries,
  then a learned per-token shift and scale (elu + 1); padded queries get -1e6. The shift starts at the logit
  of `prior_prob`, as usual for sigmoid focal losses.
- Objectness (OWLv2): a 3-layer MLP with one output on `stop_gradient` of the token features.
- Mask head (not in OWL; MaskFormer / CondInst style, no ROI ops): a per-token mask embedding (3-layer MLP to
  E) dotted with a per-pixel embedding map at stride `mask_stride` (S / mask_stride = Hm). The pixel map is
  built from the token grid (1x1 projection, then 2x transposed convolutions up to the mask stride) plus a
  light strided-conv stem on the pixels (edges finer than a patch), a 3x3 conv and a 1x1 to E. Mask logits are
  materialised only for chosen tokens (`mask_logits(out, index)`): all N tokens at full resolution would not fit.

Shapes: image uint8 [B, S, S, 3] (normalised inside with CLIP's mean/std), queries float32 [B, Q, D],
query_valid bool [B, Q] ->
  pred_boxes [B, N, 4] cxcywh in [0, 1]; pred_logits [B, N, Q]; objectness [B, N] (logits);
  mask_embed [B, N, E]; pixel_embed [B, Hm, Hm, E]   (all float32).

`postprocess` keeps the top-k (token, query) pairs per image (jit friendly), `flops_per_example` counts the
analytic forward FLOPs (the class queries are `zipjax.pipeline.semantic.text_queries`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zipjax.errors import CheckpointError, InputError
from zipjax.models.clip_layers import ResidualAttentionBlock, layer_norm
from zipjax.models.random_init import random_variables
from zipjax.models.tree import flatten, unflatten
from zipjax.ops.box_ops import cxcywh_to_xyxy
from zipjax.ops.resize import resize_bilinear
from zipjax.preprocess import CLIP_MEAN, CLIP_STD
from zipjax.schema import BOOL, PROBABILITY, Choice, Float, Int, check, from_mapping, setting

QUERY_PAD_LOGIT = -1e6
BOX_PARAMS = ("logit", "ltrb")
SCORES = ("class", "class_objectness", "class_mask")


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  """Architecture and compute options of the detector (hashable: usable as a static jit argument). Each field's
  rule (type and range) is declared with it (`zipjax.schema.setting`): the config check of `config.model` uses
  the same rules.

  Attributes:
    input_size: square input side S (images are padded to it); a multiple of patch_size and mask_stride.
    patch_size: ViT patch side (the token grid is S / patch_size).
    width: ViT width W.
    layers: ViT depth.
    heads: attention heads.
    embed_dim: query (CLIP text embedding) width D.
    mask_stride: stride of the pixel-embedding map (patch_size / mask_stride must be a power of two).
    mask_dim: mask embedding width E.
    pixel_width: channels of the pixel decoder.
    stem_width: channels of the pixel stem (strided convolutions on the image); 0 disables the stem.
    prior_prob: initial class / objectness probability (logit bias of the untrained heads).
    drop_path: stochastic depth rate of the last block (linear from 0 at the first); active with train=True.
    remat: rematerialise each ViT block in the backward pass.
    dtype: compute dtype of the backbone and pixel decoder ('float32' or 'bfloat16'); heads and outputs are
      float32, parameters stay float32.
    merge_class_token: how the CLS token enters the token features: 'mul-ln' (OWL-ViT: patch tokens times
      CLS, then LayerNorm) or 'drop' (LayerNorm of the patch tokens only).
    top_k: detections kept per image by `postprocess`.
    score: detection score: 'class' (sigmoid of the class logit), 'class_objectness' (geometric mean of the
      class and objectness probabilities), or 'class_mask' (the class probability times the square of the mask's
      quality, the mean probability of its pixels: Mask2Former's mask score; applied on the host by
      `zipjax.train.predict`, after `postprocess` picked the top-k by class).
    box_source: boxes of the detections (`zipjax.train.predict`): 'head' (the box head) or 'mask' (the extent of
      the mask, see `zipjax.train.predict.refine`: the box of the low-confidence region that holds the mask's
      largest piece, inside the head's box widened by half its size; the head's box where that leaves no mask).
    box_param: how the box head's 4 outputs make a box: 'logit' (OWL-ViT: sigmoid of output + the logit of the
      token's cell, cxcywh) or 'ltrb' (the distances from the token's cell centre to the left, top, right and
      bottom edges, (0.5 / g) * exp(output): translation-equivariant, so a border token moves its box as far as a
      central one; an untrained head predicts its own cell either way).
    mask_nms: greedy mask-IoU suppression of the detections at this IoU (`zipjax.train.predict`; 0: off).
  """
  input_size: int = setting(768, Int(1))
  patch_size: int = setting(16, Int(1))
  width: int = setting(768, Int(1))
  layers: int = setting(12, Int(1))
  heads: int = setting(12, Int(1))
  embed_dim: int = setting(512, Int(1))
  mask_stride: int = setting(4, Int(1))
  mask_dim: int = setting(64, Int(1))
  pixel_width: int = setting(128, Int(1))
  stem_width: int = setting(32, Int(0))
  prior_prob: float = setting(0.01, Float(0.0, 1.0, lo_open=True, hi_open=True))  # its logit is a bias
  drop_path: float = setting(0.0, Float(0.0, 1.0, hi_open=True))                  # 1 drops every block
  remat: bool = setting(False, BOOL)
  dtype: str = setting("float32", Choice("float32", "bfloat16"))
  merge_class_token: str = setting("mul-ln", Choice("mul-ln", "drop"))
  top_k: int = setting(100, Int(1))
  score: str = setting("class", Choice(*SCORES))
  box_source: str = setting("head", Choice("head", "mask"))
  box_param: str = setting("logit", Choice(*BOX_PARAMS))
  mask_nms: float = setting(0.0, PROBABILITY)

  def __post_init__(self):
    check(self, "detector config")  # every field's rule, then the relations between fields
    s, p, m = self.input_size, self.patch_size, self.mask_stride
    if s % p:
      raise InputError(f"detector config: input_size {s} is not a multiple of patch_size {p}")
    if p % m or (p // m) & (p // m - 1):
      raise InputError(f"detector config: patch_size / mask_stride must be a power of two, got {p} / {m}")
    if m & (m - 1):
      raise InputError(f"detector config: mask_stride must be a power of two, got {m}")
    if self.width % self.heads:
      raise InputError(f"detector config: width {self.width} is not a multiple of heads {self.heads}")

  @property
  def grid(self) -> int:
    """Token grid side g (N = g * g tokens)."""
    return self.input_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    return self.grid * self.grid

  @property
  def mask_size(self) -> int:
    """Side Hm of the pixel-embedding map and of the training masks."""
    return self.input_size // self.mask_stride

  @classmethod
  def from_config(cls, config: Mapping[str, Any] | Any) -> "DetectorConfig":
    """From a dict or ml_collections ConfigDict (`config.model`); unknown keys are an error."""
    return from_mapping(cls, config, "detector config")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def replace(self, **kw) -> "DetectorConfig":
    return dataclasses.replace(self, **kw)


def _logit(p: float) -> float:
  return math.log(p) - math.log1p(-p)


def box_bias(grid: int) -> np.ndarray:
  """Box bias [g*g, 4] (cxcywh logits): each token's cell centre ((i + 0.5) / g) and cell size 1 / g, so
  sigmoid(bias) is the token's own grid cell. Row-major like the token sequence (x fastest)."""
  c = (np.arange(grid, dtype=np.float64) + 0.5) / grid
  cx, cy = np.meshgrid(c, c)  # [g, g] each, cx varies along columns
  size = np.full_like(cx, 1.0 / grid)
  boxes = np.stack([cx, cy, size, size], axis=-1).reshape(grid * grid, 4)  # [N, 4]
  return (np.log(boxes) - np.log1p(-boxes)).astype(np.float32)


def cell_centres(grid: int) -> np.ndarray:
  """[g*g, 2] (x, y) centres of the token cells in [0, 1], row-major like the token sequence (x fastest)."""
  c = (np.arange(grid, dtype=np.float64) + 0.5) / grid
  cx, cy = np.meshgrid(c, c)
  return np.stack([cx, cy], axis=-1).reshape(grid * grid, 2).astype(np.float32)


def decode_boxes(raw: jax.Array, grid: int, param: str = "logit") -> jax.Array:
  """Box head output [..., N, 4] -> cxcywh boxes in image units (see `DetectorConfig.box_param`)."""
  if param == "logit":
    return jax.nn.sigmoid(raw + jnp.asarray(box_bias(grid)))
  centre = jnp.asarray(cell_centres(grid))  # [N, 2]
  dist = (0.5 / grid) * jnp.exp(jnp.clip(raw, -8.0, math.log(2.0 * grid)))  # [..., N, 4] left, top, right, bottom
  lo = centre - dist[..., :2]
  hi = centre + dist[..., 2:]
  return jnp.concatenate([(lo + hi) / 2, hi - lo], axis=-1)


# ------------------------------------------------------------------------------------------------ modules
class DropPathBlock(ResidualAttentionBlock):
  """CLIP's pre-LN block with stochastic depth on each residual branch (same parameters as the parent).

  Attributes:
    drop_path: probability of dropping a branch for an example (train only); kept branches scale by 1/keep.
  """
  drop_path: float = 0.0

  def _drop(self, y: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.drop_path == 0.0:
      return y
    keep = 1.0 - self.drop_path
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (y.shape[0],) + (1,) * (y.ndim - 1))
    return jnp.where(mask, y / keep, jnp.zeros_like(y))

  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:  # pylint: disable=arguments-renamed
    x = x + self._drop(self.attn(self._ln(self.ln_1, x)), deterministic)
    return x + self._drop(self.mlp(self._ln(self.ln_2, x)), deterministic)


class BlockStack(nn.Module):
  """`layers` blocks named resblocks_{i} (the names of clip_layers.Transformer).

  Attributes:
    width: token width.
    layers: depth.
    heads: attention heads.
    drop_path: stochastic depth rate of the last block (linear in depth).
    remat: wrap each block in `nn.remat`.
    dtype: compute dtype.
  """
  width: int
  layers: int
  heads: int
  drop_path: float = 0.0
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    block_cls = nn.remat(DropPathBlock, static_argnums=(2,)) if self.remat else DropPathBlock
    for i in range(self.layers):
      rate = self.drop_path * i / max(self.layers - 1, 1)
      x = block_cls(self.width, self.heads, dtype=self.dtype, drop_path=rate, name=f"resblocks_{i}")(
          x, deterministic)
    return x


class ViTBackbone(nn.Module):
  """CLIP's VisionTransformer without the final projection (`visual.proj` becomes the class head's dense0).

  Parameter names mirror zipjax.models.clip_vit.VisionTransformer (conv1, class_embedding,
  positional_embedding, ln_pre, transformer/resblocks_{i}, ln_post). The positional embedding is stored at the
  detector's grid (load_backbone resizes CLIP's).

  Attributes:
    input_size: input side S.
    patch_size: patch side.
    width: token width.
    layers: depth.
    heads: attention heads.
    drop_path: stochastic depth rate (last block).
    remat: rematerialise blocks.
    dtype: compute dtype.
  """
  input_size: int
  patch_size: int
  width: int
  layers: int
  heads: int
  drop_path: float = 0.0
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    """Normalised pixels [B, S, S, 3] -> ln_post(tokens) [B, 1 + N, W] float32 (CLS first)."""
    b = x.shape[0]
    grid = self.input_size // self.patch_size
    scale = self.width ** -0.5
    x = nn.Conv(self.width, (self.patch_size,) * 2, strides=(self.patch_size,) * 2, padding="VALID",
                use_bias=False, dtype=self.dtype, name="conv1")(x.astype(self.dtype))  # [B, g, g, W]
    x = x.reshape(b, grid * grid, self.width)  # [B, N, W]
    cls = self.param("class_embedding", nn.initializers.normal(scale), (self.width,))
    pos = self.param("positional_embedding", nn.initializers.normal(scale), (grid * grid + 1, self.width))
    cls = jnp.broadcast_to(cls.astype(x.dtype), (b, 1, self.width))  # [B, 1, W]
    x = jnp.concatenate([cls, x], axis=1) + pos.astype(x.dtype)  # [B, 1 + N, W]
    x = layer_norm("ln_pre")(x).astype(self.dtype)
    x = BlockStack(self.width, self.layers, self.heads, self.drop_path, self.remat, self.dtype,
                   name="transformer")(x, deterministic)
    return layer_norm("ln_post")(x)


class PredictorMLP(nn.Module):
  """`num_layers` Dense layers with GELU between them (OWL-ViT's head MLP).

  Attributes:
    out_dim: output width.
    hidden_dim: width of the hidden layers.
    num_layers: number of Dense layers.
    zero_last: initialise the last kernel at zero (the head starts at its bias).
    out_bias: initial bias of the last layer.
  """
  out_dim: int
  hidden_dim: int
  num_layers: int = 3
  zero_last: bool = False
  out_bias: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_layers - 1):
      x = nn.gelu(nn.Dense(self.hidden_dim, name=f"dense{i}")(x), approximate=False)
    kernel_init = nn.initializers.zeros if self.zero_last else nn.initializers.lecun_normal()
    return nn.Dense(self.out_dim, kernel_init=kernel_init, bias_init=nn.initializers.constant(self.out_bias),
                    name=f"dense{self.num_layers - 1}")(x)


class ClassHead(nn.Module):
  """Open-vocabulary class logits: cosine similarity of token and query embeddings, per-token shift and scale.

  Attributes:
    embed_dim: query width D.
    prior_prob: initial probability (bias of the shift).
  """
  embed_dim: int
  prior_prob: float = 0.01

  @nn.compact
  def __call__(self, x: jax.Array, queries: jax.Array, query_valid: jax.Array) -> jax.Array:
    """x [B, N, W], queries [B, Q, D], query_valid bool [B, Q] -> logits [B, N, Q]."""
    emb = nn.Dense(self.embed_dim, name="dense0")(x)  # [B, N, D]
    emb = emb / (jnp.linalg.norm(emb, axis=-1, keepdims=True) + 1e-6)
    q = queries / (jnp.linalg.norm(queries, axis=-1, keepdims=True) + 1e-6)
    logits = jnp.einsum("bnd,bqd->bnq", emb, q)  # [B, N, Q]
    shift = nn.Dense(1, kernel_init=nn.initializers.normal(1e-2),
                     bias_init=nn.initializers.constant(_logit(self.prior_prob)), name="logit_shift")(x)  # [B,N,1]
    scale = nn.elu(nn.Dense(1, kernel_init=nn.initializers.normal(1e-2), name="logit_scale")(x)) + 1.0
    logits = (logits + shift) * scale
    return jnp.where(query_valid[:, None, :], logits, QUERY_PAD_LOGIT)


class PixelDecoder(nn.Module):
  """Per-pixel embeddings at stride `mask_stride` from the token grid and a light pixel stem.

  Attributes:
    width: decoder channels.
    out_dim: embedding width E.
    up_steps: number of 2x transposed convolutions (log2(patch / mask_stride)).
    stem_steps: number of stride-2 convolutions of the stem (log2(mask_stride)).
    stem_width: stem channels (0: no stem).
    dtype: compute dtype.
  """
  width: int
  out_dim: int
  up_steps: int
  stem_steps: int
  stem_width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, pixels: jax.Array) -> jax.Array:
    """tokens [B, g, g, W], normalised pixels [B, S, S, 3] -> [B, Hm, Hm, E] float32."""
    ln = lambda name: nn.LayerNorm(dtype=jnp.float32, name=name)  # noqa: E731
    x = nn.Dense(self.width, dtype=self.dtype, name="proj")(tokens.astype(self.dtype))  # [B, g, g, C]
    for i in range(self.up_steps):
      x = nn.ConvTranspose(self.width, (2, 2), strides=(2, 2), dtype=self.dtype, name=f"up{i}")(x)  # 2x side
      x = nn.gelu(ln(f"up{i}_ln")(x), approximate=False).astype(self.dtype)
    if self.stem_width:
      y = pixels.astype(self.dtype)
      for i in range(self.stem_steps):
        y = nn.Conv(self.stem_width, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    name=f"stem{i}")(y)  # side / 2
        y = nn.gelu(y, approximate=False)
      x = x + nn.Dense(self.width, dtype=self.dtype, name="stem_proj")(y)  # [B, Hm, Hm, C]
    x = nn.Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name="fuse")(x)
    x = nn.gelu(ln("fuse_ln")(x), approximate=False)
    return nn.Dense(self.out_dim, dtype=jnp.float32, name="out")(x.astype(jnp.float32))  # [B, Hm, Hm, E]


class Detector(nn.Module):
  """The detector (see the module docstring for the design and shapes).

  Attributes:
    config: the architecture.
  """
  config: DetectorConfig

  def normalize(self, image: jax.Array) -> jax.Array:
    """uint8 (or float 0-255) [B, S, S, 3] -> CLIP-normalised float32."""
    x = image.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)

  @nn.compact
  def __call__(self, image: jax.Array, queries: jax.Array, query_valid: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    c = self.config
    dtype = jnp.dtype(c.dtype)
    s, g = c.input_size, c.grid
    if image.ndim != 4 or image.shape[1:] != (s, s, 3):
      raise InputError(f"detector expects images [B, {s}, {s}, 3], got {image.shape}")
    if queries.ndim != 3 or queries.shape[0] != image.shape[0] or queries.shape[-1] != c.embed_dim:
      raise InputError(f"detector expects queries [B={image.shape[0]}, Q, {c.embed_dim}], got {queries.shape}")
    if query_valid is None:
      query_valid = jnp.ones(queries.shape[:2], bool)
    b = image.shape[0]
    pixels = self.normalize(image)  # [B, S, S, 3]
    tokens = ViTBackbone(s, c.patch_size, c.width, c.layers, c.heads, c.drop_path, c.remat, dtype,
                         name="backbone")(pixels, deterministic=not train)  # [B, 1 + N, W]
    feats = tokens[:, 1:] * tokens[:, :1] if c.merge_class_token == "mul-ln" else tokens[:, 1:]  # [B, N, W]
    feats = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name="merged_class_token")(feats)

    boxes = decode_boxes(PredictorMLP(4, c.width, zero_last=True, name="box_head")(feats), g, c.box_param)
    logits = ClassHead(c.embed_dim, c.prior_prob, name="class_head")(feats, queries.astype(jnp.float32),
                                                                   query_valid.astype(bool))  # [B, N, Q]
    objectness = PredictorMLP(1, c.width, zero_last=True, out_bias=_logit(c.prior_prob), name="objectness_head")(
        jax.lax.stop_gradient(feats))[..., 0]  # [B, N]
    mask_embed = PredictorMLP(c.mask_dim, c.width, name="mask_head")(feats)  # [B, N, E]
    up_steps = int(round(math.log2(c.patch_size // c.mask_stride)))
    stem_steps = int(round(math.log2(c.mask_stride)))
    grid_tokens = feats.reshape(b, g, g, c.width)  # [B, g, g, W]
    pixel_embed = PixelDecoder(c.pixel_width, c.mask_dim, up_steps, stem_steps, c.stem_width, dtype,
                               name="pixel_decoder")(grid_tokens, pixels)  # [B, Hm, Hm, E]
    return {"pred_boxes": boxes, "pred_logits": logits, "objectness": objectness,
            "mask_embed": mask_embed, "pixel_embed": pixel_embed}


# ------------------------------------------------------------------------------------------------ helpers
def mask_logits(out: Mapping[str, jax.Array], index: jax.Array) -> jax.Array:
  """Mask logits of chosen tokens: index int [B, K] (negative = padding, gives token 0) -> [B, K, Hm, Hm]."""
  index = jnp.clip(index, 0, out["mask_embed"].shape[1] - 1)
  emb = jnp.take_along_axis(out["mask_embed"], index[..., None], axis=1)  # [B, K, E]
  return jnp.einsum("bke,bhwe->bkhw", emb, out["pixel_embed"])  # [B, K, Hm, Hm]


def variable_shapes(cfg: DetectorConfig) -> dict[str, tuple]:
  """'collection/path' -> shape of every variable of `Detector(cfg)` (abstract trace, nothing allocated)."""
  shapes = jax.eval_shape(functools.partial(_init, cfg), jax.random.key(0))
  return {k: tuple(v.shape) for k, v in flatten(shapes).items()}


def init_variables(cfg: DetectorConfig, rng: int | jax.Array = 0) -> dict:
  """Random variables of `Detector(cfg)` drawn on the host (float32 numpy), without Flax `init`.

  `Detector(cfg).init(...)` gives the same structure but is slow: eager it runs the forward pass, jitted it
  compiles one threefry kernel per parameter (seconds each on CPU). Here the shapes come from an abstract
  trace and the values from `zipjax.models.random_init` (kernels N(0, 1/fan_in), LayerNorm 1/0, biases 0),
  with the module's own special cases: CLIP's N(0, W^-1/2) for the class/positional embeddings and the
  attention input projection, zero last layers for the box and objectness heads, the prior-probability logit
  as the bias of the class shift and of the objectness, small shift/scale kernels. Put the result on devices
  with `jax.device_put(variables, shardings)`. `rng`: an int seed or a jax key (its key data seeds numpy).
  """
  if not isinstance(rng, int):
    rng = int(np.asarray(jax.random.key_data(rng), np.uint32).astype(np.uint64).sum() % (2 ** 31))
  shapes = variable_shapes(cfg)
  std = {"class_embedding": cfg.width ** -0.5, "positional_embedding": cfg.width ** -0.5,
         "in_proj_weight": cfg.width ** -0.5}
  flat = flatten(random_variables(shapes, rng, std=std))
  draw = np.random.default_rng(rng + 1)
  prior = np.float32(_logit(cfg.prior_prob))
  for head in ("box_head", "objectness_head"):
    last = f"params/{head}/dense2"
    flat[f"{last}/kernel"] = np.zeros_like(flat[f"{last}/kernel"])
  flat["params/objectness_head/dense2/bias"] = np.full_like(flat["params/objectness_head/dense2/bias"], prior)
  flat["params/class_head/logit_shift/bias"] = np.full_like(flat["params/class_head/logit_shift/bias"], prior)
  for name in ("logit_shift", "logit_scale"):
    k = f"params/class_head/{name}/kernel"
    flat[k] = (draw.standard_normal(flat[k].shape) * 1e-2).astype(np.float32)
  return unflatten(flat)


def _init(cfg: DetectorConfig, rng: jax.Array) -> dict:
  s = cfg.input_size
  image = jnp.zeros((1, s, s, 3), jnp.uint8)
  queries = jnp.zeros((1, 1, cfg.embed_dim), jnp.float32)
  return Detector(cfg).init(rng, image, queries, jnp.ones((1, 1), bool))


def load_backbone(variables: Mapping, clip_source, cfg: DetectorConfig | None = None) -> dict:
  """Copies a CLIP ViT's vision weights into detector variables -> new variables (the input is not changed).

  `clip_source`: a loaded CLIP model (`zipjax.load_clip`: its `config`, `variables` and `name`).
  The backbone gets `visual/*` (the positional embedding resized bilinearly to the detector's grid, CLS kept)
  and `class_head/dense0` gets `visual/proj` as kernel (zero bias). Sizes that differ from the detector's
  (patch, width, depth, embedding width; attention heads when `cfg` is given) raise CheckpointError naming
  the field.
  """
  config, clip_vars = clip_source.config, clip_source.variables
  name = getattr(clip_source, "name", "") or "CLIP model"
  if not config.is_vit:
    raise CheckpointError(f"{name}: the detector backbone must be a CLIP ViT, this is a ModifiedResNet")
  visual = jax.tree_util.tree_map(np.asarray, dict(clip_vars["params"]["visual"]))
  params = dict(variables["params"])
  backbone = dict(params["backbone"])
  width = backbone["class_embedding"].shape[0]
  layers = sum(1 for k in backbone["transformer"] if k.startswith("resblocks_"))
  patch = backbone["conv1"]["kernel"].shape[0]
  embed = params["class_head"]["dense0"]["kernel"].shape[1]
  checks = {"vision_patch_size": (config.vision_patch_size, patch), "vision_width": (config.vision_width, width),
            "vision_layers": (config.vision_layers, layers), "embed_dim": (config.embed_dim, embed)}
  if cfg is not None:
    checks["vision_heads"] = (config.vision_heads, cfg.heads)
  for field, (theirs, ours) in checks.items():
    if theirs != ours:
      raise CheckpointError(f"{name}: CLIP {field} is {theirs} but the detector needs {ours}")
  grid_n = backbone["positional_embedding"].shape[0] - 1
  grid = int(round(math.sqrt(grid_n)))
  side = config.image_resolution // config.vision_patch_size
  pos = visual["positional_embedding"]  # [1 + side^2, W]
  patch_pos = pos[1:].reshape(side, side, width)  # [side, side, W]
  patch_pos = np.asarray(resize_bilinear(jnp.asarray(patch_pos), (grid, grid))).reshape(grid * grid, width)
  new_backbone = {k: visual[k] for k in ("conv1", "class_embedding", "ln_pre", "transformer", "ln_post")}
  new_backbone["positional_embedding"] = np.concatenate([pos[:1], patch_pos], axis=0)  # [1 + N, W]
  for path, (ours, theirs) in _leaf_pairs(backbone, new_backbone).items():
    if ours.shape != theirs.shape:
      raise CheckpointError(f"{name}: backbone/{path} has shape {theirs.shape}, the detector needs {ours.shape}")
  params["backbone"] = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), new_backbone)
  head = dict(params["class_head"])
  head["dense0"] = {"kernel": jnp.asarray(visual["proj"], jnp.float32),
                    "bias": jnp.zeros_like(head["dense0"]["bias"])}
  params["class_head"] = head
  out = dict(variables)
  out["params"] = params
  return out


def _leaf_pairs(ours: Mapping, theirs: Mapping, prefix: str = "") -> dict:
  a, b = flatten(ours, prefix), flatten(theirs, prefix)
  if set(a) != set(b):
    missing = sorted(set(a) ^ set(b))[:3]
    raise CheckpointError(f"CLIP vision parameters do not match the detector backbone (first differences: "
                          f"{missing})")
  return {k: (a[k], b[k]) for k in a}


@functools.partial(jax.jit, static_argnames=("cfg", "top_k"))
def postprocess(out: Mapping[str, jax.Array], cfg: DetectorConfig, top_k: int | None = None) -> dict:
  """Top-k (token, query) pairs per image by score (the device part of inference; `zipjax.train.predict` makes
  the final boxes, masks and scores of `box_source`, `score='class_mask'` and `mask_nms` on the host).

  Returns a dict of: boxes float32 [B, K, 4] xyxy in input pixels (0..S, from the box head), scores float32
  [B, K] (class, or class and objectness), classes int32 [B, K] (query index), tokens int32 [B, K],
  mask_logits float32 [B, K, Hm, Hm]. K = top_k or cfg.top_k, at most N * Q. Scores of padded queries are 0.
  """
  logits = out["pred_logits"]  # [B, N, Q]
  b, n, q = logits.shape
  k = min(int(top_k or cfg.top_k), n * q)
  prob = jax.nn.sigmoid(logits)
  if cfg.score == "class_objectness":
    prob = jnp.sqrt(prob * jax.nn.sigmoid(out["objectness"])[..., None])
  prob = jnp.where(logits <= QUERY_PAD_LOGIT / 2, 0.0, prob)
  scores, flat = jax.lax.top_k(prob.reshape(b, n * q), k)  # [B, K]
  tokens = (flat // q).astype(jnp.int32)
  classes = (flat % q).astype(jnp.int32)
  boxes = jnp.take_along_axis(out["pred_boxes"], tokens[..., None], axis=1)  # [B, K, 4]
  boxes = jnp.clip(cxcywh_to_xyxy(boxes), 0.0, 1.0) * cfg.input_size
  masks = mask_logits(out, tokens)  # [B, K, Hm, Wm]
  return {"boxes": boxes, "scores": scores, "classes": classes, "tokens": tokens, "mask_logits": masks}


def flops_per_example(cfg: DetectorConfig, num_queries: int = 1, train: bool = False) -> float:
  """Analytic FLOPs (2 per multiply-add) of one image's forward pass; `train=True` counts 3x (forward +
  backward). Counts matmuls and convolutions (attention included); elementwise work is left out."""
  s, p, w, d = cfg.input_size, cfg.patch_size, cfg.width, cfg.embed_dim
  n = cfg.num_tokens
  t = n + 1
  f = 2.0 * n * (p * p * 3) * w  # patch embedding
  per_block = 2.0 * t * w * 3 * w + 2.0 * 2 * t * t * w + 2.0 * t * w * w + 2.0 * 2 * t * w * 4 * w
  f += cfg.layers * per_block
  mlp3 = lambda out_dim: 2.0 * n * (w * w + w * w + w * out_dim)  # noqa: E731
  f += mlp3(4) + mlp3(1) + mlp3(cfg.mask_dim)  # box, objectness, mask heads
  f += 2.0 * n * w * d + 2.0 * n * num_queries * d + 2.0 * n * w * 2  # class head
  c, e, hm = cfg.pixel_width, cfg.mask_dim, cfg.mask_size
  f += 2.0 * n * w * c  # pixel decoder projection
  side = cfg.grid
  for _ in range(int(round(math.log2(p // cfg.mask_stride)))):
    side *= 2
    f += 2.0 * side * side * c * c  # 2x2 stride-2 transposed conv: one tap per output pixel
  if cfg.stem_width:
    side, cin = s, 3
    for _ in range(int(round(math.log2(cfg.mask_stride)))):
      side //= 2
      f += 2.0 * side * side * 9 * cin * cfg.stem_width
      cin = cfg.stem_width
    f += 2.0 * hm * hm * cfg.stem_width * c
  f += 2.0 * hm * hm * 9 * c * c + 2.0 * hm * hm * c * e  # fuse conv + output projection
  return f * (3.0 if train else 1.0)


__all__ = ["DetectorConfig", "Detector", "box_bias", "cell_centres", "decode_boxes", "mask_logits", "init_variables",
           "variable_shapes", "load_backbone", "postprocess", "flops_per_example", "QUERY_PAD_LOGIT",
           "BOX_PARAMS", "SCORES"]
