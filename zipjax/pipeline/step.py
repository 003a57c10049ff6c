"""The engine's device step: the whole Zip pipeline for a batch of images of one bucket, as one pure function.

`make_step(spec, semantic_cfg, boundary_cfg, sam_cfg)` returns `step(params, text, batch) -> outputs`, which the
engine wraps in `jax.jit` with explicit shardings (zipjax/engine.py). Per image (everything is vmapped over the
batch; no operation mixes images, so an image's numbers do not depend on its batch mates):

  1. pixels: uint8 -> float32 through the lookup tables of `buckets.pixel_tables` (bit-exact with the host
     normalisation of `zipjax.preprocess`); the SAM input's padding is zeroed from its valid size;
  2. CLIP Surgery tokens (ViT, `semantic` dtype), image-level class probabilities and min-max normalised token
     grid similarity maps for every class (`pipeline.semantic`);
  3. present classes: with `scoring.classification_first` those with probability >= presence_threshold, else
     all; padded to the static `max_present` P in class-index order (a `valid` mask; if more are present, the
     P most probable are kept);
  4. activation per present class from the token-grid map and the per-image interpolation vectors
     (`prep` module docstring): `act = My[iy] G Mx[ix]^T > activation_factor * (u^T G v)`;
  5. boundary features (ModifiedResNet `stage`, `boundary` dtype, cast to float32) and discovery of the
     present classes (k-means, fragments, instances in float32): with classification first in a loop over the
     class slots that stops after the batch's largest number of present classes (`discover_slots_fn`), so
     padded slots cost nothing unless a batch mate uses them; otherwise (every slot a class) vmapped over all
     (`discover_batch_fn`); instance boxes (`regionprops`) scaled to image pixels and clipped to the image;
  6. candidates: the instances of all present classes in (class, raster) order, padded to Mc with a `valid`
     mask. With SAM, Mc = `sam.max_boxes` (if an image has more instances, those of the most probable classes
     are decoded; `dropped` counts the others), all of them decoded in ONE call on the image's embedding
     (`sam.multimask`: the mask with the highest predicted IoU), score = sqrt(prob * clip(IoU, 0, 1)).
     Without SAM, Mc = P * max_instances and score = the class probability;
  7. selection: min score, greedy per-class mask NMS (one NMS over all candidates with cross-class IoU set to
     0, which is per-class greedy NMS), top `max_per_image` by score (ties: candidate order) -> Mout slots.
     Mask IoU for NMS: with SAM on the thresholded masks in the SAM input frame (the T x T padded square
     cropped to the resized image; the host oracle, tests/reference/zip_host.py, uses the original
     resolution, the same pixels when the image's longer side is T); without SAM exactly at the original
     resolution, from the feature-grid masks weighted by the pixels each grid row / column covers under the
     nearest upsampling.

Outputs (leading batch axis): probs [n]; present int32 [P], present_valid [P]; labels int32 [P, h, w];
keep_valid [Mout]; keep_category, keep_slot (present index), keep_label (instance number) int32 [Mout];
keep_score float32 [Mout]; keep_box float32 [Mout, 4] (x0, y0, x1, y1 image pixels: the instance box, the SAM
prompt); with SAM keep_logits float32 [Mout, 4e, 4e] (low-res mask logits) and keep_iou [Mout]; dropped
int32 []; finite bool [] (probabilities, features, scores and the per-image float inputs finite). The host
turns the kept slots into full-size masks one at a time (`pipeline.post`).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from zipjax import configs
from zipjax.errors import InputError
from zipjax.models.clip_net import CLIPConfig, image_tower
from zipjax.models.clip_resnet import ModifiedResNet
from zipjax.models.clip_vit import VisionTransformer
from zipjax.models.sam_net.model import Sam
from zipjax.models.sam2.sam2 import Sam2, Sam2Config
from zipjax.ops import components
from zipjax.ops import nms as nms_ops
from zipjax.ops.resize import bilinear_matrix
from zipjax.pipeline import discover as discover_lib
from zipjax.pipeline import semantic

HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Static (hashable) description of the step; one compiled program per (spec, bucket shape, batch).

  Attributes:
    token_grid: (gh, gw) CLIP Surgery token grid.
    max_present: P, the static number of class slots per image (`max_present_classes`).
    stage: ModifiedResNet stage of the boundary features (`config.boundary.stage`).
    semantic: `config.semantic` (feature_norm, logit_scale).
    discover: `config.discover` (activation_factor, and everything discovery needs).
    sam: `config.sam` (enabled, multimask, mask_threshold, max_boxes).
    scoring: `config.scoring` (classification first, presence_threshold, NMS, min_score, max_per_image).
    micro_batch: images computed together (vmapped) inside a device batch; the device batch runs as a loop
      over micro-batches (`lax.map`), so the step's temporaries are those of one micro-batch whatever the
      batch, and an all-padding micro-batch skips the work (`lax.cond`). 0: the whole device batch at once.

  The group fields the step does not read (`UNREAD`) hold their defaults here, so that a change to one of them
  compiles no new program.
  """
  token_grid: tuple[int, int]
  max_present: int
  stage: int
  semantic: configs.Semantic
  discover: configs.Discover
  sam: configs.Sam
  scoring: configs.Scoring
  micro_batch: int = 1

  @classmethod
  def from_config(cls, config, token_grid: tuple[int, int], num_classes: int) -> "StepSpec":
    read = {g.NAME: _read_part(g.from_config(config)) for g in (configs.Semantic, configs.Sam, configs.Scoring)}
    return cls(token_grid=tuple(token_grid), max_present=max_present_classes(config, num_classes),
               stage=configs.Boundary.from_config(config).stage, discover=configs.Discover.from_config(config),
               micro_batch=int(config.get("micro_batch", 1)), **read)

  def num_candidates(self) -> int:
    every = self.max_present * self.discover.max_instances
    return min(self.sam.max_boxes, every) if self.sam.enabled else every

  def num_outputs(self) -> int:
    return max(1, min(self.num_candidates(), self.scoring.max_per_image))


