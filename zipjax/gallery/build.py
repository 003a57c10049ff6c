"""`build_gallery(run_dir)`: a static HTML gallery of a zipjax output folder (segment, label, detect, a round).

Inputs read: `run_dir/annotations.json` (required; indexed in one streaming pass, `zipjax.gallery.source`),
`errors.json` and `run.json` (optional: a missing one is fine, an unreadable one is reported on the index page
and on stderr, the build goes on), the images named by `file_name`, and with `gt` a COCO ground-truth file
(indexed the same way). Overlays are not used.

Work and memory:
  * the whole run: one pass over each JSON file; per-class counts and score histograms from the compact
    annotation table (numbers only);
  * shown images (at most `max_images`; a larger run is sampled deterministically: the images whose file
    names have the smallest SHA-1 hashes, kept in file order, so the choice does not depend on the order or
    on the other images' presence): their annotation records are read back from the file, one chunk of images
    at a time, rendered by a thread pool, and their pages written before the next chunk is read;
  * thumbnails and display copies are cached by content (`zipjax.gallery.render` keys): a re-run renders only
    what changed and rewrites no thumbnail; pages, the index and the static assets are rewritten only when
    their bytes change; files of the output folder's `thumbs/`, `images/` and `pages/` that the new gallery
    does not reference are removed.
Every file is written atomically (`zipjax.io.atomic`; the files of a chunk of images together, with one sync).
Output layout: `index.html`, `static/{gallery.css,gallery.js}`,
`pages/<image id>.html`, `thumbs/<key>.jpg`, `images/<key>.jpg`.

Image paths: a gallery is made to be shared, so it copies (as thumbnails and display copies) only images
strictly inside the roots the run recorded or the user gave, and its pages name them relative to that root.
With `images_root` (`--images-root`), relative `file_name`s are looked up under it and every image must be
inside it. Otherwise relative names are looked up under the roots the run recorded (`images_root` /
`image_root` / `images_dir` / `image_dir` in annotations.json's `info` or in run.json, top level or its
`info`; a relative one is relative to the run folder), or the run folder itself when none is recorded; and
every image must be inside run.json's `input_roots` (the INPUT arguments of `zipjax segment` / `detect`,
absolute) when recorded, else inside those roots. "Inside" is decided on real paths (symlinks resolved): an
absolute `file_name`, a `../` path or a symlink that leads outside is refused, per image: the page and the
index list it as missing, with the reason. `zipjax label` records its inputs' folder (absolute) as run.json's
`images_root`; `zipjax segment` and `zipjax detect` record the working directory their relative input paths
are relative to, and their inputs as `input_roots`. A run whose images were records, not files (`zipjax label
tfds:NAME:SPLIT`; run.json `inputs.kind` 'tfds') has no files to show: without `--images-root` its images are
not looked up, each page says why, the index warns once, and the instances are drawn on blank canvases.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import heapq
import json
import os
import re
import shlex
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
from PIL import Image

from zipjax.errors import InputError
from zipjax.gallery import match as match_lib
from zipjax.gallery import render, site
from zipjax.gallery.source import CocoIndex
from zipjax.io import images as images_io
from zipjax.io.atomic import atomic_write_bytes, atomic_write_many
from zipjax.io.outdir import check_output_dir
from zipjax.io.results import RANDOM_NOTE

DEFAULT_MAX_IMAGES = 1000
DEFAULT_THUMB_SIZE = 256
DEFAULT_IMAGE_SIZE = 1600


def gallery_hint(out_dir) -> str:
  """The command that builds the gallery of `out_dir`, as one line for a command's final summary."""
  out_dir = os.fspath(out_dir)
  return (f"look at the results: zipjax gallery {shlex.quote(out_dir)}  "
          f"(then open {os.path.join(out_dir, 'gallery', 'index.html')})")


CHUNK = 64
MIN_CANVAS = 800
VERSION = f"v{render.RENDER_VERSION}"
_ROOT_KEYS = ("images_root", "image_root", "images_dir", "image_dir")
_GT_COLOURS = {"matched": (47, 191, 74), "miss": (229, 56, 59), "crowd": (154, 154, 154)}
_PRUNE = {"thumbs": re.compile(r"^[0-9a-f]{32}\.jpg$"), "images": re.compile(r"^[0-9a-f]{32}\.jpg$"),
          "pages": re.compile(r"^\d+\.html$")}
_TMP = re.compile(r"^\..+\.tmp-")


