"""Detector inference on images of any size: host resize/pad, one jitted sharded step, instances in image pixels.

Used by the trainer's periodic evaluation and by `zipjax detect`.

Per batch of B images (B a multiple of the mesh size; a short last batch is padded with blank images whose
outputs are dropped):
  host:   each image is resized so its longer side is S (bilinear, aspect kept; `coco_train.sample_geometry`
          with train=False) and pasted into the top-left of a zero S x S canvas      [B, S, S, 3] uint8
  device: `Detector.apply` + `postprocess` (top-k (token, query) pairs; in class-agnostic mode the class logit
          of a token is its largest logit over the queries, so each token is one candidate) under one jit,
          batch split over the mesh's axes, parameters as they are sharded (replicated for `zipjax detect`)
          -> boxes [B, K, 4] xyxy canvas pixels, scores [B, K], classes [B, K], mask logits [B, K, Hm, Hm]
  host:   each of the K candidates: the head's box divided by the resize factor and clipped to the image; the
          mask logits over the image's part of the canvas resampled bilinearly to the original H x W (PIL,
          float box); then `refine` (the DetectorConfig's `box_source`, `score`, `mask_nms`): the mask is
          the logits above `mask_threshold` (logit 0 = p 0.5), with box_source='mask' only inside the head's
          box widened by half its size on each side (pieces far from the box are dropped) and the box is the
          extent of the object's faint region: the connected regions (4-neighbour) of the logits above
          `BOX_CONTOUR_LOGIT` in that window that hold the mask's largest piece (the mask's faint thin parts
          count, as a mask trained on cells that are half covered loses them at p 0.5; a stray piece of the
          mask or a neighbour's faint halo does not stretch the box); score='class_mask' multiplies the
          score by the square of the mean probability of the mask's pixels; mask_nms drops a candidate whose
          mask IoU with a better one of its category reaches it. Candidates scoring at least `score_threshold`
          are returned.
Instances are dicts `{"box": [x0, y0, x1, y1], "mask": bool [H, W], "score", "category"}` (what
`zipjax.io.shards.instance_annotation` takes), best first.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from scipy import ndimage

from zipjax import parallel
from zipjax.data import coco_train
from zipjax.models.detector import Detector, postprocess
from zipjax.train.task import class_queries, compiler_options, detector_config, text_encoder

BOX_CONTOUR_LOGIT = -3.0  # box_source='mask': the box is the extent of the object's logits above this (p 0.05)
BOX_WINDOW = 0.5          # box_source='mask': the head's box widened by this times its size on each side


def _window(box, h: int, w: int) -> tuple:
  """Integer pixel window (y0, y1, x0, x1) of an xyxy box widened by BOX_WINDOW of its size per side."""
  x0, y0, x1, y1 = box
  mx, my = BOX_WINDOW * (x1 - x0), BOX_WINDOW * (y1 - y0)
  return (max(int(np.floor(y0 - my)), 0), min(int(np.ceil(y1 + my)), h), max(int(np.floor(x0 - mx)), 0),
          min(int(np.ceil(x1 + mx)), w))


def refine(box, logits: np.ndarray, box_source: str, mask_threshold: float = 0.0) -> tuple:
  """One detection's final box, mask and mask quality (see the module docstring).

  Args:
    box: the head's xyxy box in image pixels.
    logits: float32 [H, W] mask logits at image resolution.
    box_source: 'head' or 'mask'.
  Returns:
    (xyxy box as a list of floats, bool mask [H, W], quality: mean probability of the mask's pixels, 0 if empty).
  """
  if box_source == "mask":
    y0, y1, x0, x1 = _window(box, *logits.shape)
    win = logits[y0:y1, x0:x1]                                                # [h, w] the window
    inner = win > mask_threshold
    mask = np.zeros(logits.shape, bool)
    mask[y0:y1, x0:x1] = inner
    if inner.any():
      pieces, _ = ndimage.label(inner)                                        # [h, w] 0 = background
      main = pieces == 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))   # the mask's largest piece
      regions, _ = ndimage.label(win > min(BOX_CONTOUR_LOGIT, mask_threshold))  # each holds whole pieces
      region = np.isin(regions, np.unique(regions[main]))
      rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
      box = [float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1)]
  else:
    mask = logits > mask_threshold
  quality = float(np.mean(1.0 / (1.0 + np.exp(-np.clip(logits[mask], -30, 30))))) if mask.any() else 0.0
  return [float(v) for v in box], mask, quality


def mask_nms(masks: list, iou: float, groups: list | None = None) -> list:
  """Indices kept by greedy suppression of masks in the given (best-first) order at mask IoU >= `iou`; with
  `groups` (e.g. categories), a mask is only suppressed by a better one of its own group."""
  kept: list = []
  areas = [int(m.sum()) for m in masks]
  for i, m in enumerate(masks):
    ok = True
    for j in kept:
      if groups is not None and groups[i] != groups[j]:
        continue
      inter = int(np.logical_and(m, masks[j]).sum())
      union = areas[i] + areas[j] - inter
      if union > 0 and inter / union >= iou:
        ok = False
        break
    if ok:
      kept.append(i)
  return kept


class DetectorPredictor:
  """Batched, jitted detector inference with static shapes.

  Attributes:
    cfg: the DetectorConfig.
    mesh: devices the batch is split over.
    batch_size: images per step (a multiple of the mesh size).
    score_threshold: smallest score of a returned instance.
    mask_threshold: mask logit threshold.
  """

  def __init__(self, cfg, mesh, batch_size: int, score_threshold: float = 0.0, mask_threshold: float = 0.0,
               compiler_options: dict | None = None):
    self.cfg = cfg
    self.mesh = mesh
    n = mesh.devices.size
    self.batch_size = max(n, -(-int(batch_size) // n) * n)
    self.score_threshold = float(score_threshold)
    self.mask_threshold = float(mask_threshold)
    self._sharding = parallel.batch_sharding(mesh, mesh.axis_names)
    model = Detector(cfg)

    def step(params, images, queries, query_valid, agnostic):
      out = model.apply({"params": params}, images, queries, query_valid, train=False)
      if agnostic:
        logits = jnp.where(query_valid[:, None, :], out["pred_logits"], -jnp.inf)
        out = dict(out, pred_logits=jnp.max(logits, axis=-1, keepdims=True))  # [B, N, 1]
      res = postprocess(out, cfg)
      return {k: res[k] for k in ("boxes", "scores", "classes", "mask_logits")}

    self._step = jax.jit(step, static_argnums=(4,), out_shardings=parallel.replicated(mesh),
                         compiler_options=compiler_options)

  def prepare(self, image: np.ndarray):
    """uint8 [H, W, 3] -> (canvas [S, S, 3], geometry)."""
    params = coco_train.AugmentParams(image_size=self.cfg.input_size, mask_stride=self.cfg.mask_stride,
                                      max_instances=1, train=False)
    g = coco_train.sample_geometry(image.shape[0], image.shape[1], params, None)
    return coco_train.apply_geometry(image, g), g

  def predict(self, params, images: list, queries: np.ndarray, class_agnostic: bool = False) -> list:
    """Instances of each image (see the module docstring).

    Args:
      params: detector parameters (any sharding over `mesh`).
      images: uint8 [H, W, 3] arrays (at most `batch_size`).
      queries: float32 [Q, D] unit-norm text embeddings.
      class_agnostic: one candidate per token (category 0), as in class-agnostic evaluation.
    """
    if not images:
      return []
    if len(images) > self.batch_size:
      raise ValueError(f"predict: {len(images)} images > batch_size {self.batch_size}")
    s = self.cfg.input_size
    canvas = np.zeros((self.batch_size, s, s, 3), np.uint8)
    geoms = []
    for i, img in enumerate(images):
      canvas[i], g = self.prepare(img)
      geoms.append(g)
    q = np.broadcast_to(np.asarray(queries, np.float32)[None], (self.batch_size,) + tuple(queries.shape))
    qv = np.ones(q.shape[:2], bool)
    rows = {"image": canvas, "queries": np.ascontiguousarray(q), "query_valid": qv}
    procs = sorted({d.process_index for d in self.mesh.devices.flat})
    if len(procs) > 1:  # a multi-host mesh: each process passes its block of rows (all hold the whole batch)
      k, n = procs.index(jax.process_index()), len(procs)
      rows = {key: v[k * len(v) // n:(k + 1) * len(v) // n] for key, v in rows.items()}
    batch = parallel.global_batch(rows, self._sharding)
    out = self._step(params, batch["image"], batch["queries"], batch["query_valid"], bool(class_agnostic))
    out = jax.tree_util.tree_map(np.asarray, out)
    return [self.instances({k: v[i] for k, v in out.items()}, geoms[i], img.shape[0], img.shape[1])
            for i, img in enumerate(images)]

  def instances(self, out: dict, g, h: int, w: int) -> list:
    """One image's postprocessed outputs -> instance dicts in original pixels (see the module docstring)."""
    cfg = self.cfg
    stride = cfg.mask_stride
    fx, fy = g.rw / w, g.rh / h
    res = []
    # rescoring only lowers scores: candidates already under the threshold are never returned
    for k in np.flatnonzero(out["scores"] >= self.score_threshold):
      x0, y0, x1, y1 = (float(v) for v in out["boxes"][k])
      box = [min(max(x0 / fx, 0.0), w), min(max(y0 / fy, 0.0), h), min(max(x1 / fx, 0.0), w),
             min(max(y1 / fy, 0.0), h)]
      logits = Image.fromarray(np.ascontiguousarray(out["mask_logits"][k], np.float32), "F")
      up = np.asarray(logits.resize((w, h), Image.BILINEAR, box=(0.0, 0.0, g.rw / stride, g.rh / stride)))
      box, mask, quality = refine(box, up, cfg.box_source, self.mask_threshold)  # mask [H, W]
      score = float(out["scores"][k]) * (quality ** 2 if cfg.score == "class_mask" else 1.0)
      res.append({"box": box, "mask": mask, "score": score, "category": int(out["classes"][k])})
    res.sort(key=lambda r: -r["score"])  # stable: ties keep the top-k order
    if cfg.mask_nms > 0:
      res = [res[i] for i in mask_nms([r["mask"] for r in res], cfg.mask_nms, [r["category"] for r in res])]
    return [r for r in res if r["score"] >= self.score_threshold]


class Inference:
  """The one detector-inference set-up, shared by `zipjax detect`, self-training's prediction and the trainer's
  evaluation: the jitted predictor of a run's config on `mesh` and the text queries of `names`.

  Attributes:
    predictor: the `DetectorPredictor`.
    names: the class names the queries embed.
    queries: float32 [Q, D] unit-norm text embeddings of `names`.
    batch_size: images per call (a multiple of the mesh size).
  """

  def __init__(self, config, mesh, names, batch_size: int, score_threshold: float = 0.0, clip=None):
    self.predictor = DetectorPredictor(detector_config(config), mesh, int(batch_size),
                                       score_threshold=float(score_threshold),
                                       compiler_options=compiler_options(config))
    self.names = list(names)
    self.queries = class_queries(config, clip if clip is not None else text_encoder(config), self.names)  # [Q, D]
    self.batch_size = self.predictor.batch_size

  def __call__(self, params, images: list, class_agnostic: bool = False) -> list:
    """Instances of each image (at most `batch_size`), best first."""
    return self.predictor.predict(params, images, self.queries, class_agnostic=class_agnostic)


__all__ = ["Inference", "DetectorPredictor", "refine", "mask_nms", "BOX_CONTOUR_LOGIT", "BOX_WINDOW"]
