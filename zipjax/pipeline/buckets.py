"""Host side before the engine's device step: shape buckets and per-image preparation (numpy / PIL only).

`prepare(image, spec)` turns one uint8 RGB image into the fixed-shape arrays of its bucket; it imports no JAX,
so it runs in data-loader worker processes (grain). `spec` is a `PrepSpec`, a small frozen picklable
dataclass that the engine derives from its config and models (`Engine.spec`).

Shapes. Two of the three model inputs do not depend on the image size: the CLIP Surgery input (square
`semantic.input_size`, PIL bicubic) and the SAM input (longest side `sam img_size`, PIL bilinear, zero-padded to
a square; the padding is masked on device). The boundary input does: the released code resizes the shorter
side to `boundary.input_size` and keeps the aspect. The engine puts it into one of a fixed set of buckets:

- `boundary.size_multiple > 0` (the `zip` preset): aspect-ratio buckets. For each ratio r of
  `boundary.bucket_ratios` there is a landscape bucket (short side S = input_size, long side
  L(r) = max(m, round(int(S * r) / m) * m), m = size_multiple) and a portrait one (the transpose; the square
  bucket exists once). An image with long / short side a goes to the bucket of the ratio nearest to a in log
  scale and of its orientation, and its boundary input is resized to exactly that shape: no padding, so the
  discovery kernels see a full feature map; the aspect changes by at most half a ratio step (<= 6 % between
  1 and 1.78 with the default ratios; images beyond the last ratio are squeezed to it). Boxes and masks are
  mapped back with separate x / y scales, and SAM sees the true aspect. An image whose shape the old
  `size_multiple` rounding maps to a bucket shape (e.g. 4:3, 3:2, 16:9, square) gets the same boundary input
  as before. The number of buckets is fixed by the config (27 with the default 14 ratios), so a dataset
  compiles at most that many step programs per batch size, whatever its image sizes.
- `boundary.size_multiple == 0` (the `reference` preset): the exact released size; every distinct boundary
  input size is its own bucket (ids encode the shape), i.e. one program per size: the reference preset's cost.

What the activation needs from the full-resolution similarity map is exact from small per-image vectors:
bilinear upsampling is linear, so the map's mean is `u^T G v` with `u = 1^T My / H`, `v = 1^T Mx / W` (`My`
[H, gh], `Mx` [W, gw] the bilinear matrices, G the token-grid map), and its legacy-nearest resize to the
feature grid [h, w] is `My[iy] G Mx[ix]^T` (the rows / columns of the full map that nearest picks). No
full-size map exists anywhere; `prepare` computes these vectors in float64 and sends them as float32.

Pixels travel as uint8 (a quarter of float32's transfer) and are normalised on device through 256-entry
tables computed here with the exact float32 arithmetic of `zipjax.preprocess` (`pixel_tables`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from PIL import Image

from zipjax import configs, preprocess
from zipjax.errors import InputError
from zipjax.ops.resize import bilinear_rows, bilinear_taps, nearest_indices

_EXACT = 1 << 16  # exact-mode bucket ids: height * _EXACT + width


def trunk_grid(height: int, width: int, stage: int) -> tuple[int, int]:
  """Feature-map size of ModifiedResNet `stage` (0 = stem .. 4) for a [height, width] input.

  conv1 (3x3, stride 2, pad 1) -> ceil(x / 2); the stem's 2x2 average pool and each later stage's pool halve
  with floor (VALID pooling); stage 1 keeps the size.
  """
  def f(x):
    x = (x + 1) // 2  # conv1
    x //= 2  # stem pool
    for _ in range(max(stage - 1, 0)):
      x //= 2
    return x
  return f(height), f(width)


def bucket_long_side(short: int, ratio: float, multiple: int) -> int:
  """Long side of the bucket of `ratio`: int(short * ratio) rounded to `multiple` (as `preprocess`)."""
  return max(multiple, int(round(int(short * ratio) / multiple)) * multiple)


def bucket_table(short: int, multiple: int, ratios: Sequence[float]) -> tuple[tuple[int, int], ...]:
  """Bucket shapes (H, W): the landscape ones by ratio, then the portrait ones (square shapes once)."""
  shapes = []
  for portrait in (False, True):
    for r in ratios:
      long_side = bucket_long_side(short, r, multiple)
      shape = (long_side, short) if portrait else (short, long_side)
      if shape not in shapes:
        shapes.append(shape)
  return tuple(shapes)


@dataclasses.dataclass(frozen=True)
class PrepSpec:
  """What host preparation needs (picklable; no models, no JAX).

  Attributes:
    semantic_size: CLIP Surgery input side (square).
    token_grid: (gh, gw) token grid of the CLIP Surgery output.
    boundary_short: boundary input shorter side.
    size_multiple: bucket rounding (0 = exact sizes, one bucket per size).
    bucket_ratios: long / short ratios of the buckets (bucket mode).
    bucket_shapes: (H, W) of each bucket (bucket mode; () in exact mode).
    stage: ModifiedResNet stage of the boundary features (sets the feature grid).
    sam_size: SAM input side (0 = no SAM).
    swap_box_scale: the released code's swapped x / y box scales.
    sam_family: 'sam' (longest side resized to sam_size, zero-padded) or 'sam2' (resized to the square).
  """
  semantic_size: int
  token_grid: tuple[int, int]
  boundary_short: int
  size_multiple: int
  bucket_ratios: tuple[float, ...]
  bucket_shapes: tuple[tuple[int, int], ...]
  stage: int
  sam_size: int
  swap_box_scale: bool
  sam_family: str = "sam"

  @classmethod
  def from_config(cls, config, token_grid: tuple[int, int], sam_size: int) -> "PrepSpec":
    b = configs.Boundary.from_config(config)
    ratios = tuple(float(r) for r in b.bucket_ratios) if b.size_multiple > 0 else ()
    shapes = bucket_table(b.input_size, b.size_multiple, ratios) if b.size_multiple > 0 else ()
    return cls(semantic_size=configs.Semantic.from_config(config).input_size, token_grid=tuple(token_grid),
               boundary_short=b.input_size, size_multiple=b.size_multiple, bucket_ratios=ratios,
               bucket_shapes=shapes, stage=b.stage, sam_size=int(sam_size),
               swap_box_scale=configs.Discover.from_config(config).swap_box_scale,
               sam_family=configs.Sam.from_config(config).family)

  @property
  def exact(self) -> bool:
    return self.size_multiple <= 0

  @property
  def num_buckets(self) -> int | None:
    """Number of buckets (None in exact mode: one per distinct size)."""
    return None if self.exact else len(self.bucket_shapes)

  def bucket_of(self, height: int, width: int) -> int:
    """Bucket id of an image of this size."""
    if self.exact:
      w, h = preprocess.shorter_side_size(width, height, self.boundary_short)
      return h * _EXACT + w
    a = max(height, width) / min(height, width)
    i = int(np.argmin([abs(math.log(a) - math.log(r)) for r in self.bucket_ratios]))
    long_side = bucket_long_side(self.boundary_short, self.bucket_ratios[i], self.size_multiple)
    shape = (long_side, self.boundary_short) if height > width else (self.boundary_short, long_side)
    return self.bucket_shapes.index(shape)

  def bucket_shape(self, bucket: int) -> tuple[int, int]:
    """(H, W) of the boundary input of a bucket."""
    if self.exact:
      return bucket // _EXACT, bucket % _EXACT
    return self.bucket_shapes[bucket]

  def grid(self, bucket: int) -> tuple[int, int]:
    """(h, w) of the boundary feature map of a bucket."""
    return trunk_grid(*self.bucket_shape(bucket), self.stage)


@dataclasses.dataclass
class Prepared:
  """One image ready for the device step.

  Attributes:
    bucket: bucket id (`PrepSpec.bucket_of`).
    size: original (H, W).
    arrays: name -> numpy array of the bucket's fixed shape (see `prepare`).
  """
  bucket: int
  size: tuple[int, int]
  arrays: dict


def pixel_tables() -> dict[str, np.ndarray]:
  """float32 [3, 256] lookup tables uint8 -> normalised value, per channel, with `zipjax.preprocess`'s exact
  float32 arithmetic: 'clip' = (v / 255 - mean) / std, 'sam' = (v - mean) / std, 'sam2' = (v / 255 - mean) /
  std with SAM 2's (ImageNet) mean / std."""
  v = np.arange(256, dtype=np.float32)
  clip = (v[None, :] / np.float32(255) - preprocess.CLIP_MEAN[:, None]) / preprocess.CLIP_STD[:, None]
  sam_mean = np.asarray(preprocess.SAM_PIXEL_MEAN, np.float32)[:, None]
  sam_std = np.asarray(preprocess.SAM_PIXEL_STD, np.float32)[:, None]
  sam2 = (v[None, :] / np.float32(255) - preprocess.SAM2_MEAN[:, None]) / preprocess.SAM2_STD[:, None]
  return {"clip": clip.astype(np.float32), "sam": ((v[None, :] - sam_mean) / sam_std).astype(np.float32),
          "sam2": sam2.astype(np.float32)}