@dataclasses.dataclass
class GalleryResult:
  """What a build did.

  Attributes:
    index: absolute path of index.html.
    url: its file:// URL.
    shown: images with a page.
    total: images in the run.
    thumbs_rendered: thumbnails drawn by this build.
    thumbs_reused: thumbnails found in the cache.
    displays_rendered: display copies written by this build.
    displays_reused: display copies found in the cache.
    missing: shown images whose file was missing or unreadable.
    seconds: wall time of the build.
  """
  index: str
  url: str
  shown: int
  total: int
  thumbs_rendered: int = 0
  thumbs_reused: int = 0
  displays_rendered: int = 0
  displays_reused: int = 0
  missing: int = 0
  seconds: float = 0.0


# ------------------------------------------------------------------------------------------------ inputs
def find_annotations(run_dir: str) -> str:
  """`run_dir/annotations.json`, or an InputError that names the output folders found below `run_dir`."""
  if not os.path.isdir(run_dir):
    raise InputError(f"{run_dir}: not a folder (expected a zipjax output folder holding annotations.json)")
  path = os.path.join(run_dir, "annotations.json")
  if os.path.isfile(path):
    return path
  below = sorted(str(p.parent) for pattern in ("*/annotations.json", "*/*/annotations.json")
                 for p in Path(run_dir).glob(pattern))
  hint = (f"; output folders below it: {', '.join(below[:6])}{' ...' if len(below) > 6 else ''} "
          "(build one gallery per folder)") if below else ""
  raise InputError(f"{run_dir}: no annotations.json (not a zipjax output folder){hint}")


def read_json_optional(path: str, what: str):
  """(object or None, problem or None) for an optional JSON file."""
  if not os.path.exists(path):
    return None, None
  try:
    with open(path, "rb") as f:
      return json.load(f), None
  except (OSError, ValueError) as e:
    return None, f"{path}: cannot read {what} ({type(e).__name__}: {e})"
  except RecursionError:
    return None, f"{path}: cannot read {what} (JSON nested too deeply)"


def read_errors(run_dir: str) -> tuple[list, str | None]:
  obj, problem = read_json_optional(os.path.join(run_dir, "errors.json"), "the list of skipped files")
  if obj is None:
    return [], problem
  if not isinstance(obj, list):
    return [], f"{os.path.join(run_dir, 'errors.json')}: expected a list of {{path, reason}}"
  out, bad = [], 0
  for e in obj:
    if isinstance(e, dict) and "path" in e:
      out.append({"path": str(e["path"]), "reason": str(e.get("reason", ""))})
    else:
      bad += 1
  return out, (f"errors.json: {bad} entr{'y' if bad == 1 else 'ies'} without a path left out" if bad else None)


@dataclasses.dataclass(frozen=True)
class ImageRoots:
  """Where a gallery looks for images, and where they may be.

  Attributes:
    base: folders a relative `file_name` is joined to, in order (the first existing allowed file wins).
    allowed: real paths (symlinks resolved) of the folders (or files) every image must be, or be inside.
  """
  base: tuple
  allowed: tuple

  def containing(self, real: str) -> str | None:
    """The allowed root that the real path `real` is (or is inside), or None."""
    for a in self.allowed:
      if real == a or real.startswith(a.rstrip(os.sep) + os.sep):
        return a
    return None

  def shown(self, path: str) -> str:
    """`path` as a page shows it: relative to the root it is inside (its real path), else as given."""
    if not path or not os.path.isabs(path):
      return path
    real = os.path.realpath(path)
    root = self.containing(real)
    if root is None:
      return path
    return os.path.basename(real) if real == root else os.path.relpath(real, root)


def image_roots(run_dir: str, info: dict, run_info, images_root: str | None) -> ImageRoots:
  """The run's `ImageRoots` (see the module docstring)."""
  if images_root:
    if not os.path.isdir(images_root):
      raise InputError(f"--images-root {images_root}: not a folder")
    return ImageRoots((images_root,), (os.path.realpath(images_root),))
  base, allowed = [], []
  sources = [info]
  if isinstance(run_info, dict):
    sources += [run_info, run_info.get("info")]
  for src in sources:
    if not isinstance(src, dict):
      continue
    for key in _ROOT_KEYS:
      v = src.get(key)
      if isinstance(v, str) and v and "://" not in v:
        base.append(v if os.path.isabs(v) else os.path.join(run_dir, v))
    inputs = src.get("input_roots")
    if isinstance(inputs, list):
      allowed += [v for v in inputs if isinstance(v, str) and os.path.isabs(v)]
  base = _unique(base or [run_dir], os.path.abspath)
  return ImageRoots(tuple(base), tuple(_unique(allowed or base, os.path.realpath)))


