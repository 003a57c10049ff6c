"""Image decoding for the pipeline, with one clear reason per refused file.

`load_image(path, limits)` returns uint8 RGB `[H, W, 3]` in the image's display orientation, or raises
`InputError` whose message is the reason written to `errors.json`. Behaviour, input by input:

- EXIF orientation: applied (`ImageOps.exif_transpose`); H x W and every output are in the rotated frame.
- Grayscale (L, 1, LA), palette (P, PA), CMYK, YCbCr, LAB, HSV: converted to RGB by PIL.
- RGBA / LA / PA: the alpha channel is dropped (no compositing): what the colour channels hold is used.
- 16-bit and 32-bit integer / float grayscale (I;16*, I, F): scaled to 0..255 by the type's range
  (I;16: / 257; I: values clipped to 0..65535 then / 257; F: clipped to [0, 1] * 255 when the maximum is
  at most 1, else to 0..255).
- Truncated or corrupt files, files PIL cannot identify, empty files, unreadable files (permission denied),
  directories, missing files, broken symbolic links: refused, each with its own reason. Anything that is not
  a regular file (FIFO, socket, device) is refused without being opened (a FIFO would block forever).
- Shorter side under `min_side` (32 px), longer side over `max_side` (8192 px), or long / short side over
  `max_aspect`: refused (no silent rescaling, since outputs are in the original pixel frame). PIL's
  decompression-bomb guard is applied on top (images over ~179 M pixels are refused before decoding).

`probe_image(path)` reads only the header: the display size, or the reason the file cannot be an image.

`scan_inputs(inputs)` expands folders (non-recursive, sorted, by extension), keeps files as given, and returns
the entries it refuses (missing, broken links, directories named like images, FIFOs, duplicates of a file
already listed) with their reasons, so nothing is dropped silently. `find_images(inputs)` is the older form
that returns paths only.
"""
from __future__ import annotations

import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from zipjax.errors import InputError
from zipjax.io.paths import display, is_utf8

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_problem(path) -> str | None:
  """Why `path` cannot be an image file, found without opening it (a FIFO would block the reader forever);
  None for an existing regular file (symbolic links followed)."""
  path = os.fspath(path)
  try:
    st = os.stat(path)
  except FileNotFoundError:
    if os.path.islink(path):
      return "broken symbolic link (its target does not exist)"
    return "file not found"
  except PermissionError:
    return "permission denied (cannot look the file up)"
  except OSError as e:
    return f"cannot look the file up ({e.strerror or type(e).__name__})"
  if stat.S_ISDIR(st.st_mode):
    return "is a directory, not an image file"
  if not stat.S_ISREG(st.st_mode):
    kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
    return f"not a regular file ({kind}); refused without reading it"
  return None


def _identity(path: str):
  """Key under which two paths name the same file: (device, inode) when it exists, else the absolute path."""
  try:
    st = os.stat(path)
    return ("inode", st.st_dev, st.st_ino)
  except OSError:
    return ("path", os.path.abspath(path))


def _candidates(inputs):
  """(path, None | reason, duplicate_of | None) in input order: folders contribute their entries with an image
  extension (sorted), files given directly are kept whatever their extension."""
  out, first = [], {}
  for item in inputs:
    item = os.fspath(item)
    if os.path.isdir(item):
      names = sorted(n for n in os.listdir(item) if n.lower().endswith(IMAGE_EXTENSIONS))
      entries = [os.path.join(item, n) for n in names]
    else:
      entries = [item]
    for path in entries:
      key = _identity(path)
      if key in first:
        out.append((path, None, first[key]))
        continue
      first[key] = path
      out.append((path, file_problem(path), None))
  return out