def _check_image(image) -> np.ndarray:
  arr = np.asarray(image)
  if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
    raise InputError(f"image must be RGB uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
  if min(arr.shape[:2]) < 1:
    raise InputError(f"image is empty: shape {arr.shape}")
  return arr


def _column_means(in_size: int, out_size: int) -> np.ndarray:
  """float32 [in] = column sums of the [out, in] bilinear matrix / out (in float64)."""
  i0, i1, w0, w1 = bilinear_taps(in_size, out_size)
  s = np.bincount(i0, w0.astype(np.float64), in_size) + np.bincount(i1, w1.astype(np.float64), in_size)
  return (s / out_size).astype(np.float32)


def prepare(image, spec: PrepSpec) -> Prepared:
  """Fixed-shape arrays of one image for the engine (numpy / PIL only).

  Args:
    image: uint8 RGB [H, W, 3].
    spec: the engine's `PrepSpec`.

  Returns:
    `Prepared` with arrays: semantic uint8 [S, S, 3]; boundary uint8 [Hb, Wb, 3]; act_mean_rows float32 [gh],
    act_mean_cols float32 [gw] (`u`, `v` of the module docstring); act_rows float32 [h, gh], act_cols float32
    [w, gw] (bilinear rows / columns picked by the legacy nearest resize); box_scale float32 [2] (x, y scale
    from feature cells to pixels); image_size float32 [2] (W, H); pixel_rows int32 [h], pixel_cols int32
    [w] (pixels each feature row / column covers in the nearest upsampling); valid bool []; and with SAM:
    sam uint8 [T, T, 3] (zero-padded; SAM 2: the image resized to T x T), sam_size int32 [2] (h, w before
    padding; T, T for SAM 2), sam_box_scale float32 [2].

  Raises:
    InputError: not a uint8 RGB image.
  """
  arr = _check_image(image)
  hh, ww = arr.shape[:2]
  bucket = spec.bucket_of(hh, ww)
  hb, wb = spec.bucket_shape(bucket)
  h, w = spec.grid(bucket)
  gh, gw = spec.token_grid
  pil = Image.fromarray(arr)  # one PIL copy, shared by the three resizes
  out = {"semantic": np.asarray(preprocess.resize_square(pil, spec.semantic_size), np.uint8)}
  bnd = pil if (ww, hh) == (wb, hb) else pil.resize((wb, hb), Image.BICUBIC)
  out["boundary"] = np.asarray(bnd, np.uint8)
  out["act_mean_rows"] = _column_means(gh, hh)
  out["act_mean_cols"] = _column_means(gw, ww)
  out["act_rows"] = bilinear_rows(gh, hh, nearest_indices(hh, h))  # [h, gh]
  out["act_cols"] = bilinear_rows(gw, ww, nearest_indices(ww, w))  # [w, gw]
  sx, sy = (hh / h, ww / w) if spec.swap_box_scale else (ww / w, hh / h)
  out["box_scale"] = np.asarray([sx, sy], np.float32)
  out["image_size"] = np.asarray([ww, hh], np.float32)
  out["pixel_rows"] = np.bincount(nearest_indices(h, hh), minlength=h).astype(np.int32)
  out["pixel_cols"] = np.bincount(nearest_indices(w, ww), minlength=w).astype(np.int32)
  out["valid"] = np.asarray(True)
  if spec.sam_size and spec.sam_family == "sam2":  # the whole image resized to the square (SAM2Transforms)
    t = spec.sam_size
    ih, iw = t, t
    out["sam"] = preprocess.sam2_resize(pil, t)
  elif spec.sam_size:
    t = spec.sam_size
    ih, iw = preprocess.get_preprocess_shape(hh, ww, t)
    resized = np.asarray(pil.resize((iw, ih), Image.BILINEAR), np.uint8)  # as preprocess.resize_longest_side
    sam = np.zeros((t, t, 3), np.uint8)
    sam[:ih, :iw] = resized
    out["sam"] = sam
  if spec.sam_size:
    out["sam_size"] = np.asarray([ih, iw], np.int32)
    out["sam_box_scale"] = np.asarray([iw / ww, ih / hh], np.float32)
  return Prepared(bucket=bucket, size=(hh, ww), arrays=out)


def dummy_arrays(spec: PrepSpec, bucket: int) -> dict:
  """Arrays of a padding image for `bucket` (all zeros, valid False)."""
  hb, wb = spec.bucket_shape(bucket)
  h, w = spec.grid(bucket)
  gh, gw = spec.token_grid
  s = spec.semantic_size
  out = {"semantic": np.zeros((s, s, 3), np.uint8), "boundary": np.zeros((hb, wb, 3), np.uint8),
         "act_mean_rows": np.zeros((gh,), np.float32), "act_mean_cols": np.zeros((gw,), np.float32),
         "act_rows": np.zeros((h, gh), np.float32), "act_cols": np.zeros((w, gw), np.float32),
         "box_scale": np.ones((2,), np.float32), "image_size": np.ones((2,), np.float32),
         "pixel_rows": np.ones((h,), np.int32), "pixel_cols": np.ones((w,), np.int32),
         "valid": np.asarray(False)}
  if spec.sam_size:
    t = spec.sam_size
    out.update(sam=np.zeros((t, t, 3), np.uint8), sam_size=np.asarray([t, t], np.int32),
               sam_box_scale=np.ones((2,), np.float32))
  return out


__all__ = ["PrepSpec", "Prepared", "prepare", "dummy_arrays", "pixel_tables", "trunk_grid", "bucket_table",
           "bucket_long_side"]
