"""Work lists of labelling jobs: which images, under which stable keys, and how to decode each one.

A work list is a random-access sequence of images sorted by key. The key of an image is its identity in the
run directory's ledger and the sort order of the merged `annotations.json`, so it must not depend on the
machine, the working directory or the process count:

- `FileList` (image folders, searched recursively, and image files): the path relative to the inputs' common
  folder, with '/' separators (one folder `coco/train2017/` gives `000000000009.jpg`). Local paths and bucket
  URLs (`gs://...`, read through etils.epath) both work. `file_name` = key; the common folder (absolute, or
  the URL) is the spec's `images_root`.
- `CocoList` (`--coco-json FILE --images-root DIR`): the `file_name` of each entry of the json's `images`
  list (normalised: `./a.png` is `a.png`, listed twice if both appear); its `id` (a positive integer below
  2^53) is kept as the output image id. A listed file that is missing, or that is outside DIR (an absolute or
  `../` name, or a symbolic link leading out), is a per-image error. The spec's `images_root` is DIR
  (absolute).
- `TfdsList` (`tfds:NAME:SPLIT --data-dir DIR`): `SPLIT/<index, zero-padded>`, read with `tfds.data_source`
  from the prepared ArrayRecord files (never downloaded, no TensorFlow); the image feature's encoded bytes
  are decoded here, so the decoding rules are the same as for files. `image/filename` (when the dataset has
  it) becomes `file_name` and `image/id` the `source_id` of the output image. There are no image files: the
  spec has no `images_root`.

`WorkList.load(i, limits)` returns a `Loaded` whose `image` is uint8 RGB [H, W, 3] or whose `reason` says why
the image was refused (`zipjax.io.images` rules); it never raises for a bad image, so one bad file never stops
a job. Things that are not regular files (FIFOs, devices, dangling symlinks) are refused before any read.
"""
from __future__ import annotations

import bisect
import dataclasses
import io
import json
import os
import posixpath
import stat

import numpy as np
from etils import epath

from zipjax.configs import Limits
from zipjax.errors import InputError
from zipjax.io import fs
from zipjax.io import images as images_io
from zipjax.io.coco import load_json


MAX_IMAGE_ID = 1 << 53  # COCO image ids: positive integers that every JSON reader holds exactly


@dataclasses.dataclass
class Loaded:
  """One decoded (or refused) image of a work list.

  Attributes:
    index: position in the work list.
    key: the stable key (ledger, merge order).
    file_name: `file_name` of the output image / errors.json entry.
    image_id: fixed output image id (COCO json inputs), or None (ids are assigned in key order).
    extra: more fields of the output image entry (e.g. `source_id`).
    image: uint8 RGB [H, W, 3], or None when refused.
    reason: why the image was refused, or None.
    item: what the engine's `prepare` made of the image (set by the loader), or None.
    height, width: the decoded image's size (set by the loader).
  """
  index: int
  key: str
  file_name: str
  image_id: int | None = None
  extra: dict = dataclasses.field(default_factory=dict)
  image: np.ndarray | None = None
  reason: str | None = None
  item: object = None
  height: int = 0
  width: int = 0

  def error_entry(self) -> dict:
    e = {"file_name": self.file_name}
    if self.image_id is not None:
      e["id"] = self.image_id
    e["reason"] = self.reason
    return e


def decode_image_bytes(data: bytes, limits: Limits) -> np.ndarray:
  """`zipjax.io.images.load_image` for encoded bytes (TFDS records, bucket objects): same rules and reasons."""
  if not data:
    raise InputError("empty file (0 bytes)")
  return images_io.decode_image(io.BytesIO(data), limits.min_side, limits.max_side, limits.max_aspect)


