"""Host-side preprocessing that reproduces the original PyTorch/PIL pipelines exactly.

- CLIP Surgery input: PIL `Resize((512, 512), BICUBIC)` (square; aspect ignored; PIL antialiases when
  shrinking), then ToTensor + Normalize with CLIP's mean/std.
- Boundary-prior input: torchvision `Resize(2048, BICUBIC)` on a PIL image: shorter side 2048, longer side
  `int(2048 * long / short)` (truncated), same normalisation.
All outputs are NHWC-ready float32 arrays [H, W, 3].
"""
from __future__ import annotations

import numpy as np
from PIL import Image

CLIP_MEAN = np.array((0.48145466, 0.4578275, 0.40821073), np.float32)
CLIP_STD = np.array((0.26862954, 0.26130258, 0.27577711), np.float32)


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


def resize_shorter_side(image, size: int = 2048) -> Image.Image:
  """PIL bicubic resize of the shorter side to `size`, as torchvision `Resize(size, BICUBIC)`."""
  img = _as_pil(image)
  new = shorter_side_size(img.width, img.height, size)
  return img if new == img.size else img.resize(new, Image.BICUBIC)


def normalize(image, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
  """uint8 RGB -> float32 [H, W, 3] (x / 255 - mean) / std, in float32 as ToTensor + Normalize."""
  x = np.asarray(_as_pil(image), dtype=np.uint8).astype(np.float32) / np.float32(255)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def clip_surgery_input(image, size: int = 512) -> np.ndarray:
  """The CLIP Surgery (semantic clue) input: square bicubic resize + normalisation -> [size, size, 3]."""
  return normalize(resize_square(image, size))


def boundary_input(image, size: int = 2048) -> np.ndarray:
  """The boundary-prior (RN50x64) input: shorter side `size`, bicubic, normalised -> [H', W', 3]."""
  return normalize(resize_shorter_side(image, size))
