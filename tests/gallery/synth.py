"""Synthetic zipjax output folders for the gallery tests and bench: images written to disk, an annotations.json
as `zipjax segment` writes it (compressed RLE, bbox, area, score; `file_name` relative to the images folder's
parent, which run.json records as `images_root`), errors.json, run.json, and a matching ground truth with shifted, dropped and extra instances."""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

CLASSES = ("orange", "Äpfel 🍎", "traffic light")


def rle(mask: np.ndarray) -> dict:
  r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": r["counts"].decode("ascii")}


def ellipse(h, w, cy, cx, ry, rx) -> np.ndarray:
  yy, xx = np.mgrid[:h, :w]
  return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def box_of(mask: np.ndarray) -> list:
  ys, xs = np.nonzero(mask)
  return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def make_run(base, n_images: int = 12, seed: int = 0, size=(96, 128), missing=(), with_gt: bool = False,
             max_instances: int = 4, flat: bool = False) -> dict:
  """Writes `base/images/*.png` and `base/run/{annotations,errors,run}.json` (+ `base/gt.json`).

  Image i (1-based) has `i % (max_instances + 1)` instances (so some have none), ellipses of random classes and
  scores. Images named in `missing` are listed but not written. Returns paths and the in-memory objects.
  """
  rng = np.random.default_rng(seed)
  base = os.fspath(base)
  img_dir, run_dir = os.path.join(base, "images"), os.path.join(base, "run")
  os.makedirs(img_dir, exist_ok=True)
  os.makedirs(run_dir, exist_ok=True)
  images, anns, gt_anns, masks = [], [], [], {}
  for i in range(1, n_images + 1):
    h, w = size[0] + 8 * (i % 3), size[1]
    name = f"images/img_{i:05d}.png"
    if name not in missing:
      if flat:
        pix = np.full((h, w, 3), 128, np.uint8)
      else:
        pix = (rng.integers(0, 60, (h, w, 3)) + np.array([90, 110, 130])).astype(np.uint8)
      Image.fromarray(pix).save(os.path.join(base, name))
    images.append({"id": i, "file_name": name, "height": h, "width": w})
    for k in range(i % (max_instances + 1)):
      cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 5, 4 * w // 5)
      m = ellipse(h, w, cy, cx, rng.integers(6, h // 3), rng.integers(6, w // 4))
      cat = int(rng.integers(0, len(CLASSES))) + 1
      ann = {"id": len(anns) + 1, "image_id": i, "category_id": cat, "segmentation": rle(m), "bbox": box_of(m),
             "area": float(m.sum()), "iscrowd": 0, "score": round(float(rng.uniform(0.05, 0.99)), 6)}
      anns.append(ann)
      masks[ann["id"]] = m
      if with_gt and k % 3 != 2:  # every third prediction has no ground truth (a false positive)
        shift = int(rng.integers(0, 2)) * int(rng.integers(1, 12))  # some shifts break IoU 0.5, most do not
        g = np.roll(m, shift, axis=1)
        gt_anns.append({"id": len(gt_anns) + 1, "image_id": i, "category_id": 100 + cat, "segmentation": rle(g),
                        "bbox": box_of(g), "area": float(g.sum()), "iscrowd": 0})
    if with_gt and i % 4 == 0:  # a missed object
      g = ellipse(h, w, h // 2, w // 2, h // 6, w // 8)
      gt_anns.append({"id": len(gt_anns) + 1, "image_id": i, "category_id": 101, "segmentation": rle(g),
                      "bbox": box_of(g), "area": float(g.sum()), "iscrowd": 0})
  cats = [{"id": j + 1, "name": n, "supercategory": "object"} for j, n in enumerate(CLASSES)]
  dataset = {"info": {"description": "zipjax segment", "preset": "zip", "random_init": False},
             "images": images, "annotations": anns, "categories": cats}
  with open(os.path.join(run_dir, "annotations.json"), "w", encoding="utf-8") as f:
    json.dump(dataset, f)
  errors = [{"path": "images/broken.jpg", "reason": "corrupt or truncated image (OSError: <broken> & \"x\")"},
            {"path": "images/tiny.png", "reason": "image too small (20x50 px; min_side 32)"}]
  with open(os.path.join(run_dir, "errors.json"), "w", encoding="utf-8") as f:
    json.dump(errors, f)
  with open(os.path.join(run_dir, "run.json"), "w", encoding="utf-8") as f:
    json.dump({"info": dataset["info"], "images": n_images + 2, "segmented": n_images, "skipped": 2,
               "images_root": base}, f)
  out = {"base": base, "run": run_dir, "images_dir": img_dir, "dataset": dataset, "errors": errors,
         "masks": masks}
  if with_gt:
    gt = {"images": [dict(im, id=im["id"] + 1000) for im in images],
          "annotations": [dict(a, image_id=a["image_id"] + 1000) for a in gt_anns],
          "categories": [{"id": 100 + j + 1, "name": n.upper()} for j, n in enumerate(CLASSES)]}
    with open(os.path.join(base, "gt.json"), "w", encoding="utf-8") as f:
      json.dump(gt, f)
    out["gt"], out["gt_path"] = gt, os.path.join(base, "gt.json")
  return out
