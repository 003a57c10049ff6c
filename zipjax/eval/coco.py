"""COCO box and mask AP/AR through a well-kept evaluator (pycocotools or faster-coco-eval); no AP is
computed here by hand.

`evaluate` scores one set of predictions; `compare` scores several against the same ground truth (the
pseudo-label quality report). Inputs are paths or in-memory objects (see `zipjax.io.coco` for the accepted
prediction formats); the inputs are never modified.

Metric values are fractions in [0, 1] as the evaluators report them, or None where COCO leaves a metric
undefined (no ground truth in that area range: pycocotools' -1).
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from zipjax.errors import InputError
from zipjax.io.coco import (AGNOSTIC_CATEGORY, GroundTruth, Predictions, describe, load_ground_truth, load_predictions,
                            rle_area)

BACKENDS = ("pycocotools", "faster-coco-eval")
DEFAULT_BACKEND = "pycocotools"  # a hard dependency; faster-coco-eval is optional (test extra)
IOU_TYPES = ("bbox", "segm")
# The 12 numbers of COCOeval.summarize(), in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def parse_iou_types(iou_type) -> tuple:
  """'bbox' | 'segm' | 'both' | a sequence of those -> tuple of IOU_TYPES."""
  if isinstance(iou_type, str):
    iou_type = IOU_TYPES if iou_type == "both" else (iou_type,)
  out = tuple(dict.fromkeys(iou_type))
  for t in out:
    if t not in IOU_TYPES:
      raise InputError(f"unknown iou type {t!r} (choose from {', '.join(IOU_TYPES)}, both)")
  if not out:
    raise InputError("no iou type given")
  return out


def _check_backend(backend: str) -> None:
  if backend not in BACKENDS:
    raise InputError(f"unknown evaluator backend {backend!r} (choose from {', '.join(BACKENDS)})")
  if backend == "faster-coco-eval":
    try:
      import faster_coco_eval  # noqa: F401
    except ImportError as e:
      raise InputError("backend faster-coco-eval is not installed (pip install faster-coco-eval)") from e


def _gt_dataset(gt: GroundTruth, class_agnostic: bool) -> dict:
  """A fresh COCO dataset dict for one evaluator run (evaluators add keys to the annotation dicts)."""
  anns = []
  for a in gt.annotations:
    b = dict(a)
    if class_agnostic:
      b["category_id"] = AGNOSTIC_CATEGORY["id"]
    anns.append(b)
  cats = [dict(AGNOSTIC_CATEGORY)] if class_agnostic else [dict(c) for c in gt.categories]
  return {"images": [dict(im) for im in gt.images.values()], "categories": cats, "annotations": anns}


def _dt_dataset(gt_data: dict, preds: Predictions, iou_type: str) -> dict:
  """Detections as a COCO dataset: ids 1..N, `area` from the mask (segm) or the box (bbox).

  This is what `COCO.loadRes` builds, minus its quirks (bbox area used for mask AP area ranges when a
  result has both, crash on an empty list); detectron2 drops `bbox` for segm evaluation for the same reason.
  """

  anns = []
  for i, r in enumerate(preds.records):
    a = {"id": i + 1, "image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"],
         "iscrowd": 0}
    if iou_type == "segm":
      a["segmentation"] = r["segmentation"]
      a["area"] = rle_area(r["segmentation"])
      a["bbox"] = r["bbox"]
    else:
      a["bbox"] = r["bbox"]
      a["area"] = r["bbox"][2] * r["bbox"][3]
    anns.append(a)
  return {"images": gt_data["images"], "categories": gt_data["categories"], "annotations": anns}


def _run_evaluator(backend: str, gt_data: dict, dt_data: dict, iou_type: str, img_ids: list):
  """Runs one COCOeval; returns (stats[12], precision[T,R,K,A,M], recall[T,K,A,M], params)."""
  quiet = io.StringIO()
  with contextlib.redirect_stdout(quiet):
    if backend == "pycocotools":
      coco_gt, coco_dt = COCO(), COCO()
      coco_gt.dataset, coco_dt.dataset = gt_data, dt_data
      coco_gt.createIndex()
      coco_dt.createIndex()
      ev = COCOeval(coco_gt, coco_dt, iou_type)
    else:
      import faster_coco_eval  # optional (the test extra); `_check_backend` says so when it is missing

      coco_gt, coco_dt = faster_coco_eval.COCO(gt_data), faster_coco_eval.COCO(dt_data)
      ev = faster_coco_eval.COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=lambda *a, **k: None)
    ev.params.imgIds = list(img_ids)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  stats = [float(s) for s in np.asarray(ev.stats)[:len(STAT_NAMES)]]
  return stats, np.asarray(ev.eval["precision"]), np.asarray(ev.eval["recall"]), ev.params


def _undefined_to_none(v: float):
  return None if v < 0 else float(v)


def _mean_valid(x: np.ndarray):
  x = x[x > -1]
  return float(x.mean()) if x.size else None


def _summarise(stats, precision, params, cat_names: list) -> dict:
  out = {name: _undefined_to_none(v) for name, v in zip(STAT_NAMES, stats)}
  area_all = list(params.areaRngLbl).index("all")
  max_det = len(params.maxDets) - 1  # 100
  p = precision[:, :, :, area_all, max_det]  # [T, R, K]
  iou = np.asarray(params.iouThrs)
  t50 = int(np.argmin(np.abs(iou - 0.5)))
  t75 = int(np.argmin(np.abs(iou - 0.75)))
  out["pr_curve"] = {
      "recall": [float(r) for r in params.recThrs],
      "iou_0.50": [_mean_valid(p[t50, r]) for r in range(p.shape[1])],
      "iou_0.75": [_mean_valid(p[t75, r]) for r in range(p.shape[1])],
      "iou_0.50:0.95": [_mean_valid(p[:, r]) for r in range(p.shape[1])],
  }
  out["per_category"] = {name: _mean_valid(p[:, :, k]) for k, name in enumerate(cat_names)}
  return out


def evaluate(gt, preds, iou_type="both", class_agnostic: bool = False, backend: str = DEFAULT_BACKEND,
             only_pred_images: bool = False) -> dict:
  """COCO box and/or mask AP and AR of `preds` against `gt`.

  Args:
    gt: COCO ground truth: path, dict, or a `GroundTruth` from `zipjax.io.coco.load_ground_truth`.
    preds: predictions: path, COCO results list, COCO dataset dict with scores, or a `Predictions`.
    iou_type: 'bbox', 'segm', 'both', or a sequence of 'bbox'/'segm'.
    class_agnostic: merge all categories into one (CutLER's protocol); otherwise predicted classes are
      matched to the ground-truth categories by name.
    backend: 'pycocotools' (default) or 'faster-coco-eval'.
    only_pred_images: evaluate only the images the prediction file covers (its `images` list for a dataset;
      for a results list, the images with at least one prediction). Default: every ground-truth image.

  Returns:
    `{"gt", "pred", "backend", "class_agnostic", "iou_types", "num_images", "num_gt", "num_crowd",
    "num_pred", "categories", "bbox"?: M, "segm"?: M}` where M holds the 12 COCO stats by name
    (`AP`, `AP50`, `AP75`, `APs`, `APm`, `APl`, `AR1`, `AR10`, `AR100`, `ARs`, `ARm`, `ARl`),
    `pr_curve` (recall grid and precision averaged over categories at IoU 0.50, 0.75 and 0.50:0.95, area
    all, 100 detections) and `per_category` AP (category name -> AP).

  Raises:
    InputError: bad ground truth or predictions (the message names the record), unknown backend.
  """
  iou_types = parse_iou_types(iou_type)
  _check_backend(backend)
  gt = load_ground_truth(gt)
  preds = load_predictions(preds, gt, class_agnostic=class_agnostic, need_bbox="bbox" in iou_types,
                           need_segm="segm" in iou_types)
  if only_pred_images:
    img_ids = preds.image_ids if preds.image_ids is not None else list(
        dict.fromkeys(r["image_id"] for r in preds.records))
  else:
    img_ids = list(gt.images)
  img_set = set(img_ids)
  gt_data = _gt_dataset(gt, class_agnostic)
  cat_names = [c["name"] for c in sorted(gt_data["categories"], key=lambda c: c["id"])]
  result = {
      "gt": gt.source,
      "pred": preds.source,
      "backend": backend,
      "class_agnostic": bool(class_agnostic),
      "iou_types": list(iou_types),
      "only_pred_images": bool(only_pred_images),
      "num_images": len(img_ids),
      "num_gt": sum(1 for a in gt.annotations if a["image_id"] in img_set and not a["iscrowd"]),
      "num_crowd": sum(1 for a in gt.annotations if a["image_id"] in img_set and a["iscrowd"]),
      "num_pred": sum(1 for r in preds.records if r["image_id"] in img_set),
      "categories": cat_names,
  }
  for t in iou_types:
    dt_data = _dt_dataset(gt_data, preds, t)
    stats, precision, _, params = _run_evaluator(backend, _gt_dataset(gt, class_agnostic), dt_data, t,
                                                 img_ids)
    result[t] = _summarise(stats, precision, params, cat_names)
  return result


def compare(gt, runs: Mapping, iou_type="both", class_agnostic: bool = False,
            backend: str = DEFAULT_BACKEND, only_pred_images: bool = False) -> dict:
  """Evaluates several prediction sets against the same ground truth (pseudo-label quality report).

  Args:
    gt: as in `evaluate` (read and validated once).
    runs: `{name: predictions}` in display order (e.g. reference preset, zip preset, round k).
    iou_type, class_agnostic, backend, only_pred_images: as in `evaluate`.

  Returns:
    `{"gt", "settings": {...}, "runs": [{"name", "pred", "metrics": evaluate(...)}]}`.
  """
  if not runs:
    raise InputError("compare needs at least one prediction set")
  gt = load_ground_truth(gt)
  iou_types = parse_iou_types(iou_type)
  out_runs = []
  for name, preds in runs.items():
    metrics = evaluate(gt, preds, iou_types, class_agnostic=class_agnostic, backend=backend,
                       only_pred_images=only_pred_images)
    out_runs.append({"name": str(name), "pred": describe(preds), "metrics": metrics})
  return {
      "gt": gt.source,
      "settings": {"iou_types": list(iou_types), "class_agnostic": bool(class_agnostic), "backend": backend,
                   "only_pred_images": bool(only_pred_images)},
      "runs": out_runs,
  }
