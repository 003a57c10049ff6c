"""Per-image matching of predictions to ground truth: true positives, misses, false positives at IoU 0.5.

The rule (one image at a time; COCO's matching at a single threshold, without the 100-detection cap):
  1. IoU is mask IoU (pycocotools `mask.iou` on RLEs) when every prediction and every ground-truth instance of
     the image has a mask; otherwise box IoU for the whole image (boxes-only outputs). A crowd ground-truth
     region is compared as COCO does: intersection over the prediction's area.
  2. Predictions are taken in decreasing score (missing scores last; ties in file order). Each one takes the
     still unmatched, non-crowd ground-truth instance of its class with the highest IoU >= the threshold
     (ties: the first in file order) -> true positive.
  3. A prediction that takes none but overlaps a crowd region of its class at IoU >= the threshold is
     `ignored` (neither true nor false); any other is a false positive.
  4. Non-crowd ground truth left unmatched is a miss.
Classes are matched by name (case-insensitive, whitespace-normalised: `zipjax.io.coco.normalize_name`), or
not at all with `class_agnostic`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from pycocotools import mask as mask_utils

from zipjax.io.coco import normalize_name

IOU_THRESHOLD = 0.5


@dataclasses.dataclass
class Match:
  """Matching of one image.

  Attributes:
    pred: per prediction, ("tp", gt position, iou) | ("fp", None, best iou) | ("ignored", crowd position, iou).
    gt: per ground-truth instance, ("matched", pred position, iou) | ("miss", None, 0) | ("crowd", None, 0).
    tp: true positives.
    fp: false positives.
    fn: misses.
    ignored: predictions on crowd regions.
    iou_type: 'mask' or 'box'.
  """
  pred: list
  gt: list
  tp: int
  fp: int
  fn: int
  ignored: int
  iou_type: str


def _coco_rle(inst):
  return {"size": inst.rle["size"], "counts": inst.rle["counts"].encode("ascii")}


def iou_matrix(preds: list, gts: list) -> tuple[np.ndarray, str]:
  """float64 [P, G] IoU (crowd columns: intersection / prediction area) and 'mask' or 'box'."""
  if not preds or not gts:
    return np.zeros((len(preds), len(gts))), "mask"
  crowd = [int(g.iscrowd) for g in gts]
  if all(p.rle is not None for p in preds) and all(g.rle is not None for g in gts):
    ious = mask_utils.iou([_coco_rle(p) for p in preds], [_coco_rle(g) for g in gts], crowd)
    return np.asarray(ious, np.float64).reshape(len(preds), len(gts)), "mask"  # [P, G]
  ious = mask_utils.iou(np.asarray([p.bbox for p in preds], np.float64),
                        np.asarray([g.bbox for g in gts], np.float64), crowd)
  return np.asarray(ious, np.float64).reshape(len(preds), len(gts)), "box"  # [P, G]


def match_image(preds: list, pred_names: list, gts: list, gt_names: list, class_agnostic: bool = False,
                threshold: float = IOU_THRESHOLD) -> Match:
  """Matches `preds` (render.Instance, with class names `pred_names`) to `gts` (with `gt_names`)."""
  ious, iou_type = iou_matrix(preds, gts)
  pk = [None if class_agnostic else normalize_name(n) for n in pred_names]
  gk = [None if class_agnostic else normalize_name(n) for n in gt_names]
  order = sorted(range(len(preds)), key=lambda i: (preds[i].score is None, -(preds[i].score or 0.0), i))
  taken = [False] * len(gts)
  pred_status: list = [None] * len(preds)
  gt_status: list = [("crowd", None, 0.0) if g.iscrowd else ("miss", None, 0.0) for g in gts]
  for i in order:
    best, best_iou, crowd_hit, top = None, threshold, None, 0.0
    for j, g in enumerate(gts):
      if gk[j] != pk[i]:
        continue
      v = float(ious[i, j])
      if g.iscrowd:
        if v >= threshold and crowd_hit is None:
          crowd_hit = (j, v)
        continue
      top = max(top, v)
      if not taken[j] and (v > best_iou or (best is None and v >= threshold)):
        best, best_iou = j, v
    if best is not None:
      taken[best] = True
      pred_status[i] = ("tp", best, best_iou)
      gt_status[best] = ("matched", i, best_iou)
    elif crowd_hit is not None:
      pred_status[i] = ("ignored", crowd_hit[0], crowd_hit[1])
    else:
      pred_status[i] = ("fp", None, top)
  tp = sum(s[0] == "tp" for s in pred_status)
  return Match(pred=pred_status, gt=gt_status, tp=tp, fp=sum(s[0] == "fp" for s in pred_status),
               fn=sum(s[0] == "miss" for s in gt_status), ignored=sum(s[0] == "ignored" for s in pred_status),
               iou_type=iou_type)


__all__ = ["IOU_THRESHOLD", "Match", "iou_matrix", "match_image"]
