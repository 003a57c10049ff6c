"""A COCO dataset file indexed in one streaming pass: small per-annotation summaries in memory, the records
themselves (masks) read back from the file on demand.

Why: a labelling run over 10,000+ images writes an `annotations.json` of hundreds of MB, almost all of it RLE
strings. `json.load` would hold every record as Python objects (several times the file size). The gallery needs,
for the whole run, only each annotation's image, class, score and area (class counts, score histograms,
filters), and the masks of the few images it shows.

How: the file is read in 1 MiB chunks decoded as Latin-1, so that a character offset in the buffer is a byte
offset in the file (JSON's structural characters are ASCII; a UTF-8 string inside a record decodes to other
characters, which only matters for strings, and no string of an annotation record is used from this pass).
The top-level object's keys are walked with `json.JSONDecoder.raw_decode`; `images`, `categories` and `info`
are small and are re-parsed from their exact bytes as UTF-8; the `annotations` array is walked one record at a
time, and each record leaves `(byte offset, byte length, image, category, score, area, bbox, iscrowd)` in
compact arrays (about 80 bytes per annotation) before it is dropped. `CocoIndex.records(image_id)` seeks to the
offsets (on the file handle opened for the pass, so a file replaced meanwhile by an atomic writer still reads
consistently) and parses only those records. Memory is O(images + annotations) small numbers, whatever the
mask sizes; time is one pass over the bytes at the C JSON scanner's speed.
"""
from __future__ import annotations

import array
import dataclasses
import hashlib
import json
import math
import os
import re

import numpy as np

from zipjax.errors import InputError
from zipjax.io.geometry import image_size_problem

_CHUNK = 1 << 20
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class _Scanner:
  """Walks JSON values in a file through a sliding Latin-1 buffer (character offset == byte offset).

  Attributes:
    path: the file (for messages).
    f: the binary file object.
    buf: decoded window of the file.
    base: file offset of `buf[0]`.
    pos: current index in `buf`.
    eof: the file has been read to its end.
  """

  def __init__(self, f, path: str):
    self.f, self.path = f, path
    self.buf, self.base, self.pos, self.eof = "", 0, 0, False
    self._chunk = _CHUNK
    head = f.read(3)
    if head == b"\xef\xbb\xbf":  # UTF-8 byte-order mark
      self.base = 3
    else:
      self.buf = head.decode("latin-1")

  def _fill(self) -> bool:
    """Appends the next chunk (dropping what was consumed); False at the end of the file."""
    if self.eof:
      return False
    data = self.f.read(self._chunk)
    if not data:
      self.eof = True
      return False
    self.base += self.pos
    self.buf = self.buf[self.pos:] + data.decode("latin-1")
    self.pos = 0
    return True

  def offset(self) -> int:
    return self.base + self.pos

  def error(self, what: str) -> InputError:
    return InputError(f"{self.path}: not a valid COCO JSON file: {what} (at byte {self.offset()})")

  def peek(self) -> str:
    """The next non-blank character ('' at the end of the file)."""
    while True:
      self.pos = _WS.match(self.buf, self.pos).end()
      if self.pos < len(self.buf):
        return self.buf[self.pos]
      if not self._fill():
        return ""

  def expect(self, chars: str) -> str:
    c = self.peek()
    if not c or c not in chars:
      found = repr(c) if c else "the end of the file"
      raise self.error(f"expected {' or '.join(repr(x) for x in chars)}, found {found}")
    self.pos += 1
    return c

  def value(self):
    """Parses the next value; returns `(obj, start_byte, end_byte)` (strings in `obj` are Latin-1 decoded)."""
    self.peek()
    grow = 0
    while True:
      try:
        obj, end = _DECODER.raw_decode(self.buf, self.pos)
        if end < len(self.buf) or self.eof:  # a number at the very end of the buffer may continue
          break
      except RecursionError:
        raise self.error("a value nested too deeply") from None
      except json.JSONDecodeError as e:
        # more data can only help when the value ran into the end of the buffer
        unterminated = e.msg.startswith("Unterminated")
        if self.eof or not (unterminated or e.pos >= len(self.buf) - 8):
          truncated = self.eof and (unterminated or e.pos >= len(self.buf.rstrip()))
          self.pos = max(self.pos, min(e.pos, len(self.buf)))
          raise self.error("the file ends in the middle of a value (truncated?)" if truncated else e.msg) from None
      if not self._fill():
        continue  # eof now set: one last attempt with what there is
      grow += 1
      if grow > 4:  # a long value: read bigger chunks, so re-parsing it stays linear overall
        self._chunk = min(self._chunk * 2, 1 << 26)
    start = self.base + self.pos
    self.pos = end
    return obj, start, self.base + end

  def exact(self, start: int, end: int):
    """Re-parses bytes [start, end) of the current buffer as UTF-8 JSON."""
    raw = self.buf[start - self.base:end - self.base].encode("latin-1")
    try:
      return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
      raise InputError(f"{self.path}: not UTF-8 text near byte {start + e.start}") from None
    except RecursionError:
      raise InputError(f"{self.path}: not a valid COCO JSON file: a value nested too deeply (at byte {start})") \
          from None


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


