"""Masks and geometry, bounded by the image: the one module that validates, clips and rasterises COCO
segmentations (RLE of either kind, polygons) and boxes. Evaluation (`zipjax/io/coco.py`), the gallery
(`zipjax/gallery/render.py`), training and self-training (`zipjax/data/coco_train.py`,
`zipjax/data/self_labels.py`) all go through it, so memory and time follow the image size, never the numbers in
a file (pycocotools rasterises a polygon along its whole outline, in memory proportional to its length in
pixels, and crashes on coordinates past 2^31 / 5):

- `segmentation_problem(seg, h, w)`: why a segmentation is not valid for an h x w image (RLE size, runs that do
  not cover the image, malformed strings, polygons with too few, non-finite or absurd coordinates), or None.
- Polygons lying within one pixel of the image (`[-1, W + 1] x [-1, H + 1]`, everything COCO-style tools
  write) are used unchanged. Others are clipped to that rectangle (Sutherland-Hodgman; the region inside the
  image is the same, so the mask is the same up to pycocotools' 1/5-pixel rounding of the new vertices on the
  clip border, outside the image); a polygon with nothing left is dropped, and a segmentation with no polygon
  left is an empty mask. Coordinates beyond +-1e12 are refused, as are non-finite ones.
- Boxes `[x, y, w, h]` are clipped to the image `[0, W] x [0, H]` (`clip_bbox`).
- `to_compressed_rle`, `decode_mask` (dense uint8) and `sample_mask` (a grid of the mask read from its runs, no
  full-resolution array) rasterise only bounded geometry.
- `image_size_problem(h, w)`: an image record claiming more than `MAX_SIDE` px per side or `MAX_PIXELS` pixels is
  refused by the readers that decode masks at the claimed size (the gallery).
"""
from __future__ import annotations

import math

import numpy as np
from pycocotools import mask as mask_utils

_MAX_RLE_DIGITS = 7  # 35 bits: COCO RLE counts are 32-bit unsigned
MAX_COORDINATE = 1e12  # polygon coordinates beyond this (in pixels) are refused
_POLY_MARGIN = 1.0     # polygons within this many pixels of the image are not clipped
MAX_SIDE = 32768       # an image record's longer side at most (px)
MAX_PIXELS = 1 << 28   # ... and its pixel count (268M: e.g. 16384 x 16384)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def rle_counts_from_string(counts: str) -> np.ndarray:
  """Decodes a compressed COCO RLE `counts` string into its run lengths (pycocotools' rleFrString).

  Raises:
    ValueError: the string is not a well-formed compressed RLE.
  """
  if not counts:
    raise ValueError("empty counts string")
  try:
    raw = counts.encode("ascii")
  except UnicodeEncodeError as e:
    raise ValueError("counts string has non-ASCII characters") from e
  b = np.frombuffer(raw, np.uint8).astype(np.int64) - 48  # [L]
  if (b < 0).any() or (b > 63).any():
    raise ValueError("counts string has characters outside the RLE alphabet ('0'..'o')")
  more = (b & 0x20) != 0
  if more[-1]:
    raise ValueError("counts string is truncated (its last character continues a number)")
  ends = np.flatnonzero(~more)  # [M] last character of each number
  starts = np.concatenate([[0], ends[:-1] + 1])  # [M]
  lens = ends - starts + 1
  if lens.max() > _MAX_RLE_DIGITS:
    raise ValueError("counts string encodes a number longer than 32 bits")
  digit = np.arange(b.size) - np.repeat(starts, lens)  # [L] position of each character in its number
  vals = np.add.reduceat((b & 0x1F) << (5 * digit), starts)  # [M]
  negative = (b[ends] & 0x10) != 0
  vals = np.where(negative, vals - (np.int64(1) << (5 * lens)), vals)
  runs = vals.copy()
  runs[1::2] = np.cumsum(vals[1::2])  # counts[m] += counts[m - 2] for m > 2
  runs[2::2] = np.cumsum(vals[2::2])
  return runs


def _check_size(size, height: int, width: int) -> str | None:
  if (not isinstance(size, (list, tuple)) or len(size) != 2
      or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)):
    return f"RLE size must be [height, width] integers, got {size!r}"
  if list(size) != [height, width]:
    return f"mask size {list(size)} does not match the image size [{height}, {width}] (height, width)"
  return None


