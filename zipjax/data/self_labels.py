"""Self-training labels: a detector's predictions on the training images, filtered and merged with the previous
round's labels (CutLER's `get_self_training_ann.py` step, as one deterministic function).

Inputs are COCO datasets in memory (`{"images", "annotations", "categories"}`):
  - `labels`: the previous round's labels (round 0: the Zip pseudo-labels); annotations with a `segmentation`
    (compressed or uncompressed RLE, or polygons), optional `score`, optional `iscrowd`;
  - `predictions`: the detector's predictions on the same images (`zipjax.jobs.selftrain` writes them:
    compressed-RLE masks, `score`, categories by name).

`merge_labels` builds the next round's labels, image by image (in the order of `labels["images"]`):
  1. candidates: the image's predictions scoring at least `threshold` whose mask has at least `min_area` pixels,
     best score first (ties keep file order);
  2. de-duplication among them, greedily: a candidate whose mask IoU with an already kept one is at least
     `dedup_iou` is dropped (one label per object, whatever the class); at most `max_dets` are kept;
  3. `mode='replace'`: the kept predictions are the image's labels; `mode='union'`: the previous labels are
     kept too, except those whose mask IoU with a kept prediction is at least `dedup_iou` (the prediction
     replaces them, as in CutLER); crowd labels (`iscrowd: 1`) are always kept.
  4. (union, optional) `protect`: previous labels that an earlier round's detector made (they carry
     `self_round`) are never replaced: a kept prediction agreeing with one (mask IoU >= `dedup_iou`) is dropped
     instead, so a round repairs the original pseudo-labels and adds missed objects but does not redo its own
     earlier work with a detector trained on it (which drifts: thresholded predictions shrink a little every
     round). `round_index` is written as `self_round` on the new labels.
  5. (union, optional) `support`: a previous label that no prediction of the image agrees with (mask IoU >=
     `dedup_iou`, any score) scoring at least `support` is dropped: the detector trained on it does not find it
     again (false pseudo-labels: background blobs, merged objects); `rescore`: a kept previous label takes the
     score of its best-agreeing prediction, so every label is ranked on the detector's scale.
Mask IoU is pycocotools' `mask.iou` on RLEs (exact pixel counts).

`calibrate` derives a round's thresholds from the previous labels instead of fixing them: the scores of the
predictions that agree with a previous label (mask IoU >= `dedup_iou`) are what this detector gives real objects;
a quantile of them is the threshold of new labels, a lower one the support a previous label needs.

Output records: the image's kept predictions first (best first), then its surviving previous labels in their
previous order; annotation ids 1..N in that order. A new label is `{id, image_id, category_id, segmentation
(compressed RLE), area, bbox (the prediction's own box, the detector's final one: with box_source='mask' the
extent of the object's region around its mask's largest piece, so a stray piece of the mask does not stretch
it; the mask's tight box where the prediction has no usable box; training recomputes its box targets from the
mask either way), iscrowd 0, score}`; a previous
label keeps every field but `id` (and its score, with `rescore`).
Categories: the previous labels' categories, then (new ids, in order of appearance) any prediction category
whose name is not among them (e.g. `object` of a class-agnostic detector). Images and category order are those
of `labels`, so the same inputs give the same output, byte for byte once serialised.
"""
from __future__ import annotations

import math

import numpy as np
from pycocotools import mask as mask_utils

from zipjax.errors import InputError
from zipjax.io.coco import normalize_name
from zipjax.io.geometry import rle_area, rle_bbox, to_compressed_rle

MODES = ("replace", "union")
ROUND_KEY = "self_round"  # the round whose merge added a label (absent on the original pseudo-labels)


def _rle_bytes(rle: dict) -> dict:
  counts = rle["counts"]
  return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def mask_iou(a: list, b: list) -> np.ndarray:
  """float64 [len(a), len(b)]: mask IoU of compressed RLEs (pycocotools, non-crowd)."""
  if not a or not b:
    return np.zeros((len(a), len(b)), np.float64)
  return np.asarray(mask_utils.iou([_rle_bytes(r) for r in a], [_rle_bytes(r) for r in b], [0] * len(b)),
                    np.float64).reshape(len(a), len(b))  # [A, B]


