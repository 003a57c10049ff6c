"""Synthetic COCO ground truth and predictions with pixel-exact rectangle masks (box IoU == mask IoU)."""
import numpy as np
from pycocotools import mask as mask_utils

H, W = 120, 160


def rect_mask(x, y, w, h, height=H, width=W):
  m = np.zeros((height, width), np.uint8)
  m[y:y + h, x:x + w] = 1
  return m


def rle(mask):
  r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": r["counts"].decode("ascii")}


def rect(x, y, w, h, height=H, width=W):
  """(bbox, rle, area) of an axis-aligned rectangle with integer corners."""
  return [float(x), float(y), float(w), float(h)], rle(rect_mask(x, y, w, h, height, width)), float(w * h)


def dataset(n_images=2, categories=("cat", "dog")):
  return {
      "images": [{"id": i + 1, "height": H, "width": W, "file_name": f"dir/img{i + 1}.jpg"}
                 for i in range(n_images)],
      "categories": [{"id": 10 + k, "name": n} for k, n in enumerate(categories)],
      "annotations": [],
  }


def add_gt(gt, image_id, category_id, x, y, w, h, iscrowd=0):
  bbox, seg, area = rect(x, y, w, h)
  gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id,
                            "category_id": category_id, "bbox": bbox, "segmentation": seg, "area": area,
                            "iscrowd": iscrowd})


def pred(image_id, x, y, w, h, score, **fields):
  bbox, seg, _ = rect(x, y, w, h)
  return {"image_id": image_id, "bbox": bbox, "segmentation": seg, "score": score, **fields}


def perfect_predictions(gt):
  names = {c["id"]: c["name"] for c in gt["categories"]}
  out = []
  for k, a in enumerate(gt["annotations"]):
    if a["iscrowd"]:
      continue
    out.append({"image_id": a["image_id"], "category_name": names[a["category_id"]], "bbox": a["bbox"],
                "segmentation": a["segmentation"], "score": 0.5 + 0.4 * ((k * 7) % 11) / 11})
  return out


def coco_ap_101(scores, ious, n_gt, thresholds=np.linspace(0.5, 0.95, 10)):
  """Independent COCO AP of one class: each detection overlaps at most one gt (with IoU `ious[i]`, 0 for
  none) and each gt at most one detection, so matching needs no greedy search. Precision is made monotone
  from the right and read at 101 recall points (recall < r everywhere -> 0)."""
  scores, ious = np.asarray(scores, float), np.asarray(ious, float)
  order = np.argsort(-scores, kind="mergesort")
  rs = np.linspace(0.0, 1.0, 101)
  aps = []
  for t in thresholds:
    tp = ious[order] >= t
    tpc, fpc = np.cumsum(tp), np.cumsum(~tp)
    recall, precision = tpc / n_gt, tpc / np.maximum(tpc + fpc, 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    q = [envelope[np.argmax(recall >= r)] if (recall >= r).any() else 0.0 for r in rs]
    aps.append(np.mean(q))
  return np.asarray(aps)