# Group fields the step does not read: their effect reaches it through `token_grid` (semantic.input_size),
# `max_present` (scoring.max_present_classes) or the model configs (sam.family), or not at all (the text side).
UNREAD = {"semantic": ("input_size", "prompt_ensemble", "text_batch_size"), "sam": ("family",),
          "scoring": ("max_present_classes",)}


def _read_part(group):
  """`group` with its `UNREAD` fields at their defaults."""
  default = type(group)()
  return dataclasses.replace(group, **{f: getattr(default, f) for f in UNREAD[group.NAME]})


def max_present_classes(config, num_classes: int) -> int:
  """P for a vocabulary of `num_classes` (see `zipjax.configs.Scoring.max_present_classes`)."""
  sc = configs.Scoring.from_config(config)
  if not sc.classification_first:
    bound = num_classes
  else:
    thr = sc.presence_threshold
    bound = num_classes if thr <= 0 else min(num_classes, max(1, math.floor(1.0 / thr)))
  return max(1, min(bound, sc.max_present_classes) if sc.max_present_classes else bound)


def visual_variables(variables: dict, is_vit: bool, stage: int = 4) -> dict:
  """The image tower's variables of a CLIP model (ResNet: the stem and layer1..`stage` only)."""
  out = {}
  for col, tree in variables.items():
    if "visual" not in tree:
      continue
    v = tree["visual"]
    if not is_vit:
      v = {k: x for k, x in v.items() if not (k.startswith("layer") and int(k[5]) > stage) and k != "attnpool"}
    out[col] = v
  return out


def vision_module(cfg: CLIPConfig):
  """The image tower of `CLIP(cfg)` as a standalone module (same parameter tree as `variables[..]['visual']`)."""
  return image_tower(cfg)


def _normalise(pixels, table):
  """uint8 [..., 3] -> float32 through a [3, 256] table."""
  return table[jnp.arange(3), pixels.astype(jnp.int32)]  # [..., 3]


def _select_classes(probs, spec: StepSpec):
  """[n] probabilities -> (class index int32 [P], valid [P]) in class-index order."""
  n = probs.shape[-1]
  present = probs >= spec.scoring.presence_threshold if spec.scoring.classification_first else jnp.ones((n,), bool)
  key = jnp.where(present, probs, -1.0)
  _, top = jax.lax.top_k(key, spec.max_present)  # [P], most probable first (ties: lower index)
  valid = present[top]
  order = jnp.argsort(jnp.where(valid, top, n + top))  # present ones first, by class index
  return top[order].astype(jnp.int32), valid[order]


