"""Evaluation during training: the validation set, checked up front (`load_val_set`), and the periodic COCO
evaluation of the detector on it (`Evaluator`: class-agnostic and class-aware box and mask AP / AP50 / AP75 /
AR100 through `zipjax.eval.evaluate`; every process predicts its part, process 0 scores).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from zipjax.data import coco_train
from zipjax.errors import InputError
from zipjax.eval import evaluate
from zipjax.io import coco as coco_io
from zipjax.io import images as images_io
from zipjax.io.geometry import encode_rle
from zipjax.train.predict import Inference


@dataclasses.dataclass
class ValSet:
  """A validation set whose image files were checked up front.

  Attributes:
    gt: the validated ground truth (`zipjax.io.coco.GroundTruth`), without the skipped images.
    paths: image id -> image file, in the ground truth's order.
    skipped: `[(path, reason)]` of the images left out (`skip_bad`).
  """
  gt: Any
  paths: dict
  skipped: list


def load_val_set(val_json: str, images_root: str, skip_bad: bool = False, progress: bool = False) -> ValSet:
  """The ground truth of `val_json` and its image files, every one checked (exists, is an image of the annotated
  size: `zipjax.data.coco_train.check_images`) before training starts; bad ones are refused in one message, or
  left out (with their annotations) under `skip_bad`."""
  gt = coco_io.load_ground_truth(val_json)
  records = []
  for image_id, img in gt.images.items():
    if "file_name" not in img:
      raise InputError(f"{val_json}: image {image_id} has no file_name")
    records.append({"path": os.path.join(images_root, img["file_name"]), "image_id": image_id,
                    "height": img["height"], "width": img["width"]})
  bad = coco_train.check_images(records, progress=progress)
  if bad and not skip_bad:
    raise InputError(coco_train.bad_images_message(val_json, "validation", bad, len(records)))
  gone = {p for p, _ in bad}
  keep = {r["image_id"]: r["path"] for r in records if r["path"] not in gone}
  if not keep:
    raise InputError(f"{val_json}: no validation image left")
  if bad:
    gt = dataclasses.replace(gt, images={i: im for i, im in gt.images.items() if i in keep},
                             annotations=[a for a in gt.annotations if a["image_id"] in keep])
  return ValSet(gt=gt, paths=keep, skipped=bad)


class Evaluator:
  """Periodic COCO evaluation of the detector on a validation set (images decoded once).

  Attributes:
    gt: the validated ground truth (`zipjax.io.coco.GroundTruth`).
    names: the validation category names.
    images: [(image_id, uint8 [H, W, 3])].
    class_agnostic: the model was trained class-agnostic (class-aware metrics are then skipped).
  """

  def __init__(self, config, val_set: "ValSet", mesh, clip=None):
    self.gt = val_set.gt
    self.names = [c["name"] for c in self.gt.categories]
    self.class_agnostic = bool(config.data.class_agnostic)
    self.inference = Inference(config, mesh, ["object"] if self.class_agnostic else self.names,
                               int(config.eval.batch_size), float(config.eval.score_threshold), clip)
    self.images = []
    for image_id, path in val_set.paths.items():
      try:
        arr = images_io.load_image(path, min_side=1, max_side=1 << 16, max_aspect=1e9)
      except InputError as e:
        raise InputError(f"{path}: {e}") from None
      self.images.append((image_id, arr))

  def predictions(self, params, class_agnostic: bool) -> list:
    """COCO results of every validation image."""
    out = []
    bs = self.inference.batch_size
    for s in range(0, len(self.images), bs):
      chunk = self.images[s:s + bs]
      insts = self.inference(params, [a for _, a in chunk], class_agnostic=class_agnostic)
      for (image_id, _), image_insts in zip(chunk, insts):
        for inst in image_insts:
          x0, y0, x1, y1 = inst["box"]
          rec = {"image_id": image_id, "bbox": [x0, y0, max(x1 - x0, 0.0), max(y1 - y0, 0.0)],
                 "segmentation": encode_rle(inst["mask"]), "score": inst["score"]}
          if not class_agnostic:
            rec["category_name"] = self.names[inst["category"]]
          out.append(rec)
    return out

  def __call__(self, params) -> dict:
    """{'eval/agnostic/bbox_AP50': ..., 'eval/class/segm_AP': ...} (fractions; -1 when undefined)."""
    metrics = {}
    modes = [("agnostic", True)] + ([] if self.class_agnostic else [("class", False)])
    for tag, agnostic in modes:
      preds = self.predictions(params, agnostic)
      if jax.process_index() != 0:
        continue
      res = evaluate(self.gt, preds, iou_type="both", class_agnostic=agnostic)
      for iou in ("bbox", "segm"):
        for k in ("AP", "AP50", "AP75", "AR100"):
          v = res[iou][k]
          metrics[f"eval/{tag}/{iou}_{k}"] = -1.0 if v is None else float(v)
      metrics[f"eval/{tag}/num_pred"] = float(len(preds))
    return metrics


__all__ = ["ValSet", "load_val_set", "Evaluator"]
