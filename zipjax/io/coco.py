"""COCO ground truth and detection results: loading, validation and normalisation for evaluation.

Everything a COCO evaluator would silently accept but mis-score (predictions for images that are not in the
ground truth, unknown class names, RLE strings whose runs do not cover the image, masks of another size,
NaN scores, annotation id 0) is refused here with an `InputError` naming the file, the record index and its
image_id.

Accepted prediction formats (the `--pred` file of `zipjax eval`, or the same object in memory):

1. A standard COCO results list: `[{"image_id", "score", "category_id"?, "category_name"?, "bbox"?,
   "segmentation"?}, ...]`. `bbox` is `[x, y, w, h]` in pixels; `segmentation` is an RLE
   (`{"size": [h, w], "counts": str | list[int]}`) or a polygon list. In class-aware evaluation a record's
   class is `category_name` when present (matched to the ground-truth category names, case-insensitive,
   surrounding and repeated whitespace ignored), otherwise `category_id` read as a ground-truth category id.
2. A full COCO dataset `{"images", "annotations", "categories"}` whose annotations carry `score` (what the
   zipjax pipeline writes as `annotations.json`). Annotation classes are resolved through the file's own
   `categories` list by name (`category_name` on an annotation wins; without a `categories` list,
   `category_id` is read as a ground-truth id). Its images are matched to the
   ground-truth images by `file_name` (exact, then basename) when every image has one, otherwise by id.
   The images listed there (with or without detections) are the images the file covers.

In class-agnostic evaluation every class field is ignored: all ground truth and all predictions become the
single category `object` (CutLER's protocol).

Geometry is bounded by the image before anything is rasterised, for ground truth and predictions alike, so
memory and time follow the image size, not the coordinates (`zipjax/io/geometry.py`, the one module that
validates, clips and rasterises masks; its names are importable from here too):

- Polygons lying within one pixel of the image (`[-1, W + 1] x [-1, H + 1]`, everything COCO-style tools
  write) are used unchanged. Others are clipped to that rectangle (Sutherland-Hodgman; the region inside the
  image is the same, so the mask is the same up to pycocotools' 1/5-pixel rounding of the new vertices on the
  clip border, outside the image); a polygon with nothing left is dropped, and a segmentation with no polygon
  left is an empty mask. Coordinates beyond +-1e12 are refused (`InputError` naming the file, record index
  and image_id), as are non-finite ones.
- Boxes `[x, y, w, h]` are clipped to the image `[0, W] x [0, H]` (nothing outside the image can match
  anything). A box that lies within the image is unchanged; a box far outside it becomes an empty box on the
  border, which still counts as a false positive. Unclipped, a box whose area exceeds COCO's largest area
  range (1e10 px) would be silently ignored by the evaluator.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from typing import Any

import numpy as np

from zipjax.errors import InputError
from zipjax.io.geometry import (MAX_COORDINATE, bounded_segmentation, clip_bbox, clip_polygons,  # noqa: F401
                                rle_area, rle_bbox, rle_counts_from_string, segmentation_problem,
                                to_compressed_rle)

AGNOSTIC_CATEGORY = {"id": 1, "name": "object"}
MAX_JSON_BYTES = 8 << 30  # a JSON input file is read up to this size (bounded even for a growing file)


def _raise_if(where: str, problem: str | None) -> None:
  """An InputError naming the record when a check found a problem."""
  if problem:
    raise InputError(f"{where}: {problem}")


def normalize_name(name: str) -> str:
  """Class-name key used to match predicted classes to ground-truth categories."""
  return " ".join(str(name).split()).casefold()


@dataclasses.dataclass
class GroundTruth:
  """A validated COCO ground-truth dataset.

  Attributes:
    images: `{image_id: {"id", "height", "width", "file_name"?}}` in file order.
    categories: `[{"id", "name"}]` in file order.
    annotations: normalised annotations (`id` renumbered 1..N; `bbox`, `area`, `iscrowd` always present;
      `segmentation` as in the file or absent).
    source: file path or `<memory>` (used in messages).
  """
  images: dict
  categories: list
  annotations: list
  source: str

  @property
  def num_crowd(self) -> int:
    return sum(1 for a in self.annotations if a["iscrowd"])

  def category_by_name(self) -> dict:
    return {normalize_name(c["name"]): c["id"] for c in self.categories}


@dataclasses.dataclass
class Predictions:
  """Validated predictions mapped onto a ground truth.

  Attributes:
    records: `[{"image_id", "category_id", "score", "bbox"?, "segmentation"?}]` with ground-truth image ids,
      ground-truth category ids (or 1 in class-agnostic mode), finite scores, `[x, y, w, h]` boxes and
      compressed RLE masks (`counts` as str).
    image_ids: ground-truth ids of the images the file covers (dataset form), or None (results list).
    source: file path or `<memory>`.
    class_agnostic: whether classes were merged when loading.
  """
  records: list
  image_ids: list | None
  source: str
  class_agnostic: bool = False


def load_json(src, what: str):
  """Returns `(obj, source)`: the parsed JSON at path `src`, or `src` itself when it is already a dict/list."""
  if isinstance(src, (dict, list)):
    return src, "<memory>"
  path = os.fspath(src)
  try:
    st = os.stat(path)
  except FileNotFoundError:
    raise InputError(f"{path}: {what} file not found") from None
  except OSError as e:
    raise InputError(f"{path}: cannot read {what} file ({e})") from None
  if not stat.S_ISREG(st.st_mode):
    kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, socket or device)"
    raise InputError(f"{path}: {what} file is {kind}; refused without reading it")
  if st.st_size > MAX_JSON_BYTES:
    raise InputError(f"{path}: {what} file is {st.st_size} bytes, more than the {MAX_JSON_BYTES} read at most")
  try:
    with open(path, "rb") as f:
      data = f.read(MAX_JSON_BYTES + 1)  # bounded, even if the file grows meanwhile
    if len(data) > MAX_JSON_BYTES:
      raise InputError(f"{path}: {what} file is more than the {MAX_JSON_BYTES} bytes read at most")
    return json.loads(data), path
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f"{path}: {what} file is not valid JSON ({e})") from None
  except RecursionError:
    raise InputError(f"{path}: {what} file is not valid JSON (nested too deeply)") from None
  except OSError as e:
    raise InputError(f"{path}: cannot read {what} file ({e})") from None


# ------------------------------------------------------------------------------------- ground truth


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _bbox_problem(bbox) -> str | None:
  if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
    return f"bbox must be [x, y, w, h] numbers, got {bbox!r}"
  if not all(math.isfinite(v) for v in bbox):
    return f"bbox has a non-finite value: {list(bbox)}"
  if bbox[2] < 0 or bbox[3] < 0:
    return f"bbox has a negative width or height: {list(bbox)}"
  return None


def load_ground_truth(src, source: str | None = None) -> GroundTruth:
  """Reads and validates a COCO ground-truth dataset (path or dict); the input object is not modified.
  `source` names a dict's file in messages (default: the path, or `<memory>`).

  Raises:
    InputError: naming the file and the offending image, category or annotation (index and ids).
  """
  if isinstance(src, GroundTruth):
    return src
  data, found = load_json(src, "ground-truth")
  source = source or found
  if not isinstance(data, dict):
    raise InputError(f"{source}: ground truth must be a COCO dataset object, got a JSON {type(data).__name__}")
  for key in ("images", "annotations", "categories"):
    if not isinstance(data.get(key), list):
      raise InputError(f"{source}: ground truth has no '{key}' list")

  images = {}
  for i, img in enumerate(data["images"]):
    where = f"{source}: image {i}"
    if not isinstance(img, dict) or not _is_int(img.get("id")):
      raise InputError(f"{where}: needs an integer 'id'")
    if img["id"] in images:
      raise InputError(f"{where} (id {img['id']}): duplicate image id")
    h, w = img.get("height"), img.get("width")
    if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
      raise InputError(f"{where} (id {img['id']}): needs positive integer 'height' and 'width'")
    entry = {"id": img["id"], "height": h, "width": w}
    if isinstance(img.get("file_name"), str):
      entry["file_name"] = img["file_name"]
    images[img["id"]] = entry

  categories, seen_names = [], {}
  for i, cat in enumerate(data["categories"]):
    where = f"{source}: category {i}"
    if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
      raise InputError(f"{where}: needs an integer 'id' and a string 'name'")
    if any(c["id"] == cat["id"] for c in categories):
      raise InputError(f"{where} (id {cat['id']}): duplicate category id")
    key = normalize_name(cat["name"])
    if key in seen_names:
      raise InputError(f"{where} (id {cat['id']}): name {cat['name']!r} repeats category {seen_names[key]}")
    seen_names[key] = cat["id"]
    categories.append({"id": cat["id"], "name": cat["name"]})
  cat_ids = {c["id"] for c in categories}

  annotations, seen_ids = [], set()
  for i, ann in enumerate(data["annotations"]):
    if not isinstance(ann, dict):
      raise InputError(f"{source}: annotation {i}: must be an object")
    image_id = ann.get("image_id")
    where = f"{source}: annotation {i} (id {ann.get('id')}, image_id {image_id})"
    if not _is_int(image_id) or image_id not in images:
      raise InputError(f"{where}: image_id is not in the ground-truth images")
    if not _is_int(ann.get("category_id")) or ann["category_id"] not in cat_ids:
      raise InputError(f"{where}: category_id {ann.get('category_id')!r} is not in the categories")
    if "id" in ann:
      if not _is_int(ann["id"]):
        raise InputError(f"{where}: annotation id must be an integer")
      if ann["id"] in seen_ids:
        raise InputError(f"{where}: duplicate annotation id")
      seen_ids.add(ann["id"])
    iscrowd = ann.get("iscrowd", 0)
    if iscrowd not in (0, 1) or isinstance(iscrowd, bool):
      raise InputError(f"{where}: iscrowd must be 0 or 1, got {iscrowd!r}")
    img = images[image_id]
    out = {"id": len(annotations) + 1, "image_id": image_id, "category_id": ann["category_id"],
           "iscrowd": iscrowd}
    seg = ann.get("segmentation")
    if seg is not None and seg != []:
      _raise_if(where, segmentation_problem(seg, img["height"], img["width"]))
      seg = bounded_segmentation(seg, img["height"], img["width"])
      out["segmentation"] = seg
    if "bbox" in ann:
      _raise_if(where, _bbox_problem(ann["bbox"]))
      out["bbox"] = clip_bbox(ann["bbox"], img["height"], img["width"])
    elif "segmentation" in out:
      out["bbox"] = rle_bbox(to_compressed_rle(seg, img["height"], img["width"]))
    else:
      raise InputError(f"{where}: needs a 'bbox' or a 'segmentation'")
    if "area" in ann:
      if not _is_number(ann["area"]) or not math.isfinite(ann["area"]) or ann["area"] < 0:
        raise InputError(f"{where}: area must be a finite non-negative number, got {ann['area']!r}")
      out["area"] = float(ann["area"])
    elif "segmentation" in out:
      out["area"] = rle_area(to_compressed_rle(seg, img["height"], img["width"]))
    else:
      out["area"] = out["bbox"][2] * out["bbox"][3]
    annotations.append(out)
  return GroundTruth(images=images, categories=categories, annotations=annotations, source=source)


# -------------------------------------------------------------------------------------- predictions


def _image_mapping(pred_images: list, gt: GroundTruth, source: str) -> dict:
  """Maps a prediction dataset's image ids to ground-truth image ids (file_name when all have one, else id)."""
  by_file, by_base, ambiguous = {}, {}, set()
  for img in gt.images.values():
    name = img.get("file_name")
    if name is None:
      continue
    by_file[name] = img["id"]
    base = os.path.basename(name)
    if base in by_base:
      ambiguous.add(base)
    by_base[base] = img["id"]
  use_names = bool(pred_images) and bool(by_file) and all(
      isinstance(im, dict) and isinstance(im.get("file_name"), str) for im in pred_images)
  mapping = {}
  for i, img in enumerate(pred_images):
    if not isinstance(img, dict) or not _is_int(img.get("id")):
      raise InputError(f"{source}: image {i}: needs an integer 'id'")
    where = f"{source}: image {i} (id {img['id']})"
    if use_names:
      name = img["file_name"]
      base = os.path.basename(name)
      if name in by_file:
        gt_id = by_file[name]
      elif base in by_base and base not in ambiguous:
        gt_id = by_base[base]
      elif base in ambiguous:
        raise InputError(f"{where}: file_name {name!r} matches several ground-truth images by basename")
      else:
        raise InputError(f"{where}: file_name {name!r} is not in the ground-truth images")
    else:
      gt_id = img["id"]
      if gt_id not in gt.images:
        raise InputError(f"{where}: image id is not in the ground-truth images")
    gt_img = gt.images[gt_id]
    for key in ("height", "width"):
      if key in img and img[key] != gt_img[key]:
        raise InputError(f"{where}: {key} {img[key]!r} differs from ground-truth image {gt_id} "
                         f"({key} {gt_img[key]})")
    if img["id"] in mapping:
      raise InputError(f"{where}: duplicate image id")
    mapping[img["id"]] = gt_id
  return mapping


