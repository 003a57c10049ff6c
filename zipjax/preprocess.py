"""Host-side preprocessing that reproduces the original PyTorch/PIL pipelines exactly.

- CLIP Surgery input: PIL `Resize((512, 512), BICUBIC)` (square; aspect ignored; PIL antialiases when
  shrinking), then ToTensor + Normalize with CLIP's mean/std.
- Boundary-prior input: torchvision `Resize(2048, BICUBIC)` on a PIL image: shorter side 2048, longer side
  `int(2048 * long / short)` (truncated), same normalisation.
- SAM input (segment_anything's ResizeLongestSide + Sam.preprocess): longest side 1024 (PIL bilinear on uint8),
  normalised with SAM's mean/std on 0-255 values, zero-padded bottom/right to 1024 x 1024.
All outputs are NHWC-ready float32 arrays [H, W, 3].
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from zipjax.errors import InputError

CLIP_MEAN = np.array((0.48145466, 0.4578275, 0.40821073), np.float32)
CLIP_STD = np.array((0.26862954, 0.26130258, 0.27577711), np.float32)
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)  # on 0-255 values
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
SAM2_MEAN = np.array((0.485, 0.456, 0.406), np.float32)  # SAM2Transforms: ImageNet statistics on 0-1 values
SAM2_STD = np.array((0.229, 0.224, 0.225), np.float32)


def _as_pil(image) -> Image.Image:
  if isinstance(image, Image.Image):
    return image if image.mode == "RGB" else image.convert("RGB")
  arr = np.asarray(image)
  if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
    raise ValueError(f"expected a PIL image or a uint8 [H, W, 3] array, got {arr.dtype} {arr.shape}")
  return Image.fromarray(arr, "RGB")


def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
  """torchvision `Resize(size)` output (width, height): shorter side -> size, longer side truncated."""
  short, long = (width, height) if width <= height else (height, width)
  new_short, new_long = size, int(size * long / short)
  return (new_short, new_long) if width <= height else (new_long, new_short)


def resize_square(image, size: int = 512) -> Image.Image:
  """PIL bicubic resize to size x size (aspect ignored), as `Resize((size, size), BICUBIC)`."""
  return _as_pil(image).resize((size, size), Image.BICUBIC)


def resize_shorter_side(image, size: int = 2048, multiple: int = 0) -> Image.Image:
  """PIL bicubic resize of the shorter side to `size`, as torchvision `Resize(size, BICUBIC)`.

  With `multiple` > 0 the longer side is then rounded to the nearest multiple of it (at least one multiple),
  which bounds the number of distinct input shapes over a dataset (zipjax's option, not the original's).
  """
  img = _as_pil(image)
  new = shorter_side_size(img.width, img.height, size)
  if multiple > 0:
    long_side = max(multiple, int(round(max(new) / multiple)) * multiple)
    new = (long_side, new[1]) if new[0] >= new[1] else (new[0], long_side)
  return img if new == img.size else img.resize(new, Image.BICUBIC)


def normalize(image, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
  """uint8 RGB -> float32 [H, W, 3] (x / 255 - mean) / std, in float32 as ToTensor + Normalize."""
  x = np.asarray(_as_pil(image), dtype=np.uint8).astype(np.float32) / np.float32(255)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def clip_surgery_input(image, size: int = 512) -> np.ndarray:
  """The CLIP Surgery (semantic clue) input: square bicubic resize + normalisation -> [size, size, 3]."""
  return normalize(resize_square(image, size))


def boundary_input(image, size: int = 2048, multiple: int = 0) -> np.ndarray:
  """The boundary-prior (RN50x64) input: shorter side `size`, bicubic, normalised -> [H', W', 3]."""
  return normalize(resize_shorter_side(image, size, multiple))


def get_preprocess_shape(old_h: int, old_w: int, long_side: int = 1024) -> tuple[int, int]:
  """(h, w) after resizing the longest side to `long_side` (segment_anything's rounding)."""
  scale = long_side * 1.0 / max(old_h, old_w)
  return int(old_h * scale + 0.5), int(old_w * scale + 0.5)


def resize_longest_side(image: np.ndarray, long_side: int = 1024) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [h, w, 3], PIL bilinear (what segment_anything's torchvision call does)."""
  h, w = get_preprocess_shape(image.shape[0], image.shape[1], long_side)
  return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def sam_input(image, img_size: int = 1024):
  """RGB uint8 [H, W, 3] -> (pixels float32 [S, S, 3], input_size (h, w), original_size (H, W)).

  Resize the longest side to S (PIL bilinear on uint8), normalise with SAM's mean/std on 0-255 values,
  zero-pad bottom/right to S x S (padding after normalisation, as `Sam.preprocess`).
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise InputError(f"image must be RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
  if min(image.shape[:2]) == 0:
    raise InputError(f"image is empty: shape {image.shape}")
  resized = resize_longest_side(image, img_size)
  h, w = resized.shape[:2]
  mean = np.asarray(SAM_PIXEL_MEAN, np.float32)
  std = np.asarray(SAM_PIXEL_STD, np.float32)
  x = (resized.astype(np.float32) - mean) / std  # [h, w, 3]
  out = np.zeros((img_size, img_size, 3), np.float32)
  out[:h, :w] = x
  return out, (h, w), tuple(image.shape[:2])


def sam2_resize(image, img_size: int = 1024) -> np.ndarray:
  """RGB uint8 [H, W, 3] (or its PIL image) -> uint8 [S, S, 3]: SAM 2's input is the whole image resized to a square (aspect not
  kept, no padding). PIL bilinear on uint8 (antialiased when shrinking): `SAM2Transforms` uses torchvision's
  `Resize((S, S))` (bilinear, antialias) on 0-1 floats, the same filter up to the uint8 rounding."""
  if isinstance(image, Image.Image):  # (the engine's host preparation shares one PIL copy of the image)
    pil = image
  else:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
      raise InputError(f"image must be RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if min(image.shape[:2]) == 0:
      raise InputError(f"image is empty: shape {image.shape}")
    if image.shape[:2] == (img_size, img_size):
      return image
    pil = Image.fromarray(image)
  if pil.size == (img_size, img_size):
    return np.asarray(pil, np.uint8)
  return np.asarray(pil.resize((img_size, img_size), Image.BILINEAR), np.uint8)


def sam2_input(image, img_size: int = 1024):
  """RGB uint8 [H, W, 3] -> (pixels float32 [S, S, 3], input_size (S, S), original_size (H, W)).

  `sam2_resize`, then `(v / 255 - mean) / std` with ImageNet's mean / std (`SAM2Transforms`)."""
  resized = sam2_resize(image, img_size)
  x = (resized.astype(np.float32) / np.float32(255) - SAM2_MEAN) / SAM2_STD  # [S, S, 3]
  return x.astype(np.float32), (img_size, img_size), tuple(np.asarray(image).shape[:2])