def _unique(paths, norm) -> list:
  seen, out = set(), []
  for p in paths:
    a = norm(p)
    if a not in seen:
      seen.add(a)
      out.append(a if norm is os.path.realpath else p)
  return out


def records_source(run_info) -> str | None:
  """Why the images of a run cannot be shown (they were dataset records, not files), or None."""
  inputs = run_info.get("inputs") if isinstance(run_info, dict) else None
  if not isinstance(inputs, dict) or inputs.get("kind") != "tfds":
    return None
  where = f"TFDS dataset {inputs.get('dataset', '?')}, split {inputs.get('split', '?')}"
  if inputs.get("data_dir"):
    where += f", in {inputs['data_dir']}"
  return (f"no image file: this run read its images from the {where} (records, not files), so the gallery "
          "cannot show them; --images-root DIR shows images stored as files named by file_name")


def resolve_image(file_name: str | None, roots: ImageRoots) -> tuple[str | None, str | None, str]:
  """(real path to read or None, why it is not shown or None, the name the pages show)."""
  if not file_name:
    return None, "the annotations give no file_name", ""
  candidates = [file_name] if os.path.isabs(file_name) else [os.path.join(b, file_name) for b in roots.base]
  outside = False
  for c in candidates:
    if not os.path.lexists(c):
      continue
    real = os.path.realpath(c)
    if roots.containing(real) is None:
      outside = True
      continue
    if os.path.isfile(real):
      return real, None, roots.shown(real)
  if outside:
    return None, (f"image refused: {file_name} is outside the images root (a gallery copies only images inside "
                  "the folder the run recorded or --images-root names; symlinks and ../ paths that lead out are "
                  "refused)"), file_name
  return None, (f"image missing: {file_name} not found under the images root (--images-root DIR sets the "
                "folder)"), file_name


def sample_images(images: list, max_images: int | None) -> list:
  """Positions of the images shown: all, or the `max_images` with the smallest SHA-1 of their file name (ties
  by position), in file order."""
  if max_images is None or len(images) <= max_images:
    return list(range(len(images)))
  keyed = ((hashlib.sha1(im["name"].encode("utf-8")).digest(), i) for i, im in enumerate(images))
  return sorted(i for _, i in heapq.nsmallest(max_images, keyed))


def gt_image_mapping(pred_images: list, gt_images: list) -> list:
  """Per prediction image, the position of its ground-truth image or None: by file_name (exact, then an
  unambiguous basename) when the prediction images have file names, else by id."""
  by_file, by_base, ambiguous, by_id = {}, {}, set(), {}
  for j, im in enumerate(gt_images):
    by_id[im["id"]] = j
    if im["file_name"]:
      by_file.setdefault(im["file_name"], j)
      base = os.path.basename(im["file_name"])
      if base in by_base:
        ambiguous.add(base)
      by_base[base] = j
  use_names = bool(by_file) and all(im["file_name"] for im in pred_images)
  out = []
  for im in pred_images:
    if use_names:
      name = im["file_name"]
      base = os.path.basename(name)
      out.append(by_file.get(name, by_base.get(base) if base not in ambiguous else None))
    else:
      out.append(by_id.get(im["id"]))
  return out


def unchanged(path: str, data: bytes) -> bool:
  """True when `path` already holds exactly `data`."""
  try:
    if os.path.getsize(path) != len(data):
      return False
    with open(path, "rb") as f:
      return f.read() == data
  except OSError:
    return False


def write_if_changed(path: str, data: bytes) -> bool:
  """Atomically writes `data` unless `path` already holds exactly it; True when written."""
  if unchanged(path, data):
    return False
  atomic_write_bytes(path, data)
  return True


def _static(name: str) -> bytes:
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", name), "rb") as f:
    return f.read()


