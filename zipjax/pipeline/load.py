"""The models and the vocabulary a Zip pipeline runs on: `build_models(config)` (semantic CLIP, boundary CLIP,
SAM or None, from `config.models`), `check_models` (the checks every pipeline makes of them), `text_cache`
(the on-disk text-feature cache of the semantic model) and `text_features(config, clip, names, cache)`
(prompt-ensemble features). The engine (zipjax/engine.py) and the commands use these; nothing here runs a
stage.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from zipjax import configs, weights
from zipjax.clip import ClipModel, load_clip
from zipjax.convert.clip import NO_HF_RESNET
from zipjax.errors import InputError
from zipjax.io.text_cache import TextFeatureCache, model_key, prompt_templates
from zipjax.models import storage
from zipjax.models.clip_net import CLIPConfig
from zipjax.models.tokenizer import get_tokenizer
from zipjax.pipeline import semantic
from zipjax.sam import load_sam, model_class

BOUNDARY_NOT_RESNET = f"models.boundary must be a CLIP ModifiedResNet, got a ViT; {NO_HF_RESNET}"


def check_models(config, semantic_clip, boundary_clip, sam) -> tuple[int, int]:
  """Refuses models the pipeline cannot run (InputError); -> the semantic token grid (gh, gw)."""
  size = configs.Semantic.from_config(config).input_size  # every field checked by its rule
  if not semantic_clip.config.is_vit:
    raise InputError("models.semantic must be a CLIP ViT (CLIP Surgery)")
  if boundary_clip.config.is_vit:
    raise InputError(BOUNDARY_NOT_RESNET)
  if config.sam.enabled and sam is None:
    raise InputError("config.sam.enabled is set but no SAM model was given")
  patch = semantic_clip.config.vision_patch_size
  if size % patch:
    raise InputError(f"semantic.input_size {size} is not a multiple of the patch {patch}")
  return (size // patch,) * 2


def templates(config) -> list[str]:
  """The prompt templates of `config.semantic` (the 85-template ensemble, or the bare class name)."""
  return prompt_templates() if config.semantic.prompt_ensemble else ["{}"]


def text_cache(config, semantic_clip) -> TextFeatureCache:
  """The text-feature cache `<cache>/text/<key>` of the semantic model and the config's templates."""
  return TextFeatureCache(model_key(semantic_clip.name, semantic_clip.config.to_dict()), templates(config))


def text_features(config, semantic_clip, names: Sequence[str], cache=None) -> np.ndarray:
  """Prompt-ensemble features [n, D] of `names` (the semantic CLIP's float32 text tower), through the on-disk
  `cache` when one is given (only missing names are encoded and appended). Names whose prompts exceed
  the text context are encoded cut off, with a `semantic.PromptTruncationWarning`."""
  tpl = templates(config)
  tok = get_tokenizer(semantic_clip.config.context_length)
  for name, (n, longest) in semantic.truncated_prompts(tok, names, tpl).items():
    shown = name if len(name) <= 60 else name[:57] + "..."
    warnings.warn(f"class name {shown!r} is too long for the text encoder: {n} of its {len(tpl)} prompts "
                  f"have up to {longest} tokens, more than the context of {tok.context_length}; the encoder "
                  "sees them cut off", semantic.PromptTruncationWarning, stacklevel=3)
  cached = cache.load() if cache is not None else {}
  missing = [n for n in dict.fromkeys(names) if n not in cached]
  if missing:
    feats = semantic.ensemble_text_features(
        semantic_clip.encode_tokens, lambda t: tok.tokenize(t, truncate=True), missing, tpl,
        int(config.semantic.text_batch_size))
    cached.update({n: np.asarray(f) for n, f in zip(missing, feats)})
    if cache is not None:
      cache.store({n: cached[n] for n in missing})  # appends the new classes only
  return np.stack([cached[n] for n in names]).astype(np.float32)  # [n, D]


def _arch(spec, config_cls):
  """An architecture name, or a dict / ConfigDict of `config_cls` fields -> `config_cls`."""
  if isinstance(spec, str):
    return spec
  return config_cls.from_dict(dict(spec.to_dict() if hasattr(spec, "to_dict") else spec))


def build_sam(models_sam, random_init: bool, seed: int, leaf_filter=None, family: str = "sam"):
  """The SAM of `config.models.sam` for `config.sam.family` ('sam' or 'sam2'): random weights of `arch` (a size
  name or a dict of SamConfig / Sam2Config fields), or the checkpoint resolved through `zipjax.weights`;
  `leaf_filter` holds kernels in a compute dtype. A checkpoint of the other family is refused."""
  cls = model_class(family)
  if random_init:
    return cls.random(_arch(models_sam.arch, cls.CONFIG), seed, leaf_filter=leaf_filter)
  model = load_sam(weights.resolve(models_sam.checkpoint, family), leaf_filter=leaf_filter)
  if model.FAMILY != family:
    raise InputError(f"models.sam.checkpoint {models_sam.checkpoint!r} holds a {model.FAMILY!r} model but "
                     f"sam.family is {family!r}")
  return model


def build_models(config, random_init: bool = False):
  """(semantic CLIP, boundary CLIP, SAM or None) for `config.models` (`zipjax.weights` resolves names), held as
  the engine uses them (`zipjax.models.storage`): the boundary model is its image trunk up to
  `boundary.stage` only, and the image towers' kernels are held in their compute dtype (`models.*.dtype`,
  'auto' resolved for this platform); the semantic model's text tower stays float32."""
  m = config.models
  seed = int(m.seed)
  sem_filter = storage.LeafFilter(dtype=storage.resolve_dtype(m.semantic.get("dtype", "float32")),
                                  cast_prefixes=("params/visual/",), device=True)
  bnd_filter = storage.trunk_filter(int(config.boundary.stage),
                                    storage.resolve_dtype(m.boundary.get("dtype", "float32")), device=True)
  if random_init:
    sem = ClipModel.random(_arch(m.semantic.arch, CLIPConfig), seed, leaf_filter=sem_filter)
    bnd = ClipModel.random(_arch(m.boundary.arch, CLIPConfig), seed + 1, leaf_filter=bnd_filter)
  else:
    sem = load_clip(weights.resolve(m.semantic.checkpoint, "clip"), leaf_filter=sem_filter)
    bnd = load_clip(weights.resolve(m.boundary.checkpoint, "clip"), leaf_filter=bnd_filter)
  sam = None
  if config.sam.enabled:
    sam = build_sam(m.sam, random_init, seed + 2,
                    storage.LeafFilter(dtype=storage.resolve_dtype(m.sam.get("dtype", "float32")), device=True),
                    family=str(config.sam.get("family", "sam")))
  return sem, bnd, sam


__all__ = ["BOUNDARY_NOT_RESNET", "build_models", "build_sam", "check_models", "templates", "text_cache",
           "text_features"]