def select_predictions(preds: list, threshold: float, max_dets: int, dedup_iou: float, min_area: float) -> list:
  """Steps 1-2 of the module docstring for one image: the kept prediction records, best first.

  Args:
    preds: records with `score` and a compressed-RLE `segmentation`.
  """
  cand = [p for p in preds if p["score"] >= threshold and rle_area(p["segmentation"]) >= min_area]
  order = sorted(range(len(cand)), key=lambda i: -cand[i]["score"])  # stable: ties keep file order
  kept: list = []
  for i in order:
    if len(kept) >= max_dets:
      break
    if kept and mask_iou([cand[i]["segmentation"]], [k["segmentation"] for k in kept]).max() >= dedup_iou:
      continue
    kept.append(cand[i])
  return kept


def _check(threshold, max_dets, mode, dedup_iou, min_area) -> None:
  if mode not in MODES:
    raise InputError(f"selftrain.mode must be one of {', '.join(MODES)}, got {mode!r}")
  if not 0.0 <= float(threshold) <= 1.0:
    raise InputError(f"selftrain threshold must be in [0, 1], got {threshold}")
  if int(max_dets) < 1:
    raise InputError(f"selftrain.max_dets must be >= 1, got {max_dets}")
  if not 0.0 < float(dedup_iou) <= 1.0:
    raise InputError(f"selftrain.dedup_iou must be in (0, 1], got {dedup_iou}")
  if float(min_area) < 0:
    raise InputError(f"selftrain.min_area must be >= 0, got {min_area}")


def _group(dataset: dict, known: dict, what: str) -> dict:
  out: dict = {i: [] for i in known}
  for k, a in enumerate(dataset["annotations"]):
    if a["image_id"] not in known:
      raise InputError(f"{what} {k}: image_id {a['image_id']} is not among the labels' images")
    out[a["image_id"]].append(a)
  return out


def agreeing_scores(labels: dict, predictions: dict, dedup_iou: float = 0.5) -> tuple:
  """(scores of the predictions whose mask IoU with a non-crowd label of their image is at least `dedup_iou`,
  number of predictions): what `calibrate` reads."""
  known = {img["id"]: img for img in labels["images"]}
  labels_of = _group(labels, known, "label")
  preds_of = _group(predictions, known, "prediction")
  scores, total = [], 0
  for i, img in known.items():
    h, w = int(img["height"]), int(img["width"])
    lab = [to_compressed_rle(a["segmentation"], h, w) for a in labels_of[i] if not a.get("iscrowd", 0)]
    preds = preds_of[i]
    total += len(preds)
    if not lab or not preds:
      continue
    best = mask_iou([p["segmentation"] for p in preds], lab).max(axis=1)  # [P]
    scores += [float(p["score"]) for p, b in zip(preds, best) if b >= dedup_iou]
  return scores, total


def calibrate(labels: dict, predictions: dict, *, quantile: float, support_quantile: float = 0.0,
              dedup_iou: float = 0.5, floor: float = 0.0) -> dict:
  """A round's thresholds from the previous labels (see the module docstring).

  Returns:
    `{"threshold": max(floor, the `quantile` quantile of the agreeing predictions' scores), "support": their
    `support_quantile` quantile (0 when that is 0), "agreeing": their number, "predictions": all predictions}`;
    without any agreeing prediction the threshold is `floor` and the support 0.
  """
  if not 0.0 < quantile < 1.0 or not 0.0 <= support_quantile < 1.0:
    raise InputError(f"calibration quantiles must be in (0, 1) and [0, 1), got {quantile}, {support_quantile}")
  scores, total = agreeing_scores(labels, predictions, dedup_iou)
  if not scores:
    return {"threshold": float(floor), "support": 0.0, "agreeing": 0, "predictions": total}
  arr = np.asarray(scores, np.float64)
  return {"threshold": max(float(floor), float(np.quantile(arr, quantile))),
          "support": float(np.quantile(arr, support_quantile)) if support_quantile > 0 else 0.0,
          "agreeing": len(scores), "predictions": total}


def _prediction_box(p: dict, rle: dict) -> list:
  """A new label's box: the prediction's xywh box if it is 4 finite numbers of positive size, else its mask's."""
  b = p.get("bbox")
  if (isinstance(b, (list, tuple)) and len(b) == 4 and all(
      isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b) and min(b[2:]) > 0):
    return [float(v) for v in b]
  return rle_bbox(rle)