def _activation(sim, cls, arrays, factor: float):
  """Token-grid maps [gh, gw, n] -> activation bool [P, h, w] of the selected classes."""
  g = jnp.moveaxis(sim[..., cls], -1, 0)  # [P, gh, gw]
  mean = jnp.einsum("j,pjk,k->p", arrays["act_mean_rows"], g, arrays["act_mean_cols"], precision=HIGHEST)  # [P]
  small = jnp.einsum("hj,pjk->phk", arrays["act_rows"], g, precision=HIGHEST)  # [P, h, gw]
  small = jnp.einsum("wk,phk->phw", arrays["act_cols"], small, precision=HIGHEST)  # [P, h, w]
  return small > (mean * jnp.float32(factor))[:, None, None]


def _grid_boxes(bbox, arrays):
  """regionprops bboxes (r0, c0, r1, c1) [..., 4] -> image boxes (x0, y0, x1, y1) clipped to the image."""
  b = bbox.astype(jnp.float32)
  sx, sy = arrays["box_scale"][0], arrays["box_scale"][1]
  out = jnp.stack([b[..., 1] * sx, b[..., 0] * sy, b[..., 3] * sx, b[..., 2] * sy], axis=-1)  # [..., 4]
  ww, hh = arrays["image_size"][0], arrays["image_size"][1]
  return jnp.clip(out, 0.0, jnp.stack([ww, hh, ww, hh]))


def _iou(inter, area):
  union = area[:, None] + area[None, :] - inter
  return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 0.0)


def select_candidates(category, score, valid, iou, spec: StepSpec):
  """One image's selection: min score, per-class greedy mask NMS, top-k.

  Args:
    category: int32 [Mc] class of each candidate.
    score: float32 [Mc].
    valid: bool [Mc].
    iou: float32 [Mc, Mc] mask IoU, or None (no NMS).
    spec: `StepSpec` (min_score, nms, nms_threshold, max_per_image).

  Returns:
    (int32 [Mout] candidate indices by decreasing score (ties: lower index), bool [Mout] valid).
  """
  ok = valid & (score >= spec.scoring.min_score)
  if not spec.scoring.nms or iou is None:
    iou = jnp.zeros((score.shape[0], score.shape[0]), jnp.float32)
  iou = jnp.where(category[:, None] == category[None, :], iou, 0.0)  # NMS within a class only
  return nms_ops.nms(iou, score, ok, threshold=spec.scoring.nms_threshold, max_output=spec.num_outputs())


