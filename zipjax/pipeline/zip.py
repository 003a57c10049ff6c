"""The Zip pipeline end to end (zip_method.md sections 1-5): images -> scored instances.

`Segmenter(config, semantic_clip, boundary_clip, sam=None)`; `set_classes(names)`; `segment(images)`.

`segment` runs on the labelling engine (`zipjax.engine.Engine`: one jitted, batched, statically shaped step per
shape bucket on the device mesh of `config.mesh`), so `zipjax segment` and `zipjax label` compute the same
instances. The engine is built on the first `segment` call; `Segmenter.engine` exposes it.

The previous host-driven implementation is kept as `Segmenter.segment_per_stage` (tests compare the engine
with it, `bench/engine.py` times both). One batch of images there:
  1. host: PIL resizes (`preprocess.clip_surgery_input`, `preprocess.boundary_input`);
  2. CLIP Surgery token features of the whole batch in one call -> image-level class probabilities and
     min-max normalised similarity maps on the token grid for all classes in one pass (`pipeline.semantic`);
  3. per image (shapes depend on the image size; each distinct size compiles once): classes kept
     (all, or those with probability >= `scoring.presence_threshold` when `scoring.classification_first`),
     bilinear upsampling to H x W, boundary features (ModifiedResNet `boundary.stage`), activation and
     discovery for all kept classes in one `discover_batch` call (`pipeline.discover`);
  4. instances -> boxes in the image (`discover.swap_box_scale`) and masks: the instance cells upsampled
     with torch legacy nearest (no SAM), or SAM's mask for the instance box (`sam.enabled`);
  5. scores, per-class NMS, top-k (`pipeline.refine`).
Its stage times accumulate in `Segmenter.stage_timings` (seconds).
"""
from __future__ import annotations

import functools
import time
import warnings
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zipjax import preprocess
from zipjax.convert.clip import NO_HF_RESNET
from zipjax.errors import InputError
from zipjax.ops import components
from zipjax.ops import resize
from zipjax.pipeline import discover as discover_lib
from zipjax.pipeline import refine
from zipjax.pipeline import semantic

BOUNDARY_NOT_RESNET = f"models.boundary must be a CLIP ModifiedResNet, got a ViT; {NO_HF_RESNET}"
STAGES = ("preprocess", "clip_surgery", "similarity", "boundary", "discover", "sam", "select")


@functools.partial(jax.jit, static_argnames=("max_instances",))
def _instance_props(labels, max_instances: int):
  """regionprops of every class's label map: [n, h, w] -> bbox int32 [n, M, 4], valid bool [n, M]."""
  props = jax.vmap(lambda l: components.regionprops(l, max_instances))(labels)
  return props["bbox"], props["valid"]


