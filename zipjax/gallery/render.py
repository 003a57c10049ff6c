"""What the gallery draws on the host: instance records normalised for the pages, thumbnails with the instances
burnt in, and display copies of the images; both image kinds are cached by content.

- `normalize_instances`: annotation records -> `Instance`s with a compressed RLE (uncompressed RLE and polygons
  converted; malformed masks left out with a problem message naming the record), box and area (taken from the
  record, else computed from the mask).
- Thumbnails (`render_thumbnail`): the image scaled to `side` px on its longer side, every mask blended in its
  class colour (alpha 0.45) after nearest-neighbour sampling of the mask's runs at the thumbnail's pixel centres
  (`zipjax.io.geometry.sample_mask`: no full-resolution mask or canvas), boxes and 'class score' labels; JPEG.
- Display copies (`render_display`): the image as zipjax reads it (EXIF orientation applied, RGB), scaled to at
  most `side` px; JPEG. Pages draw the masks over it in the browser, from the RLE, so it carries no annotation.
- Cache keys (`thumb_key`, `display_key`): sha1 of the render version, the resolved image path, its size and
  mtime (or why it is missing), the output size and, for thumbnails, the sha1 of the image's annotation bytes
  and the names and colours of the classes drawn. A file named by its key is never rewritten.
"""
from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import io
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from zipjax.io.geometry import clip_bbox, sample_mask, segmentation_problem, to_compressed_rle

RENDER_VERSION = 1
MISSING_GRAY = (96, 96, 96)


def class_colour(i: int) -> tuple[int, int, int]:
  """A distinct colour for class (or instance) number `i` (golden-ratio hue steps)."""
  h = (0.07 + i * 0.618033988749895) % 1.0
  s = 0.85 if i % 2 == 0 else 0.6
  r, g, b = colorsys.hsv_to_rgb(h, s, 0.95)
  return round(r * 255), round(g * 255), round(b * 255)


def hex_colour(c) -> str:
  return "#{:02x}{:02x}{:02x}".format(*c)


@dataclasses.dataclass
class Instance:
  """One annotation, ready to draw.

  Attributes:
    k: position among its image's annotations (file order).
    category_id: category id as in the file.
    score: score, or None.
    area: area in pixels.
    bbox: [x, y, w, h].
    rle: {"size": [H, W], "counts": str} or None (no usable mask).
    iscrowd: COCO crowd flag.
    ann_id: the record's `id`, or None.
  """
  k: int
  category_id: int
  score: float | None
  area: float
  bbox: list
  rle: dict | None
  iscrowd: bool
  ann_id: int | None = None


def normalize_instances(records: list, height: int, width: int, where: str) -> tuple[list, list]:
  """Annotation dicts of one `height` x `width` image -> (`Instance`s, problem messages)."""

  out, problems = [], []
  for k, rec in enumerate(records):
    seg, rle = rec.get("segmentation"), None
    if seg is not None:
      problem = segmentation_problem(seg, height, width)
      if problem:
        problems.append(f"{where}: annotation {k} (id {rec.get('id')}): {problem}; its mask is not drawn")
      else:
        rle = to_compressed_rle(seg, height, width)
    coco_rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")} if rle else None
    bbox = rec.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite(v) for v in bbox)):
      bbox = [float(v) for v in mask_utils.toBbox(coco_rle)] if coco_rle else None
    if bbox is None:
      problems.append(f"{where}: annotation {k} (id {rec.get('id')}): neither a mask nor a box; not drawn")
      continue
    bbox = clip_bbox(bbox, height, width)  # drawn inside the image, whatever the numbers in the record
    area = rec.get("area")
    if not _finite(area):
      area = float(mask_utils.area(coco_rle)) if coco_rle else float(bbox[2] * bbox[3])
    score = rec.get("score")
    out.append(Instance(k=k, category_id=int(rec.get("category_id", 0)),
                        score=float(score) if _finite(score) else None, area=float(area),
                        bbox=[float(v) for v in bbox], rle=rle, iscrowd=bool(rec.get("iscrowd")),
                        ann_id=rec.get("id") if isinstance(rec.get("id"), int) else None))
  return out, problems


