"""Image decoding for the pipeline, with one clear reason per refused file.

`load_image(path, limits)` returns uint8 RGB `[H, W, 3]` in the image's display orientation, or raises
`InputError` whose message is the reason written to `errors.json`. Behaviour, input by input:

- EXIF orientation: applied (`ImageOps.exif_transpose`); H x W and every output are in the rotated frame.
- Grayscale (L, 1, LA), palette (P, PA), CMYK, YCbCr, LAB, HSV: converted to RGB by PIL.
- RGBA / LA / PA: the alpha channel is dropped (no compositing): what the colour channels hold is used.
- 16-bit and 32-bit integer / float grayscale (I;16*, I, F): scaled to 0..255 by the type's range
  (I;16: / 257; I: values clipped to 0..65535 then / 257; F: clipped to [0, 1] * 255 when the maximum is
  at most 1, else to 0..255).
- Truncated or corrupt files, files PIL cannot identify, directories, missing files: refused.
- Shorter side under `min_side` (32 px), longer side over `max_side` (8192 px), or long / short side over
  `max_aspect`: refused (no silent rescaling, since outputs are in the original pixel frame). PIL's
  decompression-bomb guard is applied on top (images over ~179 M pixels are refused before decoding).

`find_images(inputs)` expands folders (non-recursive, sorted, by extension) and keeps files as given.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from zipjax.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def find_images(inputs) -> list[str]:
  """Files given directly are kept (whatever their extension); folders contribute their image files.

  Raises:
    InputError: no input at all.
  """
  out = []
  for item in inputs:
    item = os.fspath(item)
    if os.path.isdir(item):
      names = sorted(n for n in os.listdir(item) if n.lower().endswith(IMAGE_EXTENSIONS))
      out.extend(os.path.join(item, n) for n in names if os.path.isfile(os.path.join(item, n)))
    else:
      out.append(item)
  if not out:
    raise InputError("no input images (folders given contain no image files)")
  return out


def _to_rgb(img: Image.Image) -> Image.Image:
  mode = img.mode
  if mode.startswith("I;16") or mode == "I":
    a = np.asarray(img).astype(np.float64)
    a = np.clip(a, 0, 65535) / 257.0
    return Image.fromarray(np.round(a).astype(np.uint8), "L").convert("RGB")
  if mode == "F":
    a = np.asarray(img).astype(np.float64)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    a = np.clip(a, 0, 1) * 255.0 if a.max(initial=0.0) <= 1.0 else np.clip(a, 0, 255)
    return Image.fromarray(np.round(a).astype(np.uint8), "L").convert("RGB")
  if mode == "RGB":
    return img
  if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    img = img.convert("RGBA") if mode != "RGBA" else img
    return img.convert("RGB")  # alpha dropped
  if mode == "P" and "transparency" in img.info:
    return img.convert("RGBA").convert("RGB")
  return img.convert("RGB")


def load_image(path, min_side: int = 32, max_side: int = 8192, max_aspect: float = 16.0) -> np.ndarray:
  """Decodes `path` to uint8 RGB [H, W, 3] (EXIF orientation applied); see the module docstring.

  Raises:
    InputError: the file cannot be used; the message is the reason (the path is added by the caller).
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    raise InputError("is a directory, not an image file")
  if not os.path.exists(path):
    raise InputError("file not found")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as img:
        w, h = img.size
        _check_size(w, h, min_side, max_side, max_aspect)
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
        arr = np.asarray(rgb, dtype=np.uint8)
  except UnidentifiedImageError:
    raise InputError("not an image (PIL cannot identify the file format)") from None
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise InputError(f"image too large to decode safely ({e})") from None
  except InputError:
    raise
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    raise InputError(f"corrupt or truncated image ({type(e).__name__}: {e})") from None
  if arr.ndim != 3 or arr.shape[-1] != 3:
    raise InputError(f"decoded to an unexpected array shape {arr.shape}")
  return np.ascontiguousarray(arr)


def _check_size(w: int, h: int, min_side: int, max_side: int, max_aspect: float) -> None:
  short, long = min(w, h), max(w, h)
  if short < min_side:
    raise InputError(f"image too small: {w}x{h} px, the shorter side must be at least {min_side} px")
  if long > max_side:
    raise InputError(f"image too large: {w}x{h} px, the longer side must be at most {max_side} px")
  if long / short > max_aspect:
    raise InputError(f"image too elongated: {w}x{h} px, aspect ratio {long / short:.1f} > {max_aspect:g}")


def parse_class_names(text: str | None = None, file_lines: list[str] | None = None) -> list[str]:
  """Class names from `--classes a,b` or the lines of `--classes-file` (one per line; '#' comments).

  Names are whitespace-normalised (stripped, inner runs collapsed); unicode is kept as is.

  Raises:
    InputError: an empty name (e.g. 'a,,b' or a blank entry), a duplicate (case-insensitive), or no names.
  """
  if file_lines is not None:
    raw = [ln.rstrip("\n") for ln in file_lines]
    raw = [ln for ln in raw if not ln.lstrip().startswith("#") and ln.strip()]
    where = "--classes-file"
  else:
    raw = (text or "").split(",")
    where = "--classes"
  names = [" ".join(r.split()) for r in raw]
  if not names or all(not n for n in names):
    raise InputError(f"{where}: no class names given")
  seen = {}
  for i, n in enumerate(names):
    if not n:
      raise InputError(f"{where}: class name {i + 1} is empty (got {raw!r})")
    key = n.casefold()
    if key in seen:
      raise InputError(f"{where}: duplicate class name {n!r} (names {seen[key] + 1} and {i + 1}, "
                       "compared case-insensitively)")
    seen[key] = i
  return names


__all__ = ["IMAGE_EXTENSIONS", "find_images", "load_image", "parse_class_names"]