def load_predictions(src, gt: GroundTruth, class_agnostic: bool = False, need_bbox: bool = True,
                     need_segm: bool = True) -> Predictions:
  """Reads, validates and normalises predictions against `gt` (see the module docstring for the formats).

  Args:
    src: path, results list, or COCO dataset dict (not modified).
    gt: the ground truth the predictions refer to.
    class_agnostic: map every record to the single category 1 and ignore class fields.
    need_bbox: every record must give a box (or a mask to derive it from).
    need_segm: every record must give a segmentation.

  Raises:
    InputError: naming the file, the record index and its image_id.
  """
  if isinstance(src, Predictions):
    if src.class_agnostic != bool(class_agnostic):
      raise InputError(f"{src.source}: predictions were loaded with class_agnostic={src.class_agnostic}, "
                       f"cannot evaluate them with class_agnostic={bool(class_agnostic)}")
    for need, key in ((need_segm, "segmentation"), (need_bbox, "bbox")):
      missing = next((i for i, r in enumerate(src.records) if need and key not in r), None)
      if missing is not None:
        raise InputError(f"{src.source}: prediction {missing} (image_id {src.records[missing]['image_id']}): "
                         f"has no {key}")
    return src
  data, source = load_json(src, "prediction")
  pred_cats, image_map, covered = None, None, None
  if isinstance(data, dict):
    if not isinstance(data.get("annotations"), list):
      raise InputError(f"{source}: a prediction object must be a COCO dataset with an 'annotations' list "
                       "(or give a COCO results list)")
    records = data["annotations"]
    if isinstance(data.get("categories"), list):
      pred_cats = {}
      for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
          raise InputError(f"{source}: category {i}: needs an integer 'id' and a string 'name'")
        pred_cats[cat["id"]] = cat["name"]
    if isinstance(data.get("images"), list):
      image_map = _image_mapping(data["images"], gt, source)
      covered = list(dict.fromkeys(image_map.values()))
  elif isinstance(data, list):
    records = data
  else:
    raise InputError(f"{source}: predictions must be a COCO results list or dataset, "
                     f"got a JSON {type(data).__name__}")

  by_name = gt.category_by_name()
  gt_cat_ids = {c["id"] for c in gt.categories}
  out = []
  for i, rec in enumerate(records):
    if not isinstance(rec, dict):
      raise InputError(f"{source}: prediction {i}: must be an object, got {type(rec).__name__}")
    raw_image_id = rec.get("image_id")
    where = f"{source}: prediction {i} (image_id {raw_image_id!r})"
    if not _is_int(raw_image_id):
      raise InputError(f"{where}: needs an integer image_id")
    if image_map is not None:
      if raw_image_id not in image_map:
        raise InputError(f"{where}: image_id is not in the prediction file's images")
      image_id = image_map[raw_image_id]
    else:
      image_id = raw_image_id
      if image_id not in gt.images:
        raise InputError(f"{where}: image_id is not in the ground-truth images ({gt.source})")
    score = rec.get("score")
    if not _is_number(score) or not math.isfinite(score):
      raise InputError(f"{where}: needs a finite numeric 'score', got {score!r}")

    if class_agnostic:
      category_id = AGNOSTIC_CATEGORY["id"]
    else:
      name = rec.get("category_name")
      if name is None and pred_cats is not None:
        if not _is_int(rec.get("category_id")) or rec["category_id"] not in pred_cats:
          raise InputError(f"{where}: category_id {rec.get('category_id')!r} is not in the prediction "
                           "file's categories")
        name = pred_cats[rec["category_id"]]
      if name is not None:
        if not isinstance(name, str) or normalize_name(name) not in by_name:
          raise InputError(f"{where}: class name {name!r} is not a ground-truth category "
                           "(use --class-agnostic to ignore classes)")
        category_id = by_name[normalize_name(name)]
      else:
        category_id = rec.get("category_id")
        if not _is_int(category_id) or category_id not in gt_cat_ids:
          raise InputError(f"{where}: category_id {category_id!r} is not a ground-truth category id "
                           "(give category_name, or use --class-agnostic)")

    img = gt.images[image_id]
    norm = {"image_id": image_id, "category_id": category_id, "score": float(score)}
    seg = rec.get("segmentation")
    if seg is not None:
      _raise_if(where, segmentation_problem(seg, img["height"], img["width"]))
      norm["segmentation"] = to_compressed_rle(bounded_segmentation(seg, img["height"], img["width"]),
                                               img["height"], img["width"])
    elif need_segm:
      raise InputError(f"{where}: has no segmentation (mask AP needs one; use --iou-type bbox for boxes only)")
    if "bbox" in rec:
      _raise_if(where, _bbox_problem(rec["bbox"]))
      norm["bbox"] = clip_bbox(rec["bbox"], img["height"], img["width"])
    elif "segmentation" in norm:
      norm["bbox"] = rle_bbox(norm["segmentation"])
    elif need_bbox:
      raise InputError(f"{where}: needs a 'bbox' or a 'segmentation'")
    out.append(norm)
  return Predictions(records=out, image_ids=covered, source=source, class_agnostic=bool(class_agnostic))


def describe(src: Any) -> str:
  """Short human name of a path or in-memory input."""
  if isinstance(src, (GroundTruth, Predictions)):
    return src.source
  if isinstance(src, (dict, list)):
    return "<memory>"
  return os.fspath(src)