# ------------------------------------------------------------------------------------------------ build
class _Builder:
  """One gallery build (see `build_gallery`).

  Attributes:
    run_dir, out: input and output folders.
    index: the annotations' `CocoIndex`; gt: the ground truth's or None.
    roots: image lookup folders.
    names, colours, cat_pos: category id -> name, (r, g, b), position in the class table.
    thumb_size, image_size: longer sides of thumbnails and display copies.
    class_agnostic: ignore classes when matching to the ground truth.
    no_files: why the run's images cannot be shown (`records_source`), or None.
  """

  def __init__(self, run_dir, out, index, gt, gt_map, roots, thumb_size, image_size, class_agnostic,
               no_files=None):
    self.run_dir, self.out, self.index, self.gt, self.gt_map = run_dir, out, index, gt, gt_map
    self.roots, self.thumb_size, self.image_size = roots, thumb_size, image_size
    self.class_agnostic = class_agnostic
    self.no_files = no_files
    cats = index.categories
    self.names = {c["id"]: c["name"] for c in cats}
    self.colours = {c["id"]: render.class_colour(i) for i, c in enumerate(cats)}
    self.cat_pos = {c["id"]: i for i, c in enumerate(cats)}
    self.gt_names = {c["id"]: c["name"] for c in gt.categories} if gt else {}

  def prepare(self, pos: int) -> dict:
    """Main thread: reads the image's records (file access is sequential) and resolves its path."""
    im = self.index.images[pos]
    records, ann_hash = ([], "oversize") if im["oversize"] else self.index.records(pos)
    job = {"pos": pos, "image": im, "records": records, "ann_hash": ann_hash, "gt_pos": None, "gt_records": None}
    if im["oversize"]:  # not decoded at the size it claims; no image file is read either
      job["path"], job["missing"], job["shown"] = None, im["oversize"], im["name"]
    elif self.no_files:  # the run's images were dataset records: nothing to look up
      job["path"], job["missing"], job["shown"] = None, self.no_files, im["name"]
    else:
      job["path"], job["missing"], job["shown"] = resolve_image(im["file_name"], self.roots)
      job["shown"] = job["shown"] or im["name"]
    if self.gt is not None:
      job["gt_pos"] = self.gt_map[pos]
      if job["gt_pos"] is not None:
        oversize = im["oversize"] or self.gt.images[job["gt_pos"]]["oversize"]
        job["gt_records"] = [] if oversize else self.gt.records(job["gt_pos"])[0]
    return job

  def process(self, job: dict) -> dict:
    """Worker thread: normalises the instances, renders what the cache lacks, matches to the ground truth."""
    im = job["image"]
    w, h = im["width"], im["height"]
    where = im["name"]
    insts, problems = render.normalize_instances(job["records"], h, w, where)
    res = {"job": job, "insts": insts, "problems": problems, "thumb_new": False, "display_new": False,
           "files": []}
    missing = job["missing"]
    try:
      stamp = render.image_stamp(job["path"], missing)
    except OSError as e:
      missing = f"image unreadable: {job['shown']} ({str(e).replace(job['path'], job['shown'])})"
      stamp = render.image_stamp(job["path"], missing)
    drawn = sorted({i.category_id for i in insts})
    classes = [(self.names[c], render.hex_colour(self.colours[c])) for c in drawn]
    tkey = render.thumb_key(stamp, job["ann_hash"], self.thumb_size, classes)
    tpath = os.path.join(self.out, "thumbs", tkey + ".jpg")
    dkey = None if missing else render.display_key(stamp, self.image_size)
    dpath = os.path.join(self.out, "images", f"{dkey}.jpg") if dkey else None
    need_thumb = not os.path.isfile(tpath)
    need_display = dpath is not None and not os.path.isfile(dpath)
    arr = None
    if not missing and (need_thumb or need_display):
      try:
        arr = images_io.load_image(job["path"], min_side=1, max_side=1 << 20, max_aspect=float("inf"))
      except InputError as e:
        missing = f"image unreadable: {job['shown']} ({str(e).replace(job['path'], job['shown'])})"
        dkey = dpath = None
        need_display = False
        stamp = render.image_stamp(job["path"], missing)
        tkey = render.thumb_key(stamp, job["ann_hash"], self.thumb_size, classes)
        tpath = os.path.join(self.out, "thumbs", tkey + ".jpg")
        need_thumb = not os.path.isfile(tpath)
    if need_thumb:
      res["files"].append((tpath, render.render_thumbnail(arr, w, h, insts, self.colours, self.names,
                                                          self.thumb_size)))
      res["thumb_new"] = True
    display = None
    if dpath:
      if need_display:
        data, dw, dh = render.render_display(arr, self.image_size)
        res["files"].append((dpath, data))
        res["display_new"] = True
      else:
        with Image.open(dpath) as d:
          dw, dh = d.size
      display = {"key": dkey, "w": dw, "h": dh}
    res.update(missing=missing, thumb=tkey, display=display)
    if self.gt is not None and job["gt_pos"] is not None:
      gim = self.gt.images[job["gt_pos"]]
      gt_insts, gt_problems = render.normalize_instances(job["gt_records"], gim["height"], gim["width"],
                                                         f"ground truth {gim['name']}")
      problems += gt_problems
      if (gim["height"], gim["width"]) != (h, w):
        problems.append(f"{where}: the ground-truth image is {gim['width']}x{gim['height']}, the annotated one "
                        f"{w}x{h}; not matched")
        res["gt_insts"], res["match"] = gt_insts, None
      else:
        res["gt_insts"] = gt_insts
        res["match"] = match_lib.match_image(insts, [self.names[i.category_id] for i in insts], gt_insts,
                                             [self.gt_names.get(g.category_id, "") for g in gt_insts],
                                             class_agnostic=self.class_agnostic)
    return res

  # ------------------------------------------------------------------------------------------ pages
  def page(self, res: dict, position: int, total: int, prev_id, next_id) -> str:
    job, insts = res["job"], res["insts"]
    im = job["image"]
    w, h = im["width"], im["height"]
    display = res["display"]
    canvas = canvas_size(w, h, display, self.image_size)
    notes = list(res["problems"])
    if res["missing"]:
      notes.insert(0, res["missing"] + " (the instances are drawn on a blank canvas)")
    elif display and render.fit(w, h, self.image_size) != (display["w"], display["h"]):
      notes.insert(0, f"the image file's shape differs from the annotated {w}x{h}; masks are stretched to it")
    meta = [f"{w} &times; {h} px", f"image id {im['id']}", f"{len(insts)} instance(s)"]
    if job["path"] and not res["missing"]:  # a relative link: the pages show no absolute local path
      href = urllib.parse.quote(os.path.relpath(job["path"], os.path.join(self.out, "pages")).replace(os.sep, "/"))
      meta.append(f'<a href="{site.esc(href)}">original file</a> ({site.esc(job["shown"])})')
    match = res.get("match")
    pred_rows, pred_data = [], []
    for j, inst in enumerate(insts):
      colour = render.hex_colour(render.class_colour(j))
      name = self.names[inst.category_id]
      row = {"k": j, "colour": colour, "name": name, "score": inst.score, "area": inst.area, "box": inst.bbox}
      if match is not None:
        st, g, iou = match.pred[j]
        row["status"] = st
        row["match"] = {"tp": f"TP: GT #{(g or 0) + 1} ({iou:.2f})", "fp": f"FP (best {iou:.2f})",
                        "ignored": f"crowd region #{(g or 0) + 1} ({iou:.2f}), ignored"}[st]
      elif self.gt is not None:
        row["status"], row["match"] = "ignored", "not in the ground truth"
      pred_rows.append(row)
      label = name + (f" {inst.score:.2f}" if inst.score is not None else "")
      pred_data.append({"k": j, "rle": inst.rle, "box": inst.bbox, "color": colour, "label": label})
    gt_rows, gt_data, gt_summary = None, [], None
    if self.gt is not None:
      gt_rows = []
      if job["gt_pos"] is None:
        gt_summary = "This image is not in the ground truth."
      elif match is None:
        gt_summary = "The ground-truth image has another size; not matched."
      else:
        gt_summary = (f'Against the ground truth ({match.iou_type} IoU &ge; {match_lib.IOU_THRESHOLD}, greedy by '
                      f'score): <span class="tp">{match.tp} true positive(s)</span>, <span class="miss">{match.fn}'
                      f' miss(es)</span>, <span class="fp">{match.fp} false positive(s)</span>'
                      + (f", {match.ignored} on crowd regions" if match.ignored else "") + ".")
      for j, g in enumerate(res.get("gt_insts") or []):
        st, p, iou = match.gt[j] if match is not None else ("crowd" if g.iscrowd else "miss", None, 0.0)
        name = self.gt_names.get(g.category_id, f"category {g.category_id}")
        gt_rows.append({"k": j, "colour": render.hex_colour(_GT_COLOURS[st]), "name": name, "score": None,
                        "area": g.area, "box": g.bbox, "status": st,
                        "match": {"matched": f"prediction #{(p or 0) + 1} ({iou:.2f})", "miss": "miss",
                                  "crowd": "crowd region"}[st]})
        gt_data.append({"k": j, "rle": g.rle, "box": g.bbox, "color": render.hex_colour(_GT_COLOURS[st]),
                        "label": f"{name}" + (" (miss)" if st == "miss" else "")})
    data = {"width": w, "height": h, "canvas": list(canvas), "pred": pred_data}
    if gt_rows is not None:
      data["gt"] = gt_data
    ctx = {"title": job["shown"], "position": position, "total": total,
           "prev": f"{prev_id}.html" if prev_id is not None else None,
           "next": f"{next_id}.html" if next_id is not None else None,
           "meta": meta, "notes": notes, "width": w, "height": h, "canvas": canvas,
           "display": {"src": f"../images/{display['key']}.jpg", "w": display["w"], "h": display["h"]}
           if display else None, "missing": res["missing"], "pred": pred_rows, "gt": gt_rows,
           "gt_summary": gt_summary, "data": data}
    return site.page_html(ctx)

  def figure(self, res: dict) -> dict:
    im = res["job"]["image"]
    tw, th = render.fit(im["width"], im["height"], self.thumb_size)
    m = res.get("match")
    return {"id": im["id"], "name": res["job"]["shown"], "page": f"pages/{im['id']}.html",
            "thumb": f"thumbs/{res['thumb']}.jpg", "tw": tw, "th": th, "missing": bool(res["missing"]),
            "inst": [(self.cat_pos[i.category_id], i.score) for i in res["insts"]],
            "match": {"tp": m.tp, "fp": m.fp, "fn": m.fn, "ignored": m.ignored} if m is not None else None}