def merge_labels(labels: dict, predictions: dict, *, threshold: float, max_dets: int = 30, mode: str = "union",
                 dedup_iou: float = 0.5, min_area: float = 1.0, support: float | None = None, rescore: bool = False,
                 protect: bool = False, round_index: int | None = None, info: dict | None = None) -> tuple:
  """The next round's labels (see the module docstring).

  Returns:
    `(dataset, stats)`: the COCO dataset (`info`, `images`, `annotations`, `categories`) and
    `{"predicted": candidates at or above the threshold, "added": new labels, "kept": previous labels kept,
    "replaced": previous labels replaced by a prediction, "dropped": previous labels dropped (replace mode),
    "unsupported": previous labels dropped for lack of support, "labels": total}` (with `protect` also
    "confirmed": kept predictions dropped because they agree with a protected label).

  Raises:
    InputError: bad settings, a prediction for an image the labels do not list, a prediction category
      without a name.
  """
  _check(threshold, max_dets, mode, dedup_iou, min_area)
  categories = [dict(c) for c in labels["categories"]]
  id_of_name = {normalize_name(c["name"]): c["id"] for c in categories}
  next_id = max([c["id"] for c in categories] + [0]) + 1
  pred_cat = {}
  for c in predictions.get("categories", []):
    key = normalize_name(c["name"])
    if key not in id_of_name:
      categories.append({"id": next_id, "name": c["name"], "supercategory": "object"})
      id_of_name[key] = next_id
      next_id += 1
    pred_cat[c["id"]] = id_of_name[key]

  images = labels["images"]
  known = {img["id"]: img for img in images}
  preds_of = _group(predictions, known, "prediction")
  for k, p in enumerate(predictions["annotations"]):
    if p["category_id"] not in pred_cat:
      raise InputError(f"prediction {k}: category_id {p['category_id']} is not in the predictions' categories")
  old_of: dict = {i: [] for i in known}
  for k, a in enumerate(labels["annotations"]):
    if not a.get("iscrowd", 0) and a.get("segmentation") in (None, []):
      raise InputError(f"label {k} (image_id {a['image_id']}): no segmentation")
    old_of[a["image_id"]].append(a)

  stats = {"predicted": 0, "added": 0, "kept": 0, "replaced": 0, "dropped": 0, "unsupported": 0, "labels": 0}
  if protect:
    stats["confirmed"] = 0
  out = []
  for img in images:
    h, w = int(img["height"]), int(img["width"])
    preds = preds_of[img["id"]]
    stats["predicted"] += sum(1 for p in preds if p["score"] >= threshold)
    kept = select_predictions(preds, threshold, max_dets, dedup_iou, min_area)
    old = old_of[img["id"]]
    if mode == "union" and protect:
      # labels an earlier round's detector made stay: a prediction agreeing with one confirms it, adds nothing
      made = [to_compressed_rle(a["segmentation"], h, w) for a in old
              if ROUND_KEY in a and not a.get("iscrowd", 0)]
      if made and kept:
        agree = mask_iou([p["segmentation"] for p in kept], made).max(axis=1) >= dedup_iou  # [K]
        stats["confirmed"] += int(agree.sum())
        kept = [p for p, a in zip(kept, agree) if not a]
    for p in kept:
      rle = to_compressed_rle(p["segmentation"], h, w)
      rec = {"id": 0, "image_id": img["id"], "category_id": pred_cat[p["category_id"]], "segmentation": rle,
             "area": rle_area(rle), "bbox": _prediction_box(p, rle),
             "iscrowd": 0, "score": float(p["score"])}
      if round_index is not None:
        rec[ROUND_KEY] = int(round_index)
      out.append(rec)
    stats["added"] += len(kept)
    if mode == "replace":
      stats["dropped"] += len(old)
      continue
    new_rles = [p["segmentation"] for p in kept]
    all_rles = [p["segmentation"] for p in preds]
    for a in old:
      rec = dict(a, id=0)
      if not a.get("iscrowd", 0):
        rle = to_compressed_rle(a["segmentation"], h, w)
        if new_rles and mask_iou([rle], new_rles).max() >= dedup_iou:
          stats["replaced"] += 1
          continue
        if support is not None or rescore:
          ious = mask_iou([rle], all_rles)[0] if all_rles else np.zeros(0)
          agree = [float(p["score"]) for p, v in zip(preds, ious) if v >= dedup_iou]
          best = max(agree, default=None)
          if support is not None and (best is None or best < support):
            stats["unsupported"] += 1
            continue
          if rescore and best is not None:
            rec["score"] = best
      out.append(rec)
      stats["kept"] += 1
  for k, a in enumerate(out):
    a["id"] = k + 1
  stats["labels"] = len(out)
  data = {"info": dict(info or {}), "images": [dict(i) for i in images], "annotations": out,
          "categories": categories}
  return data, stats


__all__ = ["MODES", "ROUND_KEY", "mask_iou", "select_predictions", "agreeing_scores", "calibrate", "merge_labels"]
