"""A plain host-driven implementation of the `zip` preset, one image and one stage at a time: the oracle the tests
compare the engine's fused, batched, statically shaped step with (tests/test_engine.py). It was zipjax's
pipeline before the engine; it reuses zipjax's public stages and kernels (CLIP models, `pipeline.semantic`,
`pipeline.discover`, `ops.components`, the public SAM API), never the engine's step.

Per batch of images:
  1. CLIP Surgery token features -> image-level class probabilities and min-max normalised similarity maps on
     the token grid (`pipeline.semantic`);
  2. per image: classes kept (all, or those with probability >= `scoring.presence_threshold` when
     `scoring.classification_first`), bilinear upsampling to H x W, boundary features (ModifiedResNet
     `boundary.stage` on `preprocess.boundary_input`), activation and discovery of all kept classes in one
     `discover_batch` call;
  3. instances -> boxes in the image (`grid_boxes_to_image`) and masks: the instance cells upsampled with
     torch legacy nearest (no SAM), or SAM's mask for the instance box (`sam_masks`);
  4. scores (`geometric_score` with SAM), per-class mask NMS, top-k (`select`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from zipjax import preprocess
from zipjax.ops import components, nms, resize
from zipjax.pipeline import discover, semantic


_upsample = jax.jit(resize.resize_bilinear, static_argnums=1)  # [..., gh, gw, n] -> [..., H, W, n], torch bilinear


def geometric_score(clip_prob, sam_iou) -> np.ndarray:
  """sqrt(clip probability * clip(SAM IoU, 0, 1))."""
  return np.sqrt(np.asarray(clip_prob, np.float32) * np.clip(np.asarray(sam_iou, np.float32), 0.0, 1.0))


def select_numpy(cats, scores, masks, min_score, use_nms, thr, top) -> list[int]:
  """Instances kept, by decreasing score: min score, greedy per-class mask NMS (IoU > thr suppresses; ties by
  order), top-k."""
  keep = [i for i in range(len(scores)) if scores[i] >= min_score]
  if use_nms:
    kept = []
    for i in sorted(keep, key=lambda i: (-scores[i], i)):
      ok = True
      for j in kept:
        if cats[j] != cats[i]:
          continue
        inter = np.logical_and(masks[i], masks[j]).sum()
        union = np.logical_or(masks[i], masks[j]).sum()
        if union and inter / union > thr:
          ok = False
      if ok:
        kept.append(i)
    keep = kept
  return sorted(keep, key=lambda i: (-scores[i], i))[:top]


def grid_boxes_to_image(bboxes, grid_size, image_size, swap_box_scale: bool) -> np.ndarray:
  """Grid bboxes (min_row, min_col, max_row, max_col) -> image boxes (x0, y0, x1, y1) float32;
  `swap_box_scale` (the released code's quirk) scales x by H/h and y by W/w."""
  b = np.asarray(bboxes, np.float32)
  (h, w), (hh, ww) = grid_size, image_size
  sx, sy = (hh / h, ww / w) if swap_box_scale else (ww / w, hh / h)
  return np.stack([b[..., 1] * sx, b[..., 0] * sy, b[..., 3] * sx, b[..., 2] * sy], axis=-1)  # [..., 4]


def sam_masks(sam, image: np.ndarray, boxes: np.ndarray, sam_cfg):
  """SAM masks for box prompts (xyxy, image pixels) on one image: embedded once, boxes decoded `max_boxes` at
  a time (the last chunk padded with its first box), the best of K with `multimask`, upsampled logits >
  `mask_threshold`. -> (list of bool [H, W], float32 IoU [m], float32 [m, 4] boxes of the masks (the prompt
  box where a mask is empty))."""
  m = len(boxes)
  if m == 0:
    return [], np.zeros((0,), np.float32), np.zeros((0, 4), np.float32)
  pixels, input_size, original = sam.prepare_image(image)  # [S, S, 3]
  emb = sam.image_embeddings(pixels[None])  # [1, S/16, S/16, C] (SAM 2: a dict)
  chunk = int(sam_cfg.max_boxes)
  masks, ious = [], []
  for start in range(0, m, chunk):
    bx = np.asarray(boxes[start:start + chunk], np.float32)
    n = len(bx)
    padded = np.concatenate([bx, np.repeat(bx[:1], chunk - n, 0)], 0)  # [chunk, 4]
    frame = sam.frame_boxes(padded, original)[None]  # [1, chunk, 4]
    logits, iou = sam.predict_boxes(emb, frame, multimask=bool(sam_cfg.multimask))  # [1, c, K, h, w], [1, c, K]
    best = jnp.argmax(iou[0], axis=-1)  # [c]
    low = jnp.take_along_axis(logits[0], best[:, None, None, None], axis=1)[:, 0]  # [c, h, w]
    up = sam.masks_from_logits(low, input_size, original, return_logits=True)  # [c, H, W]
    masks.append(np.asarray(up[:n] > float(sam_cfg.mask_threshold)))
    ious.append(np.asarray(jnp.take_along_axis(iou[0], best[:, None], axis=1)[:n, 0]))
  stack = np.concatenate(masks, 0)  # [m, H, W]
  mbox, valid = nms.mask_to_box(jnp.asarray(stack))
  out_boxes = np.where(np.asarray(valid)[:, None], np.asarray(mbox), boxes).astype(np.float32)
  return list(stack), np.concatenate(ious).astype(np.float32), out_boxes


def segment(config, semantic_clip, boundary_clip, sam, text: np.ndarray, images) -> list[dict]:
  """The pipeline on a batch of uint8 RGB images. `text`: float32 [n + 1, D] prompt-ensemble features of the
  classes, then of "". -> one dict per image: instances ({category, score, box, mask bool [H, W]}, by
  decreasing score), probs [n], present [k], labels int32 [k, h, w], grid (h, w)."""
  text, redundant = jnp.asarray(text[:-1]), jnp.asarray(text[-1])
  patch = semantic_clip.config.vision_patch_size
  grid = (config.semantic.input_size // patch,) * 2
  pix = np.stack([preprocess.clip_surgery_input(im, config.semantic.input_size) for im in images])  # [B, S, S, 3]
  tokens = semantic_clip.encode_image(pix, surgery=True)  # [B, 1 + N, D]
  probs = np.asarray(semantic.class_scores(tokens[:, 0], text, jnp.float32(config.semantic.logit_scale)))  # [B, n]
  sim = semantic.surgery_similarity(tokens, text, redundant, feature_norm=config.semantic.feature_norm,
                                    grid=grid)  # [B, gh, gw, n]
  return [_one(config, boundary_clip, sam, im, sim[i], probs[i]) for i, im in enumerate(images)]


def _one(cfg, boundary_clip, sam, image: np.ndarray, sim_grid, probs: np.ndarray) -> dict:
  hh, ww = image.shape[:2]
  if cfg.scoring.classification_first:
    present = np.nonzero(probs >= float(cfg.scoring.presence_threshold))[0]
  else:
    present = np.arange(len(probs))
  out = {"instances": [], "probs": probs, "present": present, "labels": None, "grid": None}
  if present.size == 0:
    return out
  sim = _upsample(sim_grid[..., jnp.asarray(present)], (hh, ww))  # [H, W, k]
  bpix = preprocess.boundary_input(image, cfg.boundary.input_size, int(cfg.boundary.size_multiple))[None]
  feats = boundary_clip.trunk_features(bpix, int(cfg.boundary.stage))  # [1, h, w, C]
  h, w = feats.shape[1:3]
  act = discover.activation_from_similarity(jnp.moveaxis(sim, -1, 0), (h, w), cfg)  # [k, h, w]
  labels = discover.discover_batch(feats, act[None], cfg)[0]  # [k, h, w]
  max_inst = int(cfg.discover.max_instances)
  props = jax.vmap(lambda lab: components.regionprops(lab, max_inst))(labels)
  labels, bbox, valid = np.asarray(labels), np.asarray(props["bbox"]), np.asarray(props["valid"])
  out["labels"], out["grid"] = labels, (h, w)
  boxes = grid_boxes_to_image(bbox, (h, w), (hh, ww), bool(cfg.discover.swap_box_scale))  # [k, M, 4]
  boxes = np.clip(boxes, 0, [ww, hh, ww, hh]).astype(np.float32)
  cls_idx, inst_idx = np.nonzero(valid)  # instance (class row, label - 1), raster order per class
  cats = present[cls_idx]
  inst_boxes = boxes[cls_idx, inst_idx]  # [m, 4]
  if cfg.sam.enabled:
    masks, ious, inst_boxes = sam_masks(sam, image, inst_boxes, cfg.sam)
    scores = geometric_score(probs[cats], ious)
  else:
    iy, ix = resize.nearest_indices(h, hh), resize.nearest_indices(w, ww)
    masks = [labels[c][iy][:, ix] == (i + 1) for c, i in zip(cls_idx, inst_idx)]  # [H, W] each
    scores = probs[cats].astype(np.float32)
  sc = cfg.scoring
  keep = select_numpy(cats, scores, masks, float(sc.min_score), bool(sc.nms), float(sc.nms_threshold),
                      int(sc.max_per_image))
  out["instances"] = [{"category": int(cats[i]), "score": float(scores[i]),
                       "box": [float(v) for v in inst_boxes[i]], "mask": masks[i]} for i in keep]
  return out