def segmentation_problem(seg, height: int, width: int) -> str | None:
  """Returns why `seg` is not a valid COCO segmentation for an image of `height` x `width`, or None."""
  if isinstance(seg, dict):
    if "size" not in seg or "counts" not in seg:
      return "RLE segmentation needs 'size' and 'counts'"
    problem = _check_size(seg["size"], height, width)
    if problem:
      return problem
    counts = seg["counts"]
    if isinstance(counts, bytes):
      try:
        counts = counts.decode("ascii")
      except UnicodeDecodeError:
        return "malformed RLE: counts bytes are not ASCII"
    if isinstance(counts, str):
      try:
        runs = rle_counts_from_string(counts)
      except ValueError as e:
        return f"malformed RLE: {e}"
    elif isinstance(counts, list):
      if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        return "malformed RLE: uncompressed counts must be integers"
      runs = np.asarray(counts, np.int64)
    else:
      return f"malformed RLE: counts must be a string or a list of integers, got {type(counts).__name__}"
    if (runs < 0).any():
      return "malformed RLE: negative run length"
    total = int(runs.sum())
    if total != height * width:
      return f"malformed RLE: runs cover {total} pixels, the {height}x{width} image has {height * width}"
    return None
  if isinstance(seg, list):
    if not seg:
      return "polygon segmentation is an empty list"
    for j, poly in enumerate(seg):
      if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
        return f"polygon {j} must be a flat list of numbers"
      if len(poly) < 6 or len(poly) % 2:
        return f"polygon {j} has {len(poly)} coordinates (needs an even number, at least 6)"
      if not all(math.isfinite(v) for v in poly):
        return f"polygon {j} has a non-finite coordinate"
      if max(abs(min(poly)), abs(max(poly))) > MAX_COORDINATE:
        return (f"polygon {j} has a coordinate beyond +-{MAX_COORDINATE:g} px "
                f"({max(poly, key=abs):g}) on a {width}x{height} image")
    return None
  return f"segmentation must be an RLE dict or a polygon list, got {type(seg).__name__}"


def to_compressed_rle(seg, height: int, width: int) -> dict:
  """A validated segmentation (RLE of either kind, polygons) as a compressed RLE with str counts. Polygons are
  bounded by the image first (`bounded_segmentation`), so the work follows the image, not the coordinates."""

  seg = bounded_segmentation(seg, height, width)
  if isinstance(seg, dict) and isinstance(seg["counts"], (str, bytes)):
    counts = seg["counts"]
    return {"size": [height, width], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
  if isinstance(seg, dict):
    rle = mask_utils.frPyObjects(seg, height, width)
  else:
    rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
  return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def decode_mask(seg, height: int, width: int) -> np.ndarray:
  """A validated segmentation -> uint8 [height, width] in {0, 1} (polygons bounded by the image first)."""
  rle = to_compressed_rle(seg, height, width)
  return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})


def sample_mask(rle: dict, tw: int, th: int) -> np.ndarray:
  """bool [th, tw]: a compressed RLE read at the centres of a tw x th grid over its image (nearest neighbour),
  from its runs: memory O(runs + tw * th), whatever the image size (no full-resolution mask)."""
  h, w = (int(v) for v in rle["size"])
  runs = rle_counts_from_string(rle["counts"])  # [M] alternating 0 / 1 runs, column-major
  ends = np.cumsum(runs)  # [M] end (exclusive) of each run
  yi = np.minimum(((np.arange(th) + 0.5) * h / th).astype(np.int64), h - 1)  # [th]
  xi = np.minimum(((np.arange(tw) + 0.5) * w / tw).astype(np.int64), w - 1)  # [tw]
  idx = xi[None, :] * h + yi[:, None]  # [th, tw] column-major pixel index
  return (np.searchsorted(ends, idx, side="right") % 2) == 1  # odd runs are foreground