def scan_inputs(inputs) -> tuple[list[str], list[dict]]:
  """Expands the inputs of `zipjax segment` into the image files to decode and the entries refused up front.

  Folders contribute their entries whose name has an image extension (non-recursive, sorted); files given
  directly are kept whatever their extension. Refused (not dropped silently): missing files, broken symbolic
  links, directories named like images (`x.jpg/`), FIFOs, sockets and devices (never opened), and a file
  met a second time (the same device and inode, e.g. `a.jpg` and `./a.jpg`, or a file given directly and
  through its folder): it is decoded once.

  Returns:
    (paths, refused): regular files in input order, and `[{"path", "reason"}]`.

  Raises:
    InputError: no input at all (folders given contain no image files).
  """
  paths, refused = [], []
  for path, problem, duplicate_of in _candidates(inputs):
    if duplicate_of is not None:
      refused.append({"path": path, "reason": f"duplicate: the same file as input '{display(duplicate_of)}' "
                                              "(processed once)"})
    elif problem is not None:
      refused.append({"path": path, "reason": problem})
    else:
      paths.append(path)
  if not paths and not refused:
    raise InputError("no input images (folders given contain no image files)")
  return paths, refused


def find_images(inputs) -> list[str]:
  """The paths to try, in input order (kept for callers that report bad files through `load_image`): every
  candidate of `scan_inputs` except duplicates, refused entries included (`load_image` names their problem).

  Raises:
    InputError: no input at all.
  """
  out = [path for path, _, duplicate_of in _candidates(inputs) if duplicate_of is None]
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
  problem = file_problem(path)
  if problem:
    raise InputError(problem)
  if os.path.getsize(path) == 0:
    raise InputError("empty file (0 bytes)")
  return decode_image(path, min_side, max_side, max_aspect)


def decode_image(source, min_side: int = 32, max_side: int = 8192, max_aspect: float = 16.0) -> np.ndarray:
  """Decodes `source` (a regular file's path, or a binary file object such as `io.BytesIO` of a TFDS record or a
  bucket object) to uint8 RGB [H, W, 3] under the size limits, EXIF orientation applied: the decoding rules and
  reasons of `load_image`, which checks the file first.

  Raises:
    InputError: the reason the image cannot be used.
  """
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(source) as img:
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
  except PermissionError:
    raise InputError("permission denied (the file cannot be read)") from None
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    raise InputError(f"corrupt or truncated image ({type(e).__name__}: {e})") from None
  if arr.ndim != 3 or arr.shape[-1] != 3:
    raise InputError(f"decoded to an unexpected array shape {arr.shape}")
  return np.ascontiguousarray(arr)


def probe_image(path) -> tuple[int, int]:
  """(width, height) of the image file `path` in its display orientation (EXIF applied), read from its header
  only (nothing is decoded: fast enough to check a whole training set up front).

  Raises:
    InputError: the file cannot be an image (the reasons of `load_image`, from the header).
  """
  path = os.fspath(path)
  problem = file_problem(path)
  if problem:
    raise InputError(problem)
  try:
    if os.path.getsize(path) == 0:
      raise InputError("empty file (0 bytes)")
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)
  except InputError:
    raise
  except UnidentifiedImageError:
    raise InputError("not an image (PIL cannot identify the file format)") from None
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise InputError(f"image too large to decode safely ({e})") from None
  except PermissionError:
    raise InputError("permission denied (the file cannot be read)") from None
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    raise InputError(f"corrupt or truncated image ({type(e).__name__}: {e})") from None
  return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


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
    if not is_utf8(n):
      raise InputError(f"{where}: class name {i + 1} ({display(n)}) is not valid UTF-8 text")
    key = n.casefold()
    if key in seen:
      raise InputError(f"{where}: duplicate class name {n!r} (names {seen[key] + 1} and {i + 1}, "
                       "compared case-insensitively)")
    seen[key] = i
  return names


__all__ = ["IMAGE_EXTENSIONS", "file_problem", "scan_inputs", "find_images", "load_image", "decode_image",
           "probe_image", "parse_class_names"]