def canvas_size(width: int, height: int, display: dict | None, image_size: int) -> tuple[int, int]:
  """Pixel size of an image page's instance layers: the display copy's size (or the annotated size fitted to
  `image_size`), enlarged so that the longer side is at least MIN_CANVAS (small images: masks drawn as crisp
  blocks, labels legible)."""
  cw, ch = (display["w"], display["h"]) if display else render.fit(width, height, image_size)
  s = max(1.0, MIN_CANVAS / max(cw, ch))
  return max(1, round(cw * s)), max(1, round(ch * s))


def class_stats(index: CocoIndex) -> tuple[list, tuple]:
  """Per class: count, images, mean score, score histogram; and the histogram range."""
  t = index.table
  cats = index.categories
  ids = np.array([c["id"] for c in cats], np.int64)
  order = np.argsort(ids)
  pos = order[np.searchsorted(ids[order], t.category)] if len(t) else np.zeros(0, np.int64)  # [A]
  n_cls = len(cats)
  counts = np.bincount(pos, minlength=n_cls)
  pairs = np.unique(t.image * max(n_cls, 1) + pos)
  images = np.bincount(pairs % max(n_cls, 1), minlength=n_cls) if len(pairs) else np.zeros(n_cls, np.int64)
  lo, hi = site.histogram_range(t.score)
  out = []
  for i, c in enumerate(cats):
    s = t.score[pos == i]
    fin = s[np.isfinite(s)]
    out.append({"pos": i, "id": c["id"], "name": c["name"], "colour": render.hex_colour(render.class_colour(i)),
                "count": int(counts[i]), "images": int(images[i]), "mean": float(fin.mean()) if fin.size else None,
                "hist": site.histogram_counts(s, lo, hi)})
  return out, (lo, hi)