def _finite(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ------------------------------------------------------------------------------------------- cache keys
def image_stamp(path: str | None, missing_reason: str | None) -> list:
  """What identifies an image file's content for the cache: [path, size, mtime_ns], or the missing reason."""
  if path is None or missing_reason:
    return ["missing", path, missing_reason]
  st = os.stat(path)
  return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def _key(parts) -> str:
  return hashlib.sha1(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def thumb_key(stamp: list, ann_hash: str, side: int, classes: list) -> str:
  """`classes`: [(name, colour hex)] of the classes drawn on the thumbnail."""
  return _key([RENDER_VERSION, "thumb", stamp, ann_hash, side, classes])


def display_key(stamp: list, side: int) -> str:
  return _key([RENDER_VERSION, "display", stamp, side])


# ------------------------------------------------------------------------------------------- drawing
def fit(width: int, height: int, side: int) -> tuple[int, int]:
  """(w, h) scaled so that the longer side is at most `side` (never enlarged)."""
  s = min(1.0, side / max(width, height))
  return max(1, round(width * s)), max(1, round(height * s))


def _jpeg(img: Image.Image, quality: int) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format="JPEG", quality=quality, optimize=True)
  return buf.getvalue()


def render_thumbnail(image: np.ndarray | None, width: int, height: int, instances: list, colours: dict,
                     names: dict, side: int, quality: int = 85) -> bytes:
  """JPEG bytes of the thumbnail.

  Args:
    image: uint8 [h, w, 3] or None (missing: a gray canvas with the masks on it).
    width, height: the annotated image size (mask coordinates).
    instances: `Instance`s to draw.
    colours: category id -> (r, g, b).
    names: category id -> class name.
    side: longer side of the thumbnail in pixels.
    quality: JPEG quality.
  """
  tw, th = fit(width, height, side)
  if image is None:
    base = Image.new("RGB", (tw, th), MISSING_GRAY)
  else:
    base = Image.fromarray(image, "RGB").resize((tw, th), Image.BILINEAR, reducing_gap=2.0)
  canvas = np.asarray(base, np.float32).copy()  # [th, tw, 3]
  for inst in instances:
    if inst.rle is None:
      continue
    m = sample_mask(inst.rle, tw, th)  # [th, tw]
    canvas[m] = 0.55 * canvas[m] + 0.45 * np.asarray(colours[inst.category_id], np.float32)
  img = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
  draw = ImageDraw.Draw(img)
  sx, sy = tw / width, th / height
  for inst in instances:
    x, y, w, h = inst.bbox
    x0, y0, x1, y1 = x * sx, y * sy, (x + w) * sx, (y + h) * sy
    col = colours[inst.category_id]
    draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=col, width=1)
    label = names[inst.category_id] + (f" {inst.score:.2f}" if inst.score is not None else "")
    tw_ = draw.textlength(label)
    draw.rectangle([x0, y0, x0 + tw_ + 3, y0 + 11], fill=col)
    draw.text((x0 + 2, y0), label, fill=(0, 0, 0))
  if image is None:
    draw.text((4, th - 14), "image missing", fill=(255, 255, 255))
  return _jpeg(img, quality)


def render_display(image: np.ndarray, side: int, quality: int = 90) -> tuple[bytes, int, int]:
  """(JPEG bytes, w, h) of the image scaled to at most `side` px on its longer side."""
  h, w = image.shape[:2]
  dw, dh = fit(w, h, side)
  img = Image.fromarray(image, "RGB")
  if (dw, dh) != (w, h):
    img = img.resize((dw, dh), Image.BILINEAR, reducing_gap=2.0)
  return _jpeg(img, quality), dw, dh


__all__ = ["RENDER_VERSION", "Instance", "class_colour", "hex_colour", "normalize_instances", "image_stamp",
           "thumb_key", "display_key", "fit", "render_thumbnail", "render_display"]
