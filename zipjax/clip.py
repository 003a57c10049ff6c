"""`zipjax.load_clip`: a CLIP model with jitted encode_image / encode_text / trunk_features."""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp

from zipjax.convert.clip import load_file
from zipjax.convert.store import is_converted, load_converted
from zipjax.errors import CheckpointError, InputError
from zipjax.models.clip_net import ARCHITECTURES, CLIP, CLIPConfig, image_tower, variable_shapes
from zipjax.models.clip_resnet import ModifiedResNet
from zipjax.models.random_init import random_variables
from zipjax.models.tokenizer import get_tokenizer
from zipjax.models.tree import flatten


class ClipModel:
  """A CLIP model and its variables. Methods are jitted once per input shape.

  Attributes:
    config: the architecture.
    module: the Flax module.
    variables: {'params': ..., 'batch_stats': ...} on device.
    name: where the weights came from.
  """

  def __init__(self, config: CLIPConfig, variables: dict, name: str = ""):
    self.config = config
    self.module = CLIP(config)
    self.variables = jax.device_put(variables)
    self.name = name
    m = self.module
    self._image = jax.jit(lambda v, x, s: m.apply(v, x, s, method=CLIP.encode_image), static_argnums=2)
    self._text = jax.jit(lambda v, t: m.apply(v, t, method=CLIP.encode_text))
    tower = image_tower(config)  # the trunk needs the image tower's variables only (a trunk-only model works)
    self._trunk = jax.jit(lambda v, x, s: tower.apply({c: t["visual"] for c, t in v.items() if "visual" in t}, x, s,
                                                     method=ModifiedResNet.trunk), static_argnums=2)

  @classmethod
  def random(cls, arch: str | CLIPConfig = "ViT-B/16", seed: int = 0, leaf_filter=None) -> "ClipModel":
    """Random weights (for smoke runs and tests); `arch` is a name from ARCHITECTURES or a config.
    `leaf_filter` (`zipjax.models.storage.LeafFilter`): keep / hold only some variables (a partial model)."""
    config = _arch(arch)
    return cls(config, random_variables(variable_shapes(config), seed, leaf_filter=leaf_filter),
               name=f"random:{seed}")

  def _check_pixels(self, pixels, what: str) -> jax.Array:
    shape = getattr(pixels, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] != 3:
      raise InputError(f"{what}: pixels must be float32 NHWC [B, H, W, 3], got shape {shape}")
    if not jnp.issubdtype(pixels.dtype, jnp.floating):
      raise InputError(f"{what}: pixels must be normalised floats, got dtype {pixels.dtype}")
    p = self.config.vision_patch_size
    if p and (shape[1] % p or shape[2] % p):
      raise InputError(f"{what}: image size {shape[1]}x{shape[2]} is not a multiple of the patch size {p}")
    return jnp.asarray(pixels, jnp.float32)

  def encode_image(self, pixels, surgery: bool = False) -> jax.Array:
    """[B, H, W, 3] normalised pixels -> [B, D] projected CLS (as OpenAI's encode_image), unnormalised.

    With `surgery=True` (ViT only): CLIP Surgery token features [B, 1 + N, D], unnormalised.
    """
    if surgery and not self.config.is_vit:
      raise InputError("CLIP Surgery (surgery=True) needs a ViT model; this is a ModifiedResNet")
    return self._image(self.variables, self._check_pixels(pixels, "encode_image"), bool(surgery))

  def encode_text(self, texts: Sequence[str]) -> jax.Array:
    """list of strings -> [N, D] (as OpenAI's encode_text), unnormalised."""
    if isinstance(texts, str):
      texts = [texts]
    if len(texts) == 0:
      raise InputError("encode_text: the list of texts is empty")
    tokens = get_tokenizer(self.config.context_length).tokenize(list(texts))
    return self._text(self.variables, jnp.asarray(tokens))

  def encode_tokens(self, tokens) -> jax.Array:
    """int32 token ids [N, context_length] -> [N, D]."""
    return self._text(self.variables, jnp.asarray(tokens, jnp.int32))

  def trunk_features(self, pixels, stage: int = 3) -> jax.Array:
    """ResNet only: output of `stage` (0 = stem, 1..4 = layer1..4) [B, h, w, C]; later stages are not run."""
    if self.config.is_vit:
      raise InputError("trunk_features needs a ModifiedResNet model; this is a ViT")
    if not 0 <= stage <= 4:
      raise InputError(f"trunk_features: stage must be 0..4, got {stage}")
    return self._trunk(self.variables, self._check_pixels(pixels, "trunk_features"), int(stage))


def _arch(arch) -> CLIPConfig:
  if isinstance(arch, CLIPConfig):
    return arch
  if arch not in ARCHITECTURES:
    raise InputError(f"unknown CLIP architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
  return ARCHITECTURES[arch]


def load_clip(src, leaf_filter=None) -> ClipModel:
  """Loads CLIP from an OpenAI checkpoint file (.pt, TorchScript or state dict, read as data) or from a
  directory written by `zipjax convert clip` (no torch needed). `leaf_filter`
  (`zipjax.models.storage.LeafFilter`): keep / hold only some variables (a partial model, e.g. a trunk)."""
  src = os.fspath(src)
  if is_converted(src):
    cfg, variables = load_converted(src, family="clip", leaf_filter=leaf_filter)
    config = CLIPConfig.from_dict(cfg)
    expected = variable_shapes(config)
    if leaf_filter is not None:
      expected = {k: v for k, v in expected.items() if leaf_filter.keeps(k)}
    flat = flatten(variables)
    bad = [k for k in expected if k not in flat or tuple(flat[k].shape) != expected[k]]
    if bad or set(flat) - set(expected):
      raise CheckpointError(f"{src}: converted variables do not match config.json "
                            f"(first mismatches: {bad[:3] or sorted(set(flat) - set(expected))[:3]})")
    return ClipModel(config, variables, name=src)
  config, variables = load_file(src)
  if leaf_filter is not None:
    variables = leaf_filter.apply(variables)
  return ClipModel(config, variables, name=src)


__all__ = ["ClipModel", "load_clip"]
