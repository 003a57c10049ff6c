"""CLIP (OpenAI `clip.model.CLIP`) as one Flax module: image tower (`visual`) + text tower at the root.

Submodule and parameter names mirror the PyTorch state dict (`visual.transformer.resblocks.3` ->
`visual/transformer/resblocks_3`), so the converter's key table stays short.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from zipjax.models.clip_layers import Transformer, layer_norm
from zipjax.models.clip_resnet import ModifiedResNet
from zipjax.models.clip_vit import VisionTransformer
from zipjax.models.tree import flatten
from zipjax.schema import unknown_keys


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Architecture of a CLIP model (the fields of OpenAI's `build_model`).

  `vision_layers` is an int for ViT and a 4-tuple for ModifiedResNet; `vision_patch_size` is None for ResNets.
  `surgery_depth` is how many final ViT blocks run the CLIP Surgery dual path when surgery is requested.
  """
  embed_dim: int
  image_resolution: int
  vision_layers: Union[int, Sequence[int]]
  vision_width: int
  vision_patch_size: Optional[int]
  context_length: int = 77
  vocab_size: int = 49408
  transformer_width: int = 512
  transformer_heads: int = 8
  transformer_layers: int = 12
  surgery_depth: int = 6
  dtype: str = "float32"

  def __post_init__(self):
    if not isinstance(self.vision_layers, int):
      object.__setattr__(self, "vision_layers", tuple(int(v) for v in self.vision_layers))

  @property
  def is_vit(self) -> bool:
    return self.vision_patch_size is not None

  @property
  def vision_heads(self) -> int:
    return self.vision_width // 64 if self.is_vit else self.vision_width * 32 // 64

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    if isinstance(d["vision_layers"], tuple):
      d["vision_layers"] = list(d["vision_layers"])
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "CLIPConfig":
    unknown = unknown_keys(cls, d)
    if unknown:
      raise ValueError(f"unknown CLIP config fields: {unknown}")
    return cls(**d)

  def replace(self, **kw) -> "CLIPConfig":
    return dataclasses.replace(self, **kw)


def _text(width, heads, layers, embed):
  return dict(transformer_width=width, transformer_heads=heads, transformer_layers=layers, embed_dim=embed)


# The published OpenAI architectures (as inferred by clip.model.build_model from their state dicts).
ARCHITECTURES: dict[str, CLIPConfig] = {
    "RN50": CLIPConfig(image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64, vision_patch_size=None,
                       **_text(512, 8, 12, 1024)),
    "RN101": CLIPConfig(image_resolution=224, vision_layers=(3, 4, 23, 3), vision_width=64,
                        vision_patch_size=None, **_text(512, 8, 12, 512)),
    "RN50x4": CLIPConfig(image_resolution=288, vision_layers=(4, 6, 10, 6), vision_width=80,
                         vision_patch_size=None, **_text(640, 10, 12, 640)),
    "RN50x16": CLIPConfig(image_resolution=384, vision_layers=(6, 8, 18, 8), vision_width=96,
                          vision_patch_size=None, **_text(768, 12, 12, 768)),
    "RN50x64": CLIPConfig(image_resolution=448, vision_layers=(3, 15, 36, 10), vision_width=128,
                          vision_patch_size=None, **_text(1024, 16, 12, 1024)),
    "ViT-B/32": CLIPConfig(image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                           **_text(512, 8, 12, 512)),
    "ViT-B/16": CLIPConfig(image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
                           **_text(512, 8, 12, 512)),
    "ViT-L/14": CLIPConfig(image_resolution=224, vision_layers=24, vision_width=1024, vision_patch_size=14,
                           **_text(768, 12, 12, 768)),
    "ViT-L/14@336px": CLIPConfig(image_resolution=336, vision_layers=24, vision_width=1024,
                                 vision_patch_size=14, **_text(768, 12, 12, 768)),
}


class CLIP(nn.Module):
  """CLIP image and text towers.

  Attributes:
    config: the architecture.
  """
  config: CLIPConfig

  def setup(self):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    self.visual = image_tower(c, name="visual")
    self.token_embedding = nn.Embed(c.vocab_size, c.transformer_width,
                                    embedding_init=nn.initializers.normal(0.02))
    self.positional_embedding = self.param("positional_embedding", nn.initializers.normal(0.01),
                                           (c.context_length, c.transformer_width))
    self.transformer = Transformer(c.transformer_width, c.transformer_layers, c.transformer_heads, dtype=dtype)
    self.ln_final = layer_norm("ln_final")
    self.text_projection = self.param("text_projection", nn.initializers.normal(c.transformer_width ** -0.5),
                                      (c.transformer_width, c.embed_dim))
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(jnp.log(1 / 0.07)), ())

  def encode_image(self, pixels: jax.Array, surgery: bool = False) -> jax.Array:
    """[B, H, W, 3] normalised pixels -> [B, D] (or [B, 1 + N, D] CLIP Surgery tokens for ViTs)."""
    if surgery:
      if not self.config.is_vit:
        raise ValueError("CLIP Surgery is implemented for ViT models only")
      return self.visual.surgery(pixels, self.config.surgery_depth)
    return self.visual(pixels)

  def trunk(self, pixels: jax.Array, stage: int = 3) -> jax.Array:
    """ResNet stage output [B, h, w, C] (0 = stem, 1..4 = layer1..4); later stages are not run."""
    if self.config.is_vit:
      raise ValueError("trunk features are defined for ModifiedResNet models only")
    return self.visual.trunk(pixels, stage)

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    """[N, context_length] int token ids -> [N, D] (the EOT token's features, projected)."""
    n, length = tokens.shape
    x = self.token_embedding(tokens)  # [N, L, W]
    x = x + self.positional_embedding[:length]
    mask = jnp.triu(jnp.full((length, length), -jnp.inf, jnp.float32), k=1)  # causal
    x = self.transformer(x.astype(jnp.dtype(self.config.dtype)), mask=mask)
    x = self.ln_final(x)
    eot = jnp.argmax(tokens, axis=-1)  # the EOT id is the largest in the vocabulary
    x = x[jnp.arange(n), eot]  # [N, W]
    return jnp.dot(x, self.text_projection)

  def __call__(self, pixels: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """OpenAI's forward: (logits_per_image, logits_per_text). Touches every parameter (used by init)."""
    img = self.encode_image(pixels)
    txt = self.encode_text(tokens)
    img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
    logits = jnp.exp(self.logit_scale) * img @ txt.T
    return logits, logits.T


def image_tower(config: CLIPConfig, **kw):
  """The image tower of `CLIP(config)` as a standalone module (its variables: `variables[col]['visual']`);
  `kw` go to the module (e.g. `name`)."""
  dtype = jnp.dtype(config.dtype)
  if config.is_vit:
    return VisionTransformer(config.image_resolution, config.vision_patch_size, config.vision_width,
                             config.vision_layers, config.vision_heads, config.embed_dim, dtype=dtype, **kw)
  return ModifiedResNet(config.vision_layers, config.embed_dim, config.vision_heads, config.image_resolution,
                        config.vision_width, dtype=dtype, **kw)


def variable_shapes(config: CLIPConfig) -> dict[str, tuple]:
  """'collection/path' -> shape of every variable of the model, without allocating anything."""
  model = CLIP(config)
  res = config.image_resolution
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32),
                          jax.ShapeDtypeStruct((1, config.context_length), jnp.int32))
  return {k: tuple(v.shape) for k, v in flatten(shapes).items()}