class Segmenter:
  """The pipeline with its models and the current vocabulary's text features.

  Attributes:
    config: the preset (`zipjax.configs`).
    semantic_clip: CLIP ViT for the surgery similarity maps and class scores.
    boundary_clip: CLIP ModifiedResNet for the boundary features.
    sam: a SAM model (`zipjax.load_sam`) or None; used when `config.sam.enabled`.
    names: class names of the vocabulary.
    text: float32 [n, D] prompt-ensemble features of `names`.
    redundant: float32 [D] features of "".
    mesh: the engine's mesh (None: from `config.mesh`).
    stage_timings: stage -> accumulated seconds of `segment_per_stage`.
  """

  def __init__(self, config, semantic_clip, boundary_clip, sam=None, text_cache=None, mesh=None):
    self.config = config
    self.semantic_clip = semantic_clip
    self.boundary_clip = boundary_clip
    self.sam = sam
    self.text_cache = text_cache
    self.mesh = mesh
    self.names: list[str] = []
    self.text = None
    self.redundant = None
    self.stage_timings = {s: 0.0 for s in STAGES}
    self._engine = None
    semantic.check_feature_norm(config.semantic.feature_norm)
    self.discover_params = discover_lib.params_from_config(config)
    if not semantic_clip.config.is_vit:
      raise InputError("models.semantic must be a CLIP ViT (CLIP Surgery)")
    if boundary_clip.config.is_vit:
      raise InputError(BOUNDARY_NOT_RESNET)
    if config.sam.enabled and sam is None:
      raise InputError("config.sam.enabled is set but no SAM model was given")
    patch = semantic_clip.config.vision_patch_size
    if config.semantic.input_size % patch:
      raise InputError(f"semantic.input_size {config.semantic.input_size} is not a multiple of the patch {patch}")
    self.grid = (config.semantic.input_size // patch,) * 2

  # ------------------------------------------------------------------------------------------------ text
  def text_features(self, names: Sequence[str]) -> np.ndarray:
    """Prompt-ensemble features [n, D] of `names`, through the on-disk cache when one is set."""
    return text_features(self.config, self.semantic_clip, names, self.text_cache)

  def set_classes(self, names: Sequence[str]) -> None:
    """Sets the vocabulary (computes or loads its text features and the redundant features)."""
    names = list(names)
    feats = self.text_features(names + [""])
    self.names, self.text, self.redundant = names, jnp.asarray(feats[:-1]), jnp.asarray(feats[-1])

  # ------------------------------------------------------------------------------------------------ engine
  @property
  def engine(self):
    """The `zipjax.engine.Engine` of these models (built on first use)."""
    if self._engine is None:
      from zipjax.engine import Engine  # pylint: disable=import-outside-toplevel
      self._engine = Engine(self.config, models=(self.semantic_clip, self.boundary_clip, self.sam), mesh=self.mesh,
                            text_cache=self.text_cache)
    return self._engine

  @property
  def timings(self) -> dict:
    """Engine stage -> accumulated seconds ('prepare', 'compile', 'device', 'post')."""
    if self._engine is None:
      from zipjax.engine import TIMINGS  # pylint: disable=import-outside-toplevel
      return {k: 0.0 for k in TIMINGS}
    return self._engine.timings

  def segment(self, images: Sequence[np.ndarray]) -> list[dict]:
    """Instances of the vocabulary's classes in each image, computed by the engine.

    Args:
      images: uint8 RGB [H, W, 3] arrays (any sizes).

    Returns:
      one dict per image: instances (list of {category: class index, score, box: [x0, y0, x1, y1] floats in
      pixels, mask: bool [H, W]}, by decreasing score), probs (float32 [n] image-level class
      probabilities), present (int [k] classes that went through discovery), labels (int32 [k, h, w]
      instance label maps on the boundary grid), grid ((h, w)), dropped (instances over `sam.max_boxes`).

    Raises:
      InputError: an image is not uint8 RGB, or failed in the engine (the message names the image index).
    """
    if self.text is None:
      raise InputError("set_classes() first")
    eng = self.engine
    if eng.names != self.names:
      eng.set_classes(self.names, np.concatenate([np.asarray(self.text), np.asarray(self.redundant)[None]], 0))
    outs = eng.segment(images, masks="bool")
    for i, out in enumerate(outs):
      if "error" in out:
        raise InputError(f"image {i}: {out['error']}")
    return outs

  # ------------------------------------------------------------------------------------------------ old path
  def _tick(self, stage: str, t0: float, *arrays) -> float:
    for a in arrays:
      jax.block_until_ready(a)
    t1 = time.perf_counter()
    self.stage_timings[stage] += t1 - t0
    return t1

  def segment_per_stage(self, images: Sequence[np.ndarray]) -> list[dict]:
    """The previous host-driven implementation (module docstring); same outputs as `segment` up to the
    engine's documented differences (zipjax/engine.py)."""
    if self.text is None:
      raise InputError("set_classes() first")
    cfg = self.config
    t = time.perf_counter()
    pix = np.stack([preprocess.clip_surgery_input(im, cfg.semantic.input_size) for im in images])  # [B, S, S, 3]
    t = self._tick("preprocess", t)
    tokens = self.semantic_clip.encode_image(pix, surgery=True)  # [B, 1 + N, D]
    t = self._tick("clip_surgery", t, tokens)
    probs = semantic.class_scores(tokens[:, 0], self.text, jnp.float32(cfg.semantic.logit_scale))  # [B, n]
    sim = semantic.surgery_similarity(tokens, self.text, self.redundant, feature_norm=cfg.semantic.feature_norm,
                                      grid=self.grid)  # [B, gh, gw, n]
    probs = np.asarray(probs)
    t = self._tick("similarity", t, sim)
    return [self._one(im, sim[i], probs[i]) for i, im in enumerate(images)]

  def _one(self, image: np.ndarray, sim_grid: jax.Array, probs: np.ndarray) -> dict:
    cfg = self.config
    hh, ww = image.shape[:2]
    n = len(self.names)
    if cfg.scoring.classification_first:
      present = np.nonzero(probs >= float(cfg.scoring.presence_threshold))[0]
    else:
      present = np.arange(n)
    out = {"instances": [], "probs": probs, "present": present, "labels": None, "grid": None}
    if present.size == 0:
      return out
    t = time.perf_counter()
    rows = present
    if cfg.discover.pad_classes:  # repeat the first class up to a power of two; padded rows are dropped
      k_pad = 1 << (len(present) - 1).bit_length()
      rows = np.concatenate([present, np.full(k_pad - len(present), present[0])])
    sim = semantic.upsample(sim_grid[..., jnp.asarray(rows)], (hh, ww))  # [H, W, k_pad]
    t = self._tick("similarity", t, sim)
    bpix = preprocess.boundary_input(image, cfg.boundary.input_size,
                                     int(cfg.boundary.size_multiple))[None]  # [1, H', W', 3]
    t = self._tick("preprocess", t)
    feats = self.boundary_clip.trunk_features(bpix, int(cfg.boundary.stage))  # [1, h, w, C]
    t = self._tick("boundary", t, feats)
    h, w = feats.shape[1:3]
    act = discover_lib.activation_from_similarity(jnp.moveaxis(sim, -1, 0), (h, w), cfg)  # [k, h, w]
    labels = discover_lib.discover_batch(feats, act[None], cfg)[0]  # [k_pad, h, w]
    bbox, valid = _instance_props(labels, self.discover_params.max_instances)  # [k_pad, M, 4], [k_pad, M]
    k = len(present)
    labels, bbox, valid = np.asarray(labels)[:k], np.asarray(bbox)[:k], np.asarray(valid)[:k]
    t = self._tick("discover", t)
    out["labels"], out["grid"] = labels, (h, w)
    boxes = np.asarray(discover_lib.grid_boxes_to_image(bbox, (h, w), (hh, ww), cfg))  # [k, M, 4]
    boxes = np.clip(boxes, 0, [ww, hh, ww, hh]).astype(np.float32)
    cls_idx, inst_idx = np.nonzero(valid)  # instance (class row, label - 1), raster order per class
    cats = present[cls_idx]
    inst_boxes = boxes[cls_idx, inst_idx]  # [m, 4]
    if cfg.sam.enabled:
      masks, ious, inst_boxes = self._sam_masks(image, inst_boxes)
      t = self._tick("sam", t)
      scores = refine.geometric_score(probs[cats], ious)
    else:
      iy = resize.nearest_indices(h, hh)
      ix = resize.nearest_indices(w, ww)
      masks = [labels[c][iy][:, ix] == (k + 1) for c, k in zip(cls_idx, inst_idx)]  # [H, W] each
      scores = probs[cats].astype(np.float32)
    keep = refine.select(cats, scores, masks, cfg.scoring) if len(scores) else np.zeros((0,), int)
    out["instances"] = [{"category": int(cats[i]), "score": float(scores[i]),
                         "box": [float(v) for v in inst_boxes[i]], "mask": masks[i]} for i in keep]
    self._tick("select", t)
    return out

  def _sam_masks(self, image: np.ndarray, boxes: np.ndarray):
    """SAM masks for instance boxes (xyxy, image pixels) -> (masks list, IoU [m], boxes of the masks)."""
    return refine.sam_masks(self.sam, image, boxes, self.config.sam)


def text_features(config, semantic_clip, names: Sequence[str], text_cache=None) -> np.ndarray:
  """Prompt-ensemble features [n, D] of `names` (the semantic CLIP's float32 text tower), through the on-disk
  `text_cache` when one is given (only missing names are encoded and appended). Names whose prompts exceed
  the text context are encoded cut off, with a `semantic.PromptTruncationWarning`."""
  from zipjax.io.text_cache import prompt_templates  # pylint: disable=import-outside-toplevel
  from zipjax.models.tokenizer import get_tokenizer  # pylint: disable=import-outside-toplevel
  templates = prompt_templates() if config.semantic.prompt_ensemble else ["{}"]
  tok = get_tokenizer(semantic_clip.config.context_length)
  for name, (n, longest) in semantic.truncated_prompts(tok, names, templates).items():
    shown = name if len(name) <= 60 else name[:57] + "..."
    warnings.warn(f"class name {shown!r} is too long for the text encoder: {n} of its {len(templates)} prompts "
                  f"have up to {longest} tokens, more than the context of {tok.context_length}; the encoder "
                  "sees them cut off", semantic.PromptTruncationWarning, stacklevel=3)
  cached = text_cache.load() if text_cache is not None else {}
  missing = [n for n in dict.fromkeys(names) if n not in cached]
  if missing:
    feats = semantic.ensemble_text_features(
        semantic_clip.encode_tokens, lambda t: tok.tokenize(t, truncate=True), missing, templates,
        int(config.semantic.text_batch_size))
    cached.update({n: np.asarray(f) for n, f in zip(missing, feats)})
    if text_cache is not None:
      text_cache.store({n: cached[n] for n in missing})  # appends the new classes only
  return np.stack([cached[n] for n in names]).astype(np.float32)  # [n, D]


def _clip_arch(spec):
  """An architecture name of `ARCHITECTURES` or a dict / ConfigDict of `CLIPConfig` fields."""
  from zipjax.models.clip import CLIPConfig  # pylint: disable=import-outside-toplevel
  if isinstance(spec, str):
    return spec
  d = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
  return CLIPConfig.from_dict(d)


def build_models(config, random_init: bool = False):
  """(semantic CLIP, boundary CLIP, SAM or None) for `config.models` (`zipjax.weights` resolves names), held as
  the engine uses them (`zipjax.models.storage`): the boundary model is its image trunk up to
  `boundary.stage` only, and the image towers' kernels are held in their compute dtype (`models.*.dtype`,
  'auto' resolved for this platform); the semantic model's text tower stays float32."""
  from zipjax import weights  # pylint: disable=import-outside-toplevel
  from zipjax.clip import ClipModel, load_clip  # pylint: disable=import-outside-toplevel
  from zipjax.models import storage  # pylint: disable=import-outside-toplevel
  m = config.models
  seed = int(m.seed)
  sem_filter = storage.LeafFilter(dtype=storage.resolve_dtype(m.semantic.get("dtype", "float32")),
                                  cast_prefixes=("params/visual/",), device=True)
  bnd_filter = storage.trunk_filter(int(config.boundary.stage), storage.resolve_dtype(m.boundary.get("dtype",
                                                                                                     "float32")),
                                    device=True)
  if random_init:
    sem = ClipModel.random(_clip_arch(m.semantic.arch), seed, leaf_filter=sem_filter)
    bnd = ClipModel.random(_clip_arch(m.boundary.arch), seed + 1, leaf_filter=bnd_filter)
  else:
    sem = load_clip(weights.resolve(m.semantic.checkpoint, "clip"), leaf_filter=sem_filter)
    bnd = load_clip(weights.resolve(m.boundary.checkpoint, "clip"), leaf_filter=bnd_filter)
  sam = None
  if config.sam.enabled:
    sam = refine.build_sam(m.sam, random_init, seed + 2,
                           storage.LeafFilter(dtype=storage.resolve_dtype(m.sam.get("dtype", "float32")), device=True),
                           family=str(config.sam.get("family", "sam")))
  return sem, bnd, sam


def build_segmenter(config, random_init: bool = False, cache_text: bool = True) -> Segmenter:
  """Models from `config.models`, text-feature cache in `<cache>/text` (keyed by the semantic model)."""
  sem, bnd, sam = build_models(config, random_init)
  cache = None
  if cache_text:
    from zipjax.io.text_cache import TextFeatureCache, model_key, prompt_templates  # pylint: disable=import-outside-toplevel
    templates = prompt_templates() if config.semantic.prompt_ensemble else ["{}"]
    cache = TextFeatureCache(model_key(sem.name, sem.config.to_dict()), templates)
  return Segmenter(config, sem, bnd, sam, text_cache=cache)


__all__ = ["Segmenter", "STAGES", "build_models", "build_segmenter", "text_features"]