def make_step(spec: StepSpec, semantic_cfg: CLIPConfig, boundary_cfg: CLIPConfig, sam_cfg=None):
  """The pure step function for these models (configs carry the compute dtypes).

  Returns:
    step(params, text, batch) with params {'semantic', 'boundary'[, 'sam']} (image-tower variables, see
    `visual_variables`, and SAM's variables), text {'text': [n, D], 'redundant': [D], 'clip_table',
    'sam_table'} and batch the stacked `buckets.prepare` arrays; see the module docstring for the outputs.
  """
  vit = vision_module(semantic_cfg)
  resnet = vision_module(boundary_cfg)
  if spec.sam.enabled != (sam_cfg is not None):
    raise InputError("StepSpec.sam and the SAM config disagree")
  sam_cls = Sam2 if isinstance(sam_cfg, Sam2Config) else Sam  # the two families share embed_images / decode
  sam_module = sam_cls(sam_cfg) if sam_cfg is not None else None
  if spec.scoring.classification_first:  # slots can be empty: loop over the present ones only
    slots_fn = discover_lib.discover_slots_fn(spec.discover)
    discover_fn = lambda f, a, valid: slots_fn(f, a, jnp.sum(valid.astype(jnp.int32), -1))  # noqa: E731
  else:  # every slot is a class: vmap over all of them
    batch_fn = discover_lib.discover_batch_fn(spec.discover)
    discover_fn = lambda f, a, valid: batch_fn(f, a)  # noqa: E731
  p_slots, m_inst = spec.max_present, spec.discover.max_instances

  def one_image_tail(probs, labels, cls, cls_valid, arrays):
    """Candidates of one image from its label maps [P, h, w] -> dict of per-candidate arrays."""
    props = jax.vmap(lambda l: components.regionprops(l, m_inst))(labels)
    valid = props["valid"] & cls_valid[:, None]  # [P, M]
    boxes = _grid_boxes(props["bbox"], arrays)  # [P, M, 4]
    pm = p_slots * m_inst
    flat_valid = valid.reshape(pm)  # [P*M]
    slot = jnp.repeat(jnp.arange(p_slots, dtype=jnp.int32), m_inst)  # [P*M]
    label = jnp.tile(jnp.arange(1, m_inst + 1, dtype=jnp.int32), p_slots)  # [P*M]
    prob = probs[cls][slot]  # [P*M]
    mc = spec.num_candidates()
    if mc < pm:  # keep the instances of the most probable classes, then restore (class, raster) order
      first = jnp.argsort(jnp.where(flat_valid, -prob, jnp.inf), stable=True)[:mc]  # [Mc]
      ok = flat_valid[first]
      idx = jnp.sort(jnp.where(ok, first, pm + first))
      cand_valid, idx = idx < pm, jnp.where(idx < pm, idx, idx - pm)
      dropped = jnp.maximum(jnp.sum(flat_valid.astype(jnp.int32)) - mc, 0)
    else:
      idx, cand_valid, dropped = jnp.arange(pm), flat_valid, jnp.int32(0)
    return {"valid": cand_valid, "slot": slot[idx], "label": label[idx], "category": cls[slot[idx]],
            "prob": prob[idx], "box": boxes.reshape(pm, 4)[idx], "dropped": dropped}

  def grid_iou(labels, cand, arrays):
    """Exact original-resolution IoU of nearest-upsampled grid masks [Mc, Mc]."""
    masks = (labels[cand["slot"]] == cand["label"][:, None, None]).astype(jnp.float32)  # [Mc, h, w]
    wgt = arrays["pixel_rows"].astype(jnp.float32)[:, None] * arrays["pixel_cols"].astype(jnp.float32)[None]
    flat = masks.reshape(masks.shape[0], -1)  # [Mc, h*w]
    inter = jnp.dot(flat * wgt.reshape(1, -1), flat.T, precision=HIGHEST)  # [Mc, Mc]
    area = jnp.dot(flat, wgt.reshape(-1), precision=HIGHEST)  # [Mc]
    return _iou(inter, area)

  def sam_frame_masks(low, arrays):
    """Low-res logits [Mc, l, l] -> masks in the T x T input frame (padding excluded) [Mc, T, T]."""
    l, t = low.shape[-1], sam_cfg.img_size
    up = jnp.asarray(bilinear_matrix(l, t))  # [T, l]
    x = jnp.einsum("yh,mhw->myw", up, low, precision=HIGHEST)  # [Mc, T, l]
    x = jnp.einsum("xw,myw->myx", up, x, precision=HIGHEST)  # [Mc, T, T]
    r = jnp.arange(t)
    inside = (r[:, None] < arrays["sam_size"][0]) & (r[None, :] < arrays["sam_size"][1])  # [T, T]
    return (x > spec.sam.mask_threshold) & inside[None]

  def batch_step(params, text, batch):
    tables = {"clip": text["clip_table"], "sam": text["sam_table"]}
    pix = _normalise(batch["semantic"], tables["clip"])  # [B, S, S, 3]
    tokens = vit.apply(params["semantic"], pix, semantic_cfg.surgery_depth,
                       method=VisionTransformer.surgery).astype(jnp.float32)  # [B, 1 + N, D]
    probs = semantic.class_scores(tokens[:, 0], text["text"], jnp.float32(spec.semantic.logit_scale))  # [B, n]
    sim = semantic.surgery_similarity(tokens, text["text"], text["redundant"],
                                      feature_norm=spec.semantic.feature_norm, grid=spec.token_grid)  # [B, gh, gw, n]
    cls, cls_valid = jax.vmap(lambda p: _select_classes(p, spec))(probs)  # [B, P]
    factor = spec.discover.activation_factor
    act = jax.vmap(lambda s, c, a: _activation(s, c, a, factor))(sim, cls, batch)  # [B, P, h, w]
    bpix = _normalise(batch["boundary"], tables["clip"])  # [B, Hb, Wb, 3]
    feats = resnet.apply(params["boundary"], bpix, spec.stage, method=ModifiedResNet.trunk)  # [B, h, w, C]
    feats = feats.astype(jnp.float32)
    labels = discover_fn(feats, act, cls_valid)  # [B, P, h, w]
    cand = jax.vmap(one_image_tail)(probs, labels, cls, cls_valid, batch)  # [B, Mc, ...]
    finite = jnp.all(jnp.isfinite(probs), -1) & jnp.all(jnp.isfinite(feats), (1, 2, 3))  # [B]
    for k in ("act_mean_rows", "act_mean_cols", "act_rows", "act_cols", "box_scale", "image_size"):
      finite = finite & jnp.all(jnp.isfinite(batch[k]).reshape(batch[k].shape[0], -1), -1)
    out = {"probs": probs, "present": cls, "present_valid": cls_valid, "labels": labels,
           "dropped": cand["dropped"]}
    if spec.sam.enabled:
      t = sam_cfg.img_size
      r = jnp.arange(t)
      ih, iw = batch["sam_size"][:, 0], batch["sam_size"][:, 1]
      inside = (r[None, :, None] < ih[:, None, None]) & (r[None, None, :] < iw[:, None, None])  # [B, T, T]
      spix = jnp.where(inside[..., None], _normalise(batch["sam"], tables["sam"]), 0.0)  # [B, T, T, 3]
      emb = sam_module.apply(params["sam"], spix, method=sam_cls.embed_images)  # [B, e, e, C] (SAM 2: a dict)
      frame = cand["box"] * jnp.tile(batch["sam_box_scale"], 2)[:, None, :]  # [B, Mc, 4]
      frame = jnp.clip(frame, 0.0, float(t))

      def decode(e, bx):
        return sam_module.apply(params["sam"], e, boxes=bx, multimask_output=spec.sam.multimask,
                                method=sam_cls.decode)

      logits, ious = jax.vmap(decode)(emb, frame)  # [B, Mc, K, 4e, 4e], [B, Mc, K]
      best = jnp.argmax(ious, axis=-1)  # [B, Mc]
      low = jnp.take_along_axis(logits, best[..., None, None, None], axis=2)[:, :, 0].astype(jnp.float32)
      iou_best = jnp.take_along_axis(ious, best[..., None], axis=2)[..., 0].astype(jnp.float32)  # [B, Mc]
      score = jnp.sqrt(cand["prob"] * jnp.clip(iou_best, 0.0, 1.0))  # [B, Mc]

      def nms_one(low_i, a, c, s):
        iou = None
        if spec.scoring.nms:
          m = sam_frame_masks(low_i, a).reshape(low_i.shape[0], -1).astype(jnp.float32)  # [Mc, T*T]
          iou = _iou(jnp.dot(m, m.T, precision=HIGHEST), jnp.sum(m, -1))  # [Mc, Mc]
        return select_candidates(c["category"], s, c["valid"], iou, spec)

      keep, keep_valid = jax.vmap(nms_one)(low, batch, cand, score)  # [B, Mout]
      out["keep_logits"] = jnp.take_along_axis(low, keep[..., None, None], axis=1)  # [B, Mout, 4e, 4e]
      out["keep_iou"] = jnp.take_along_axis(iou_best, keep, axis=1)
    else:
      score = cand["prob"]

      def nms_one(lab, a, c, s):
        return select_candidates(c["category"], s, c["valid"], grid_iou(lab, c, a) if spec.scoring.nms else None, spec)

      keep, keep_valid = jax.vmap(nms_one)(labels, batch, cand, score)  # [B, Mout]
    finite = finite & jnp.all(jnp.isfinite(score), -1)
    take = lambda x: jnp.take_along_axis(x, keep.reshape(keep.shape + (1,) * (x.ndim - 2)), axis=1)  # noqa: E731
    out.update(keep_valid=keep_valid & batch["valid"][:, None], keep_category=take(cand["category"]),
               keep_slot=take(cand["slot"]), keep_label=take(cand["label"]), keep_score=take(score),
               keep_box=take(cand["box"]), finite=finite)
    return out

  def step(params, text, batch):
    b = batch["valid"].shape[0]
    m = spec.micro_batch or b
    if m >= b:
      return batch_step(params, text, batch)
    if b % m:
      raise InputError(f"micro_batch {m} does not divide the per-device batch {b}")
    chunks = jax.tree_util.tree_map(lambda x: x.reshape((b // m, m) + x.shape[1:]), batch)  # [b/m, m, ...]
    first = jax.tree_util.tree_map(lambda x: x[0], chunks)
    out_struct = jax.eval_shape(batch_step, params, text, first)

    def one(chunk):  # a micro-batch; all-padding ones are skipped
      skip = lambda p, t, c: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), out_struct)  # noqa
      return jax.lax.cond(jnp.any(chunk["valid"]), batch_step, skip, params, text, chunk)

    out = jax.lax.map(one, chunks)  # [b/m, m, ...]
    return jax.tree_util.tree_map(lambda x: x.reshape((b,) + x.shape[2:]), out)

  return step


__all__ = ["StepSpec", "make_step", "select_candidates", "max_present_classes", "visual_variables", "vision_module"]
