"""Pipeline outputs: COCO results, a COCO dataset with scores, overlays, errors; all written atomically.

- `results.json`: COCO results list `[{image_id, category_id, category_name, segmentation (compressed RLE),
  bbox [x, y, w, h], score}]` (`category_id` refers to `annotations.json`'s categories; `zipjax eval`
  matches by `category_name`).
- `annotations.json`: `{info, images, annotations (with score, area, iscrowd 0), categories}`; loadable by
  pycocotools' `COCO()` and accepted by `zipjax eval --pred`.
- `errors.json`: `[{path, reason}]` for every input that was skipped.
- `overlays/<index>_<stem>.png`: masks, boxes, class names and scores drawn on the image.
Random-weight runs are marked: `info.random_init` / `info.note`, and a banner on every overlay. File names
that are not valid UTF-8 are stored with their bad bytes escaped as `\\xNN` and a flag (`path_escaped` /
`file_name_escaped`: true), see `zipjax/io/paths.py`.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from zipjax.io.atomic import atomic_write_bytes, atomic_write_json
from zipjax.io.paths import display, json_path

RANDOM_NOTE = "RANDOM WEIGHTS (--random-init): these outputs exercise the pipeline; they are not predictions"


def encode_rle(mask: np.ndarray) -> dict:
  """bool [H, W] -> COCO compressed RLE {'size': [H, W], 'counts': str}."""
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


class ResultWriter:
  """Collects per-image instances and writes the output folder.

  Attributes:
    out_dir: the output folder.
    names: class names (category ids are 1 + their index).
    info: the `info` block of annotations.json.
  """

  def __init__(self, out_dir: str, names: list[str], info: dict):
    self.out_dir = out_dir
    self.names = list(names)
    self.info = dict(info)
    self.images: list[dict] = []
    self.annotations: list[dict] = []
    self.results: list[dict] = []
    self.errors: list[dict] = []
    os.makedirs(out_dir, exist_ok=True)

  def add_error(self, path: str, reason: str) -> None:
    text, escaped = json_path(path)  # names that are not valid UTF-8: see zipjax/io/paths.py
    self.errors.append({"path": text, "reason": display(reason), **({"path_escaped": True} if escaped else {})})

  def add_image(self, image_id: int, path: str, image: np.ndarray, instances: list[dict]) -> None:
    h, w = image.shape[:2]
    text, escaped = json_path(path)
    self.images.append({"id": image_id, "file_name": text, "height": int(h), "width": int(w),
                        **({"file_name_escaped": True} if escaped else {})})
    for inst in instances:
      rle = encode_rle(inst["mask"])
      x0, y0, x1, y1 = inst["box"]
      bbox = [float(x0), float(y0), float(max(x1 - x0, 0.0)), float(max(y1 - y0, 0.0))]
      cat = inst["category"] + 1
      score = round(float(inst["score"]), 6)
      self.results.append({"image_id": image_id, "category_id": cat, "category_name": self.names[cat - 1],
                           "segmentation": rle, "bbox": bbox, "score": score})
      self.annotations.append({"id": len(self.annotations) + 1, "image_id": image_id, "category_id": cat,
                               "segmentation": rle, "bbox": bbox, "area": float(mask_utils.area(
                                   {"size": rle["size"], "counts": rle["counts"].encode("ascii")})),
                               "iscrowd": 0, "score": score})

  def write_overlay(self, image_id: int, path: str, image: np.ndarray, instances: list[dict],
                    max_side: int = 1024) -> str:
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    dst = os.path.join(self.out_dir, "overlays", f"{image_id:06d}_{stem}.png")
    png = draw_overlay(image, instances, self.names, max_side, banner=RANDOM_NOTE.split(":")[0]
                       if self.info.get("random_init") else None)
    atomic_write_bytes(dst, png)
    return dst

  def flush(self) -> None:
    """Writes results.json, annotations.json and errors.json (each atomically)."""
    cats = [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(self.names)]
    atomic_write_json(os.path.join(self.out_dir, "results.json"), self.results, indent=None)
    atomic_write_json(os.path.join(self.out_dir, "annotations.json"),
                      {"info": self.info, "images": self.images, "annotations": self.annotations,
                       "categories": cats}, indent=None)
    atomic_write_json(os.path.join(self.out_dir, "errors.json"), self.errors)


def _colour(i: int) -> tuple[int, int, int]:
  rng = np.random.default_rng(i * 7919 + 13)
  c = rng.integers(60, 256, 3)
  return int(c[0]), int(c[1]), int(c[2])


def draw_overlay(image: np.ndarray, instances: list[dict], names: list[str], max_side: int = 1024,
                 banner: str | None = None) -> bytes:
  """PNG bytes: masks blended (alpha 0.45), boxes, 'name score' labels; scaled so the longer side <= max_side."""
  h, w = image.shape[:2]
  canvas = image.astype(np.float32).copy()  # [H, W, 3]
  for j, inst in enumerate(instances):
    col = np.array(_colour(j), np.float32)
    m = inst["mask"]
    canvas[m] = 0.55 * canvas[m] + 0.45 * col
  img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
  scale = min(1.0, max_side / max(h, w))
  if scale < 1.0:
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
  draw = ImageDraw.Draw(img)
  for j, inst in enumerate(instances):
    x0, y0, x1, y1 = (v * scale for v in inst["box"])
    col = _colour(j)
    draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=col, width=2)
    label = f"{names[inst['category']]} {inst['score']:.2f}"
    tw = draw.textlength(label)
    draw.rectangle([x0, y0, x0 + tw + 4, y0 + 12], fill=col)
    draw.text((x0 + 2, y0), label, fill=(0, 0, 0))
  if banner:
    draw.rectangle([0, 0, draw.textlength(banner) + 6, 13], fill=(200, 0, 0))
    draw.text((3, 0), banner, fill=(255, 255, 255))
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  return buf.getvalue()


__all__ = ["RANDOM_NOTE", "encode_rle", "ResultWriter", "draw_overlay"]