def image_size_problem(height: int, width: int, max_side: int = MAX_SIDE,
                       max_pixels: int = MAX_PIXELS) -> str | None:
  """Why an image record's claimed size is refused (memory follows the claimed size), or None."""
  if max(height, width) > max_side or height * width > max_pixels:
    return (f"claims {width}x{height} px, more than the limit of {max_side} px per side and {max_pixels} pixels "
            "(a record's size is bounded so that memory follows real images, not numbers in a file)")
  return None


def rle_area(rle: dict) -> float:
  return float(mask_utils.area(rle))


def rle_bbox(rle: dict) -> list:
  return [float(v) for v in mask_utils.toBbox(rle)]


def _clip_half_plane(xy: np.ndarray, axis: int, bound: float, keep_below: bool) -> np.ndarray:
  """One Sutherland-Hodgman pass: the polygon `xy` [n, 2] clipped to xy[:, axis] <= bound (or >= bound)."""
  if len(xy) == 0:
    return xy
  v = xy[:, axis]
  inside = v <= bound if keep_below else v >= bound  # [n]
  nxt = np.roll(xy, -1, axis=0)  # [n, 2] the end of each edge
  nxt_inside = np.roll(inside, -1)  # [n]
  crosses = inside != nxt_inside  # [n] edges that cross the clip line
  with np.errstate(divide="ignore", invalid="ignore"):
    t = (bound - v) / (nxt[:, axis] - v)  # [n] where the edge meets the line (only used where it crosses)
  t = np.clip(np.nan_to_num(t), 0.0, 1.0)
  cut = xy + t[:, None] * (nxt - xy)  # [n, 2]
  cut[:, axis] = bound
  # each edge emits: its crossing point (when it crosses), then its end vertex (when inside)
  pts = np.stack([cut, nxt], axis=1).reshape(-1, 2)  # [2n, 2]
  keep = np.stack([crosses, nxt_inside], axis=1).reshape(-1)  # [2n]
  return pts[keep]


def clip_polygons(seg: list, height: int, width: int) -> list:
  """A validated polygon segmentation bounded by the image (see the module docstring); `seg` itself when every
  coordinate is within `_POLY_MARGIN` of the image. Polygons with fewer than 3 vertices left are dropped."""
  lo = -_POLY_MARGIN
  hi_x, hi_y = width + _POLY_MARGIN, height + _POLY_MARGIN
  if all(min(p[0::2]) >= lo and max(p[0::2]) <= hi_x and min(p[1::2]) >= lo and max(p[1::2]) <= hi_y
         for p in seg):
    return seg
  out = []
  for poly in seg:
    xy = np.asarray(poly, np.float64).reshape(-1, 2)  # [n, 2]
    for axis, bound, below in ((0, lo, False), (0, hi_x, True), (1, lo, False), (1, hi_y, True)):
      xy = _clip_half_plane(xy, axis, bound, below)
    if len(xy) >= 3:
      out.append([float(v) for v in xy.reshape(-1)])
  return out


def clip_bbox(bbox: list, height: int, width: int) -> list:
  """A validated `[x, y, w, h]` box clipped to the image `[0, width] x [0, height]`."""
  x, y, w, h = (float(v) for v in bbox)
  x0, x1 = min(max(x, 0.0), width), min(max(x + w, 0.0), width)
  y0, y1 = min(max(y, 0.0), height), min(max(y + h, 0.0), height)
  return [x0, y0, x1 - x0, y1 - y0]


def bounded_segmentation(seg, height: int, width: int):
  """A validated segmentation ready for rasterisation: polygons clipped (an empty list of polygons becomes an
  empty compressed RLE), RLEs unchanged."""
  if not isinstance(seg, list):
    return seg
  seg = clip_polygons(seg, height, width)
  if seg:
    return seg
  empty = mask_utils.frPyObjects({"size": [height, width], "counts": [height * width]}, height, width)  # one run
  return {"size": [height, width], "counts": empty["counts"].decode("ascii")}


__all__ = ["MAX_COORDINATE", "MAX_SIDE", "MAX_PIXELS", "rle_counts_from_string", "segmentation_problem",
           "clip_polygons", "clip_bbox", "bounded_segmentation", "to_compressed_rle", "decode_mask", "sample_mask",
           "rle_area", "rle_bbox", "image_size_problem"]