@dataclasses.dataclass
class AnnotationTable:
  """Per-annotation summaries, sorted by image (file order within an image).

  Attributes:
    offset: int64 [A] byte offset of each record in the file.
    length: int64 [A] byte length of each record.
    image: int64 [A] index into `CocoIndex.images` (not the image id).
    category: int64 [A] category id as in the file.
    score: float64 [A] score (NaN when the record has none, e.g. ground truth).
    area: float64 [A] `area` field (NaN when absent).
    bbox: float64 [A, 4] `bbox` [x, y, w, h] (NaN when absent).
    iscrowd: int8 [A].
    starts: int64 [I + 1] annotations of image i are rows starts[i]:starts[i + 1].
  """
  offset: np.ndarray
  length: np.ndarray
  image: np.ndarray
  category: np.ndarray
  score: np.ndarray
  area: np.ndarray
  bbox: np.ndarray
  iscrowd: np.ndarray
  starts: np.ndarray

  def __len__(self) -> int:
    return int(self.offset.shape[0])


class CocoIndex:
  """A COCO dataset file (`{info, images, annotations, categories}`) indexed by image, masks left on disk.

  Attributes:
    path: the file.
    info: its `info` object ({} when absent).
    images: `[{"id", "file_name" (None when absent), "name" (for display), "height", "width", "oversize"}]` in
      file order; `oversize` says why an image claiming more pixels than `zipjax.io.geometry.MAX_SIDE` /
      `MAX_PIXELS` is not drawn (None for the others): memory follows real images, not numbers in a file.
    categories: `[{"id", "name"}]` in file order (ids referenced by annotations but not listed are added as
      `category <id>`).
    table: the `AnnotationTable`.
    orphans: annotations whose image_id is not in `images` (not indexed).
    problems: messages about records that were skipped or patched (shown by the gallery).
  """

  def __init__(self, path: str):
    self.path = os.fspath(path)
    try:
      self._f = open(self.path, "rb")  # pylint: disable=consider-using-with  (kept open for records())
    except FileNotFoundError:
      raise InputError(f"{self.path}: file not found") from None
    except OSError as e:
      raise InputError(f"{self.path}: cannot read ({e})") from None
    try:
      self._scan()
    except BaseException:
      self._f.close()
      raise

  # ------------------------------------------------------------------------------------------ the pass
  def _scan(self) -> None:
    sc = _Scanner(self._f, self.path)
    if sc.peek() != "{":
      raise sc.error("expected a COCO dataset object {\"images\": [...], \"annotations\": [...], ...}"
                     if sc.peek() else "the file is empty")
    sc.pos += 1
    raw_images, raw_categories, info = None, None, {}
    cols = {k: array.array(t) for k, t in (("offset", "q"), ("length", "q"), ("image_id", "q"),
                                            ("category", "q"), ("score", "d"), ("area", "d"),
                                            ("bbox", "d"), ("iscrowd", "b"))}
    seen_annotations = False
    first = True
    while True:
      if sc.peek() == "}":
        sc.pos += 1
        break
      if not first:
        sc.expect(",")
      first = False
      key, _, _ = sc.value()
      if not isinstance(key, str):
        raise sc.error("object keys must be strings")
      sc.expect(":")
      if key == "annotations":
        self._scan_annotations(sc, cols)
        seen_annotations = True
        continue
      _, start, end = sc.value()
      if key in ("images", "categories", "info"):
        obj = sc.exact(start, end)
        if key == "images":
          raw_images = obj
        elif key == "categories":
          raw_categories = obj
        else:
          info = obj if isinstance(obj, dict) else {}
    if sc.peek():
      raise sc.error("unexpected data after the top-level object")
    if raw_images is None:
      raise InputError(f"{self.path}: not a COCO dataset: no 'images' list")
    if not seen_annotations:
      raise InputError(f"{self.path}: not a COCO dataset: no 'annotations' list")
    self.info = info
    self.problems: list[str] = []
    self.images = self._images(raw_images)
    self.categories = self._categories(raw_categories)
    self._finish(cols)

  def _scan_annotations(self, sc: _Scanner, cols: dict) -> None:
    sc.expect("[")
    if sc.peek() == "]":
      sc.pos += 1
      return
    k = 0
    while True:
      rec, start, end = sc.value()
      if not isinstance(rec, dict):
        raise InputError(f"{self.path}: annotation {k} is not an object (at byte {start})")
      image_id, cat = rec.get("image_id"), rec.get("category_id", 0)
      if not _int(image_id):
        raise InputError(f"{self.path}: annotation {k} (at byte {start}) needs an integer 'image_id'")
      if not _int(cat):
        raise InputError(f"{self.path}: annotation {k} (image_id {image_id}): 'category_id' must be an integer")
      score, area, bbox = rec.get("score"), rec.get("area"), rec.get("bbox")
      if score is not None and not _number(score):
        raise InputError(f"{self.path}: annotation {k} (image_id {image_id}): score {score!r} is not a number")
      cols["offset"].append(start)
      cols["length"].append(end - start)
      cols["image_id"].append(image_id)
      cols["category"].append(cat)
      cols["score"].append(float(score) if score is not None else math.nan)
      cols["area"].append(float(area) if _number(area) else math.nan)
      ok_box = isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)
      cols["bbox"].extend([float(v) for v in bbox] if ok_box else [math.nan] * 4)
      cols["iscrowd"].append(1 if rec.get("iscrowd") else 0)
      k += 1
      if sc.expect(",]") == "]":
        return

  def _images(self, raw) -> list:
    if not isinstance(raw, list):
      raise InputError(f"{self.path}: 'images' must be a list")
    out, seen = [], set()
    for i, im in enumerate(raw):
      if not isinstance(im, dict) or not _int(im.get("id")):
        raise InputError(f"{self.path}: image {i} needs an integer 'id'")
      if im["id"] in seen:
        raise InputError(f"{self.path}: image {i}: duplicate image id {im['id']}")
      seen.add(im["id"])
      h, w = im.get("height"), im.get("width")
      if not (_int(h) and _int(w) and h > 0 and w > 0):
        raise InputError(f"{self.path}: image {i} (id {im['id']}) needs positive integer 'height' and 'width'")
      name = im.get("file_name") if isinstance(im.get("file_name"), str) and im.get("file_name") else None
      oversize = image_size_problem(h, w)
      if oversize:
        oversize = f"image record {i} (id {im['id']}) {oversize}; its instances are not drawn"
        self.problems.append(f"{self.path}: {oversize}")
      out.append({"id": im["id"], "file_name": name, "name": name or f"image {im['id']}", "height": h, "width": w,
                  "oversize": oversize})
    return out

  def _categories(self, raw) -> list:
    if raw is None:
      return []
    if not isinstance(raw, list):
      raise InputError(f"{self.path}: 'categories' must be a list")
    out, seen = [], set()
    for i, c in enumerate(raw):
      if not isinstance(c, dict) or not _int(c.get("id")):
        raise InputError(f"{self.path}: category {i} needs an integer 'id'")
      if c["id"] in seen:
        raise InputError(f"{self.path}: category {i}: duplicate category id {c['id']}")
      seen.add(c["id"])
      out.append({"id": c["id"], "name": str(c.get("name", f"category {c['id']}"))})
    return out

  def _finish(self, cols: dict) -> None:
    image_ids = np.frombuffer(cols["image_id"], np.int64) if len(cols["image_id"]) else np.zeros(0, np.int64)
    pos_of = {im["id"]: i for i, im in enumerate(self.images)}
    ids_sorted = np.array(sorted(pos_of), np.int64)  # [I]
    pos_sorted = np.array([pos_of[i] for i in ids_sorted.tolist()], np.int64)  # [I]
    where = np.searchsorted(ids_sorted, image_ids)  # [A]
    where = np.minimum(where, max(len(ids_sorted) - 1, 0))
    known = (ids_sorted[where] == image_ids) if len(ids_sorted) else np.zeros(len(image_ids), bool)  # [A]
    self.orphans = int((~known).sum())
    if self.orphans:
      self.problems.append(f"{self.orphans} annotation(s) refer to image ids not in 'images' (ignored)")
    image = pos_sorted[where[known]] if len(ids_sorted) else np.zeros(0, np.int64)  # [A']
    order = np.argsort(image, kind="stable")  # [A'] by image, file order within an image

    def col(name, dtype, shape=()):
      a = np.frombuffer(cols[name], dtype) if len(cols[name]) else np.zeros(0, dtype)
      a = a.reshape((-1,) + shape)[known]  # [A'] or [A', 4]
      return np.ascontiguousarray(a[order])

    cats = col("category", np.int64)
    known_cats = {c["id"] for c in self.categories}
    for cid in sorted(set(np.unique(cats).tolist()) - known_cats):
      self.categories.append({"id": cid, "name": f"category {cid}"})
      if known_cats:
        self.problems.append(f"category id {cid} is not in 'categories' (shown as 'category {cid}')")
    image = image[order]
    self.table = AnnotationTable(
        offset=col("offset", np.int64), length=col("length", np.int64), image=image, category=cats,
        score=col("score", np.float64), area=col("area", np.float64), bbox=col("bbox", np.float64, (4,)),
        iscrowd=col("iscrowd", np.int8),
        starts=np.searchsorted(image, np.arange(len(self.images) + 1)).astype(np.int64))

  # ------------------------------------------------------------------------------------------ access
  def rows(self, i: int) -> slice:
    """Rows of `table` for the image at position `i` of `images`."""
    return slice(int(self.table.starts[i]), int(self.table.starts[i + 1]))

  def raw_records(self, i: int) -> list:
    """The exact bytes of each annotation record of image position `i`, in file order."""
    r = self.rows(i)
    offs, lens = self.table.offset[r], self.table.length[r]
    if not len(offs):
      return []
    lo, hi = int(offs.min()), int((offs + lens).max())
    if hi - lo <= 4 * int(lens.sum()) + 4096:  # usually contiguous: one read
      self._f.seek(lo)
      span = self._f.read(hi - lo)
      return [span[o - lo:o - lo + n] for o, n in zip(offs.tolist(), lens.tolist())]
    out = []
    for o, n in zip(offs.tolist(), lens.tolist()):
      self._f.seek(o)
      out.append(self._f.read(n))
    return out

  def records(self, i: int) -> tuple[list, str]:
    """`(records, content_hash)` of image position `i`: the parsed annotation dicts (file order) and a sha1 of
    their canonical JSON (sorted keys, no spaces), so re-indenting the file does not change it."""
    out = []
    for raw in self.raw_records(i):
      try:
        out.append(json.loads(raw.decode("utf-8")))
      except RecursionError:
        raise InputError(f"{self.path}: an annotation record nested too deeply") from None
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{self.path}: the file changed while the gallery was reading it ({e})") from None
    canon = json.dumps(out, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return out, hashlib.sha1(canon.encode("utf-8")).hexdigest()

  def close(self) -> None:
    self._f.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False


__all__ = ["AnnotationTable", "CocoIndex"]