MARKER = ".zipjax-gallery"  # in every gallery folder: the folder is the gallery's to rewrite and prune
_FOOTER = '<footer class="muted"><p>zipjax gallery '


def is_gallery(out: str) -> bool:
  """True when `out` holds a gallery (its marker, or the index.html of a gallery made before the marker)."""
  if os.path.isfile(os.path.join(out, MARKER)):
    return True
  try:
    with open(os.path.join(out, "index.html"), encoding="utf-8", errors="replace") as f:
      return _FOOTER in f.read(1 << 22)
  except OSError:
    return False


def check_gallery_out(out: str, overwrite: bool = False) -> str:
  """The gallery's output folder, checked before anything is read: it must be (or become) a writable folder
  (`zipjax.io.outdir.check_output_dir`: not a file, not below a file, not /proc); an existing non-empty folder
  that is not a gallery is refused unless `overwrite` (a build rewrites index.html and removes files that look
  like its own). The folder gets the gallery's marker file. Returns the absolute path."""
  out = os.path.abspath(out)
  if os.path.isdir(out) and not overwrite and os.listdir(out) and not is_gallery(out):
    raise InputError(f"--out {out}: an existing folder that zipjax gallery did not create (building into it would "
                     "replace its index.html and remove files that look like gallery files); choose an empty or "
                     "new folder, or pass --overwrite")
  check_output_dir(out, "--out")
  if not os.path.isfile(os.path.join(out, MARKER)):
    atomic_write_bytes(os.path.join(out, MARKER), b"zipjax gallery\n")
  return out