def load_path(path: str, limits: Limits) -> np.ndarray:
  """Decodes a local file or a bucket object; refuses what is not a regular file before opening it."""
  if fs.is_local(path):
    try:
      st = os.stat(path)
    except FileNotFoundError:
      if os.path.islink(path):
        raise InputError("dangling symbolic link (its target does not exist)") from None
      raise InputError("file not found") from None
    except OSError as e:
      raise InputError(f"cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
      raise InputError("is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
      kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
      raise InputError(f"not a regular file ({kind})")
    return images_io.load_image(path, limits.min_side, limits.max_side, limits.max_aspect)
  if not fs.exists(path):
    raise InputError("file not found")
  try:
    data = fs.read_bytes(path)
  except OSError as e:
    raise InputError(f"cannot read ({e})") from None
  return decode_image_bytes(data, limits)


class WorkList:
  """A sequence of images sorted by key (see the module docstring).

  Attributes:
    kind: 'files', 'coco' or 'tfds'.
    spec: what identifies the inputs (stored in the run directory's job.json).
  """
  kind = ""
  spec: dict = {}

  def __len__(self) -> int:
    raise NotImplementedError

  def key(self, i: int) -> str:
    raise NotImplementedError

  def index_of(self, key: str) -> int | None:
    raise NotImplementedError

  def load(self, i: int, limits: Limits) -> Loaded:
    raise NotImplementedError


class _SortedKeys(WorkList):
  """Work lists that hold their keys in a sorted Python list."""

  def __init__(self, keys: list[str]):
    self._keys = keys

  def __len__(self):
    return len(self._keys)

  def key(self, i):
    return self._keys[i]

  def index_of(self, key):
    i = bisect.bisect_left(self._keys, key)
    return i if i < len(self._keys) and self._keys[i] == key else None


def _excluded(path: str, exclude: tuple) -> bool:
  """True when `path` is one of the `exclude` folders (real paths, or URLs) or inside one."""
  p = os.path.realpath(path) if fs.is_local(path) else path.rstrip("/")
  return any(p == e or p.startswith(e.rstrip("/" if "://" in e else os.sep) + ("/" if "://" in e else os.sep))
             for e in exclude)


def _walk(folder: str, exclude: tuple = ()):
  """Image files under `folder`, recursively (local or bucket) -> [(path, path relative to folder)], skipping
  the `exclude` folders (real paths or URLs)."""
  exts = images_io.IMAGE_EXTENSIONS
  out = []
  if fs.is_local(folder):
    for dirpath, dirnames, filenames in os.walk(folder):
      dirnames[:] = sorted(d for d in dirnames if not _excluded(os.path.join(dirpath, d), exclude))
      rel_dir = os.path.relpath(dirpath, folder)
      for n in filenames:
        if n.lower().endswith(exts):
          rel = n if rel_dir == "." else os.path.join(rel_dir, n)
          out.append((os.path.join(dirpath, n), rel.replace(os.sep, "/")))
  else:
    root = epath.Path(folder)
    for dirpath, _, filenames in root.walk():
      if _excluded(os.fspath(dirpath), exclude):
        continue
      for n in filenames:
        if n.lower().endswith(exts):
          p = os.fspath(epath.Path(dirpath) / n)
          out.append((p, p[len(os.fspath(root)):].lstrip("/")))
  return out


class FileList(_SortedKeys):
  """Image folders (recursive) and image files; keys relative to the inputs' common folder. Folders in
  `exclude` (the run's output folder: `zipjax label DIR --out DIR/out` must not label its own outputs, e.g.
  a gallery's JPEGs, when it is run again) are not searched, and files inside them are left out."""
  kind = "files"

  def __init__(self, inputs, exclude=()):
    inputs = [os.fspath(x) for x in inputs]
    if not inputs:
      raise InputError("no input images given")
    exclude = tuple(os.path.realpath(e) if fs.is_local(e) else e.rstrip("/") for e in map(os.fspath, exclude))
    found = []  # (path, base folder, relative path under that base)
    for item in inputs:
      local = fs.is_local(item)
      if exclude and _excluded(item, exclude):
        continue
      if (os.path.isdir(item) if local else fs.isdir(item)):
        folder = os.path.abspath(item) if local else item.rstrip("/")
        found += [(p, folder, rel) for p, rel in _walk(folder, exclude)]
      else:  # a file (or something missing / odd: reported per image when loaded)
        path = os.path.abspath(item) if local else item
        folder, name = (os.path.dirname(path), os.path.basename(path)) if local else path.rsplit("/", 1)
        found.append((path, folder, name))
    if not found:
      raise InputError(f"no image files in {', '.join(inputs)} (extensions: {', '.join(images_io.IMAGE_EXTENSIONS)})")
    bases = sorted({b for _, b, _ in found})
    common = bases[0] if len(bases) == 1 else _common_base(bases)
    by_key = {}
    for path, base, rel in found:
      full_rel = rel if base == common else _relpath(base, common) + "/" + rel
      by_key.setdefault(full_rel, path)  # the same file given twice is one image
    keys = sorted(by_key)
    super().__init__(keys)
    self._paths = [by_key[k] for k in keys]
    # images_root: the folder the keys (= file_names) are relative to, absolute (or a URL), so that a reader
    # of the run (`zipjax gallery`) finds the images from any working directory
    self.spec = {"kind": self.kind, "inputs": sorted({os.path.abspath(x) if fs.is_local(x) else x for x in inputs}),
                 "images_root": common}

  def path(self, i: int) -> str:
    return self._paths[i]

  def load(self, i, limits):
    out = Loaded(i, self._keys[i], self._keys[i])
    try:
      out.image = load_path(self._paths[i], limits)
    except InputError as e:
      out.reason = str(e)
    return out


def _common_base(bases: list[str]) -> str:
  if all(fs.is_local(b) for b in bases):
    return os.path.commonpath(bases)
  parts = [b.split("/") for b in bases]
  common = []
  for level in zip(*parts):
    if len(set(level)) != 1:
      break
    common.append(level[0])
  return "/".join(common)


def _relpath(path: str, base: str) -> str:
  if fs.is_local(path):
    return os.path.relpath(path, base).replace(os.sep, "/")
  return path[len(base):].lstrip("/")


class CocoList(_SortedKeys):
  """The `images` list of a COCO json (keys: file_name; ids kept), files under `images_root`."""
  kind = "coco"

  def __init__(self, coco_json: str, images_root: str):
    if fs.is_local(coco_json):
      data, _ = load_json(coco_json, "--coco-json")
    else:
      try:
        data = json.loads(fs.read_bytes(coco_json))
      except (OSError, ValueError) as e:
        raise InputError(f"--coco-json {coco_json}: cannot read ({e})") from e
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
      raise InputError(f"--coco-json {coco_json}: no 'images' list")
    entries = {}
    ids = {}
    given = {}
    self._outside = {}
    for j, im in enumerate(images):
      where = f"--coco-json {coco_json}: images[{j}]"
      if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or not im["file_name"]:
        raise InputError(f"{where}: needs a non-empty string 'file_name'")
      iid = im.get("id")
      if not isinstance(iid, int) or isinstance(iid, bool):
        raise InputError(f"{where}: needs an integer 'id' (got {iid!r})")
      if not 1 <= iid < MAX_IMAGE_ID:
        raise InputError(f"{where}: id {iid} is not a positive integer below 2^53 (COCO ids; JSON readers lose "
                         "precision above)")
      raw = im["file_name"]
      name = posixpath.normpath(raw)  # './a.png' and 'a.png' are one file
      if name in entries:
        raise InputError(f"{where}: file_name {raw!r} is listed twice (as {given[name]!r} with id {entries[name]}, "
                         f"and with id {iid})")
      if iid in ids:
        raise InputError(f"{where}: id {iid} is used twice ({ids[iid]!r} and {raw!r})")
      if posixpath.isabs(name) or name == ".." or name.startswith("../") or "\0" in name:
        self._outside[name] = (f"file_name {raw!r} is outside --images-root (absolute or ../ names are refused: "
                               "every image is read from inside the folder the user named)")
      entries[name] = iid
      ids[iid] = name
      given[name] = raw
    del data, images, ids, given
    if not entries:
      raise InputError(f"--coco-json {coco_json}: the 'images' list is empty")
    keys = sorted(entries)
    super().__init__(keys)
    self._ids = [entries[k] for k in keys]
    self.root = images_root
    self.spec = {"kind": self.kind, "coco_json": os.path.abspath(coco_json) if fs.is_local(coco_json) else coco_json,
                 "images_root": os.path.abspath(images_root) if fs.is_local(images_root) else images_root}

  def load(self, i, limits):
    key = self._keys[i]
    out = Loaded(i, key, key, image_id=self._ids[i])
    path = fs.join(self.root, key)
    if key in self._outside:
      out.reason = self._outside[key]
      return out
    if fs.is_local(path):
      root = os.path.realpath(self.root)
      real = os.path.realpath(path)
      if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        out.reason = (f"file_name {key!r} leads outside --images-root (a symbolic link to {real}); refused: every "
                      "image is read from inside the folder the user named")
        return out
    try:
      out.image = load_path(path, limits)
    except InputError as e:
      out.reason = str(e)
    return out


def parse_tfds(spec: str) -> tuple[str, str]:
  """'tfds:NAME:SPLIT' -> (NAME, SPLIT); NAME may hold a config and version ('coco/2017:1.1.0')."""
  body = spec[len("tfds:"):]
  name, sep, split = body.rpartition(":")
  if not sep or not name or not split:
    raise InputError(f"{spec}: expected tfds:NAME:SPLIT (e.g. tfds:coco/2017:train)")
  return name, split


class TfdsList(WorkList):
  """A prepared TFDS split read with `tfds.data_source` (ArrayRecord; no download, no TensorFlow)."""
  kind = "tfds"

  def __init__(self, spec: str, data_dir: str | None, image_feature: str = "image"):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    name, split = parse_tfds(spec)
    if not data_dir:
      raise InputError(f"{spec}: --data-dir is required (the folder holding the prepared dataset)")
    try:
      self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                      decoders={image_feature: tfds.decode.SkipDecoding()})
    except Exception as e:  # pylint: disable=broad-except
      first = (str(e).strip().splitlines() or [""])[0][:300]  # tfds appends the list of every known dataset
      raise InputError(f"{spec} in {data_dir}: cannot open the prepared dataset ({type(e).__name__}: {first}); "
                       "prepare it first (tfds build, file_format=array_record)") from None
    self.image_feature = image_feature
    self.split = split
    self._n = len(self._source)
    self._width = max(9, len(str(max(self._n - 1, 0))))
    self.spec = {"kind": self.kind, "dataset": name, "split": split,
                 "data_dir": os.path.abspath(data_dir) if fs.is_local(data_dir) else data_dir}

  def __len__(self):
    return self._n

  def key(self, i):
    return f"{self.split}/{i:0{self._width}d}"

  def index_of(self, key):
    head, _, num = key.rpartition("/")
    if head != self.split or len(num) != self._width or not num.isdigit():
      return None
    i = int(num)
    return i if i < self._n else None

  def load(self, i, limits):
    key = self.key(i)
    out = Loaded(i, key, key)
    try:
      rec = self._source[i]
    except Exception as e:  # pylint: disable=broad-except
      out.reason = f"cannot read record {i} ({type(e).__name__}: {e})"
      return out
    if self.image_feature not in rec:
      out.reason = f"the record has no {self.image_feature!r} feature (features: {sorted(rec)})"
      return out
    fname = rec.get("image/filename")
    if isinstance(fname, (bytes, np.bytes_)):
      fname = bytes(fname).decode("utf-8", "surrogateescape")
    if isinstance(fname, str) and fname:
      out.file_name = fname
    if "image/id" in rec:
      out.extra = {"source_id": int(rec["image/id"])}
    data = rec[self.image_feature]
    try:
      if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 3:
        out.image = np.ascontiguousarray(data[..., :3]) if data.shape[-1] >= 3 else np.repeat(data, 3, -1)
      else:
        out.image = decode_image_bytes(bytes(data), limits)
    except InputError as e:
      out.reason = str(e)
    return out


def open_inputs(inputs, coco_json: str | None = None, images_root: str | None = None, data_dir: str | None = None,
                image_feature: str = "image", exclude=()) -> WorkList:
  """The work list of `zipjax label`'s inputs: folders / files, `--coco-json` + `--images-root`, or one
  `tfds:NAME:SPLIT` with `--data-dir`. Folders in `exclude` (the run's `--out`) are never part of a folder
  input's work list."""
  inputs = list(inputs or [])
  tfds_specs = [x for x in inputs if str(x).startswith("tfds:")]
  if coco_json or images_root:
    if not (coco_json and images_root):
      raise InputError("--coco-json and --images-root go together")
    if inputs:
      raise InputError(f"--coco-json takes no other INPUT (got {inputs[0]!r})")
    return CocoList(coco_json, images_root)
  if tfds_specs:
    if len(inputs) != 1:
      raise InputError("a tfds:NAME:SPLIT input cannot be combined with other inputs")
    return TfdsList(tfds_specs[0], data_dir, image_feature)
  if data_dir:
    raise InputError("--data-dir is only used with a tfds:NAME:SPLIT input")
  if not inputs:
    raise InputError("no INPUT given (folders, image files, --coco-json FILE --images-root DIR, or "
                     "tfds:NAME:SPLIT --data-dir DIR)")
  return FileList(inputs, exclude)


__all__ = ["Loaded", "WorkList", "FileList", "CocoList", "TfdsList", "open_inputs", "parse_tfds",
           "decode_image_bytes", "load_path"]