def _prune(out: str, keep: dict) -> int:
  removed = 0
  for sub, pattern in _PRUNE.items():
    d = os.path.join(out, sub)
    if not os.path.isdir(d):
      continue
    for name in os.listdir(d):
      if (pattern.match(name) and name not in keep[sub]) or _TMP.match(name):
        try:
          os.unlink(os.path.join(d, name))
          removed += 1
        except OSError:
          pass
  return removed


def build_gallery(run_dir, out=None, max_images: int | None = DEFAULT_MAX_IMAGES, gt=None, images_root=None,
                  class_agnostic: bool = False, thumb_size: int = DEFAULT_THUMB_SIZE,
                  image_size: int = DEFAULT_IMAGE_SIZE, workers: int | None = None, progress=None,
                  overwrite: bool = False) -> GalleryResult:
  """Writes the gallery of the zipjax output folder `run_dir` into `out` (default `run_dir/gallery`).

  Args:
    run_dir: folder with annotations.json (+ errors.json, run.json).
    out: output folder.
    max_images: images with a page at most (None: all); a larger run is sampled by file-name hash.
    gt: a COCO ground-truth file: ground truth drawn beside the predictions, per-image match counts.
    images_root: folder that relative `file_name`s are under (else looked up, see the module docstring).
    class_agnostic: match predictions to ground truth of any class.
    thumb_size: longer side of thumbnails (px).
    image_size: longer side of the display copies on the image pages (px).
    workers: rendering threads (default min(4, CPUs)).
    progress: optional callable(done, total) after each chunk.
    overwrite: write into an existing folder that is not a gallery (see `check_gallery_out`).

  Returns:
    A `GalleryResult`.
  """
  t0 = time.perf_counter()
  run_dir = os.fspath(run_dir)
  if max_images is not None and max_images < 1:
    raise InputError(f"--max-images must be >= 1, got {max_images}")
  for name, v in (("--thumb-size", thumb_size), ("--image-size", image_size)):
    if not 16 <= v <= 8192:
      raise InputError(f"{name} must be between 16 and 8192 px, got {v}")
  ann_path = find_annotations(run_dir)
  out = check_gallery_out(os.fspath(out) if out else os.path.join(run_dir, "gallery"), overwrite)
  index = CocoIndex(ann_path)
  gt_index = None
  try:
    if gt is not None:
      gt_index = CocoIndex(os.fspath(gt))
    return _build(run_dir, out, index, gt_index, max_images, images_root, class_agnostic, thumb_size,
                  image_size, workers, progress, t0)
  finally:
    index.close()
    if gt_index is not None:
      gt_index.close()


def _build(run_dir, out, index, gt_index, max_images, images_root, class_agnostic, thumb_size, image_size,
           workers, progress, t0) -> GalleryResult:
  run_info, run_problem = read_json_optional(os.path.join(run_dir, "run.json"), "the run record")
  errors, errors_problem = read_errors(run_dir)
  for p in (run_problem, errors_problem):
    if p:
      print(f"zipjax gallery: warning: {p}", file=sys.stderr)
  roots = image_roots(run_dir, index.info, run_info, images_root)
  no_files = None if images_root else records_source(run_info)
  if no_files:
    print(f"zipjax gallery: warning: {no_files}", file=sys.stderr)
  images = index.images
  shown = sample_images(images, max_images)
  gt_map = gt_image_mapping(images, gt_index.images) if gt_index is not None else None
  b = _Builder(run_dir, out, index, gt_index, gt_map, roots, thumb_size, image_size, class_agnostic, no_files)
  for sub in ("thumbs", "images", "pages", "static"):
    os.makedirs(os.path.join(out, sub), exist_ok=True)
  write_if_changed(os.path.join(out, "static", "gallery.css"), _static("gallery.css"))
  write_if_changed(os.path.join(out, "static", "gallery.js"), _static("gallery.js"))

  result = GalleryResult(index=os.path.join(out, "index.html"), url=Path(out, "index.html").as_uri(),
                         shown=len(shown), total=len(images))
  figures, problems = [], list(index.problems) + ([f"ground truth: {p}" for p in gt_index.problems]
                                                  if gt_index is not None else [])
  if run_problem:
    problems.append(run_problem)
  keep = {"thumbs": set(), "images": set(), "pages": set()}
  gt_tot = {"tp": 0, "fp": 0, "fn": 0, "ignored": 0, "images": 0, "unmatched": 0}
  ids = [images[p]["id"] for p in shown]
  n_workers = workers or min(4, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(max_workers=n_workers) as pool:
    for c0 in range(0, len(shown), CHUNK):
      jobs = [b.prepare(p) for p in shown[c0:c0 + CHUNK]]
      batch = []  # this chunk's new files, written together (one sync)
      for k, res in enumerate(pool.map(b.process, jobs)):
        n = c0 + k
        page = b.page(res, n + 1, len(shown), ids[n - 1] if n else None, ids[n + 1] if n + 1 < len(ids) else None)
        name = f"{res['job']['image']['id']}.html"
        batch.extend(res.pop("files"))
        page_path, page_bytes = os.path.join(out, "pages", name), page.encode("utf-8")
        if not unchanged(page_path, page_bytes):
          batch.append((page_path, page_bytes))
        keep["pages"].add(name)
        keep["thumbs"].add(res["thumb"] + ".jpg")
        if res["display"]:
          keep["images"].add(res["display"]["key"] + ".jpg")
        result.thumbs_rendered += res["thumb_new"]
        result.thumbs_reused += not res["thumb_new"]
        if res["display"]:
          result.displays_rendered += res["display_new"]
          result.displays_reused += not res["display_new"]
        result.missing += bool(res["missing"])
        problems.extend(res["problems"])
        figures.append(b.figure(res))
        if gt_index is not None:
          m = res.get("match")
          if m is None:
            gt_tot["unmatched"] += res["job"]["gt_pos"] is None
          else:
            gt_tot["images"] += 1
            for key in ("tp", "fp", "fn", "ignored"):
              gt_tot[key] += getattr(m, key)
      atomic_write_many(batch)
      if progress:
        progress(min(c0 + CHUNK, len(shown)), len(shown))

  classes, hist_range = class_stats(index)
  t = index.table
  n_with = int(np.count_nonzero(np.diff(t.starts)))
  summary = [f"{len(images)} image(s)", f"{n_with} with instances", f"{len(t)} instance(s)",
             f"{len(classes)} class(es)", f"{len(errors)} skipped file(s)"]
  info = index.info
  if info.get("description"):
    summary.insert(0, str(info["description"]) + (f" (preset {info['preset']})" if info.get("preset") else ""))
  warnings = []
  if info.get("random_init"):
    warnings.append(str(info.get("note") or RANDOM_NOTE))
  if no_files:
    warnings.append(no_files[0].upper() + no_files[1:] + ".")
  elif result.missing:
    warnings.append(f"{result.missing} of the shown images are missing, unreadable or outside the images root; "
                    "their pages say which")
  sampling = None
  if len(shown) < len(images):
    sampling = (f"Showing {len(shown)} of {len(images)} images: a deterministic sample (the file names with the "
                f"smallest SHA-1 hashes; --max-images {max_images}). Class counts and histograms cover all "
                f"{len(images)} images.")
  gt_ctx = None
  if gt_index is not None:
    gt_ctx = dict(gt_tot, source=os.path.basename(os.fspath(gt_index.path)),
                  rule=f"Rule: mask IoU >= {match_lib.IOU_THRESHOLD} (box IoU for outputs without masks), "
                       "predictions taken in decreasing score each match the best unmatched ground truth of "
                       + ("any class" if class_agnostic else "the same class name") + "; crowd regions ignored.")
  ctx = {"title": f"zipjax gallery: {os.path.basename(os.path.abspath(run_dir))}",
         "source": os.path.basename(os.path.abspath(run_dir)), "summary": summary, "warnings": warnings, "problems": problems,
         "sampling": sampling, "classes": classes, "hist_range": hist_range, "gt": gt_ctx, "figures": figures,
         "errors": [dict(e, path=roots.shown(e["path"])) for e in errors], "errors_note": errors_problem,
         "version": VERSION}
  write_if_changed(result.index, site.index_html(ctx).encode("utf-8"))
  _prune(out, keep)
  result.seconds = time.perf_counter() - t0
  return result


__all__ = ["DEFAULT_IMAGE_SIZE", "DEFAULT_MAX_IMAGES", "DEFAULT_THUMB_SIZE", "GalleryResult", "gallery_hint",
           "ImageRoots", "build_gallery", "check_gallery_out", "is_gallery", "find_annotations", "image_roots",
           "records_source", "resolve_image", "sample_images", "gt_image_mapping", "class_stats"]
