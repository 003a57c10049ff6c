"""Detector training input: a COCO dataset -> augmented, fixed-shape batches through grain.

Pipeline (per process, grain's dataset API):

  `TrainSet` (records: image path, size, annotations; loaded and validated once)
    -> `MapDataset.source(records).shuffle(seed).repeat()` (a new permutation every epoch; endless)
    -> `ExampleAt` (this process's examples of every global batch, see below): decode the image
       (`zipjax/io/images.py`: EXIF, grayscale, 16-bit...), decode every mask (RLE or polygons, bounded by the
       image: `zipjax/io/geometry.py`),
       one random geometry applied to the image and to every mask, targets recomputed from the masks
    -> `.batch(G / P)` -> `.to_iter_dataset()` (thread prefetch) -> `.mp_prefetch()` (decoding worker
       processes, `data.workers`).

Geometry (`sample_geometry`, `apply_geometry`, `transform_masks`), in training: the longer image side is resized to
`S * scale` with `scale ~ U[min_scale, max_scale]` (large-scale jitter; the aspect ratio is kept), a random
`S x S` window is cropped where the resized image is larger, the result is flipped horizontally with
probability `hflip` and pasted into the top-left corner of a zero `S x S` canvas. Images are resampled
bilinearly (PIL), masks with nearest neighbour in exact integer arithmetic on the same pixel-centre convention
(`source_indices`; only the cropped window is computed), so a mask stays aligned with the pixels it covers.
Without augmentation (`train=False`) scale is 1 and there is no crop or flip.

Targets (the detector's batch contract, static shapes; `T = data.max_instances`, `Sm = S // mask_stride`):
  image uint8 [S, S, 3]; boxes float32 [T, 4] (cx, cy, w, h) / S, the exact box of the transformed
  full-resolution mask (x1 = last column + 1); labels int32 [T] (index into the query list: the dataset's
  categories in file order, or 0 in class-agnostic mode); masks bool [T, Sm, Sm] (a cell is on when at least
  half of its `stride x stride` pixels are), or with `data.soft_masks` float32 [T, Sm, Sm], the fraction of each
  cell the mask covers (thin parts narrower than a cell stay visible to the loss: the mask logits learn partial
  cover, and a box taken from a low-confidence contour keeps them); valid bool [T].
  Instances whose transformed mask has fewer than `data.min_area` pixels (at S) are dropped (cropped away or
  tiny); when more than T remain, the T largest are kept (ties: file order).

Annotations: `iscrowd: 1` ones are ignored; `score` is allowed (pseudo-labels) and annotations scoring below
`data.min_score` are dropped; every kept annotation needs a segmentation (the detector learns masks).
Images without any kept annotation are skipped unless `data.keep_empty`.

`data.fraction` in (0, 1] keeps a seeded subset of the images for label-efficient training: the images sorted
by id are permuted by `numpy.random.default_rng(data.fraction_seed)` and the first `max(1, round(fraction * N))`
are kept (so with one seed, a smaller fraction is a subset of a larger one). The subset is taken before empty
images are dropped.

Determinism: global example g of the stream is a function of (records, seed, g) alone: its record comes from the
per-epoch permutation, its augmentation from `numpy.random.default_rng([seed, g])`. Global batch j holds
examples [j G, (j + 1) G); process p of P decodes the slice [j G + p G / P, j G + (p + 1) G / P). So the batches
are the same whatever the number of processes and decoding workers. Resuming: the trainer checkpoints the
grain iterator state (`grain.python.PyGrainCheckpointSave`, orbax); since the dataset is indexable, the
stream can also restart at any batch index (`make_iterator(start=...)`).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import sys

import grain
import numpy as np
from PIL import Image
from absl import flags
from tqdm import tqdm

from zipjax.errors import InputError
from zipjax.io import coco as coco_io
from zipjax.io import images as images_io
from zipjax.io.geometry import decode_mask


# ------------------------------------------------------------------------------------------------ dataset
@dataclasses.dataclass
class TrainSet:
  """A validated COCO training set.

  Attributes:
    records: one dict per image: `path`, `image_id`, `height`, `width`, `anns` (list of `(label, segmentation)`
      with label an index into `names`).
    names: query names: the category names in file order, or `["object"]` in class-agnostic mode.
    source: the annotation file path.
    digest: a short hash of the records (image ids, file names, labels, segmentations) and of the query names,
      checked when resuming.
    skipped: `[(path, reason)]` of the images left out by `load_train_set(check=True, skip_bad=True)`.
  """
  records: list
  names: list
  source: str
  digest: str
  skipped: list = dataclasses.field(default_factory=list)


def check_images(records: list, progress: bool = False, threads: int | None = None) -> list:
  """`[(path, reason)]` of the records (`path`, `height`, `width`) whose image file is missing, not an image
  or not of the annotated size, from the file headers (`zipjax.io.images.probe_image`), read by a thread pool
  with a progress bar, in record order."""


  def problem(r):
    try:
      w, h = images_io.probe_image(r["path"])
    except InputError as e:
      return str(e)
    if (h, w) != (r["height"], r["width"]):
      return f"the image is {w}x{h}, the annotation file says {r['width']}x{r['height']} (width x height)"
    return None

  n = threads or min(32, 4 * (os.cpu_count() or 1))
  out = []
  with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool, \
      tqdm(total=len(records), unit="img", desc="checking images", disable=not progress or None,
           file=sys.stderr) as bar:
    for r, why in zip(records, pool.map(problem, records)):
      bar.update(1)
      if why:
        out.append((r["path"], why))
  return out


def bad_images_message(source: str, what: str, bad: list, total: int, shown: int = 5) -> str:
  """One line naming the bad images of a `what` ('training', 'validation') set and how to go on."""
  listed = "; ".join(f"{p}: {why}" for p, why in bad[:shown])
  more = f"; and {len(bad) - shown} more" if len(bad) > shown else ""
  return (f"{source}: {len(bad)} of {total} {what} image(s) cannot be used ({listed}{more}); fix or remove them, "
          "or pass --skip-bad-images to leave them out")


def load_train_set(ann, images_root: str, *, class_agnostic: bool = False, fraction: float = 1.0,
                   fraction_seed: int = 0, min_score: float = 0.0, keep_empty: bool = False, check: bool = False,
                   skip_bad: bool = False, progress: bool = False) -> TrainSet:
  """Reads and validates a COCO dataset for training (see the module docstring for the rules).

  Args:
    ann: path of the COCO json (or the dict itself).
    images_root: folder the images' `file_name`s are relative to.
    class_agnostic: one query, "object", for every category.
    fraction: keep this seeded fraction of the images, in (0, 1].
    fraction_seed: seed of the subset.
    min_score: drop annotations whose `score` is below this (annotations without a score are kept).
    keep_empty: keep images without annotations (all their predictions are background).
    check: check every image up front (`check_images`: exists, is an image, has the annotated size), so that
      a bad file stops the run before step 0, not at the step that meets it.
    skip_bad: with `check`, leave the bad images out (listed in `TrainSet.skipped`) instead of refusing.
    progress: a progress bar for the check.

  Raises:
    InputError: a malformed dataset (the message names the file and the record), no images left, an image
      without `file_name`, an annotation without segmentation, a bad fraction, bad image files (`check`,
      one message listing them).
  """
  if not 0.0 < float(fraction) <= 1.0:
    raise InputError(f"data.fraction must be in (0, 1], got {fraction}")
  data, source = coco_io.load_json(ann, "training annotation")
  gt = coco_io.load_ground_truth(data, source)  # validation: ids, categories, segmentations, boxes
  names = ["object"] if class_agnostic else [c["name"] for c in gt.categories]
  label_of = {c["id"]: (0 if class_agnostic else k) for k, c in enumerate(gt.categories)}
  raw = data["annotations"]
  anns_of: dict = {i: [] for i in gt.images}
  for k, a in enumerate(gt.annotations):  # same order as the file's annotations
    if a["iscrowd"]:
      continue
    score = raw[k].get("score")
    if score is not None:
      if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
        raise InputError(f"{source}: annotation {k} (image_id {a['image_id']}): score must be a finite number, "
                         f"got {score!r}")
      if score < min_score:
        continue
    if "segmentation" not in a:
      raise InputError(f"{source}: annotation {k} (image_id {a['image_id']}): no segmentation (the detector "
                       "trains masks; box-only annotations are not supported)")
    anns_of[a["image_id"]].append((label_of[a["category_id"]], a["segmentation"]))
  ids = sorted(gt.images)
  if fraction < 1.0:
    order = np.random.default_rng(int(fraction_seed)).permutation(len(ids))
    keep = max(1, int(round(float(fraction) * len(ids))))
    ids = sorted(ids[i] for i in order[:keep])
  records = []
  for i in ids:
    img = gt.images[i]
    if "file_name" not in img:
      raise InputError(f"{source}: image {i} has no file_name")
    if not anns_of[i] and not keep_empty:
      continue
    records.append({"path": os.path.join(os.fspath(images_root), img["file_name"]), "image_id": i,
                    "height": img["height"], "width": img["width"], "anns": anns_of[i]})
  skipped = []
  if check:
    bad = check_images(records, progress=progress)
    if bad and not skip_bad:
      raise InputError(bad_images_message(source, "training", bad, len(records)))
    skipped = bad
    gone = {p for p, _ in bad}
    records = [r for r in records if r["path"] not in gone]
  if not records:
    raise InputError(f"{source}: no training images left (fraction {fraction}, min_score {min_score}, "
                     f"keep_empty {keep_empty})")
  h = hashlib.sha256(json.dumps(names).encode())
  for r in records:
    name = gt.images[r["image_id"]]["file_name"]  # not the root: the images may move between restarts
    h.update(json.dumps([r["image_id"], name, r["anns"]], sort_keys=True).encode())
  return TrainSet(records=records, names=names, source=source, digest=h.hexdigest()[:16], skipped=skipped)


# ----------------------------------------------------------------------------------------------- geometry
@dataclasses.dataclass(frozen=True)
class Geometry:
  """One image's transform: resize to (rh, rw), crop the window at (y0, x0) of at most S x S, flip, pad.

  Attributes:
    rh: resized height.
    rw: resized width.
    y0: crop top in the resized image.
    x0: crop left in the resized image.
    flip: horizontal flip after the crop.
    size: S, the output canvas side.
  """
  rh: int
  rw: int
  y0: int
  x0: int
  flip: bool
  size: int

  @property
  def out_h(self) -> int:
    return min(self.rh - self.y0, self.size)

  @property
  def out_w(self) -> int:
    return min(self.rw - self.x0, self.size)


@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """Static input settings (a hashable copy of the relevant `config.data` / `config.model` fields).

  Attributes:
    image_size: S, the square canvas side.
    mask_stride: target masks are at S // mask_stride.
    max_instances: T, targets per image (padded with `valid`).
    train: random geometry (True) or a plain resize of the longer side to S (False).
    min_scale: smallest longer-side scale relative to S (training).
    max_scale: largest longer-side scale relative to S (training).
    hflip: probability of a horizontal flip (training).
    min_area: smallest transformed mask area in pixels at S.
    soft_masks: float cover fractions as mask targets instead of the half-cover vote.
  """
  image_size: int
  mask_stride: int
  max_instances: int
  train: bool = True
  min_scale: float = 0.5
  max_scale: float = 1.5
  hflip: float = 0.5
  min_area: int = 4
  soft_masks: bool = False

  def __post_init__(self):
    if self.image_size % self.mask_stride:
      raise InputError(f"image size {self.image_size} is not a multiple of mask_stride {self.mask_stride}")
    if not 0 < self.min_scale <= self.max_scale:
      raise InputError(f"need 0 < min_scale <= max_scale, got {self.min_scale}, {self.max_scale}")


def sample_geometry(h: int, w: int, p: AugmentParams, rng: np.random.Generator | None) -> Geometry:
  """The random transform of an h x w image (the identity resize of the longer side to S without rng/train)."""
  s = p.image_size
  scale = float(rng.uniform(p.min_scale, p.max_scale)) if (p.train and rng is not None) else 1.0
  f = s * scale / max(h, w)
  rh, rw = max(1, int(round(h * f))), max(1, int(round(w * f)))
  if p.train and rng is not None:
    y0 = int(rng.integers(0, max(rh - s, 0) + 1))
    x0 = int(rng.integers(0, max(rw - s, 0) + 1))
    flip = bool(rng.random() < p.hflip)
  else:
    y0 = x0 = 0
    flip = False
  return Geometry(rh=rh, rw=rw, y0=y0, x0=x0, flip=flip, size=s)


def apply_geometry(image: np.ndarray, g: Geometry) -> np.ndarray:
  """uint8 [H, W, 3] -> [S, S, 3]: bilinear resize (PIL), crop, flip, zero-pad bottom/right."""
  img = Image.fromarray(image)
  if img.size != (g.rw, g.rh):
    img = img.resize((g.rw, g.rh), Image.BILINEAR)
  out = np.asarray(img.crop((g.x0, g.y0, g.x0 + g.out_w, g.y0 + g.out_h)))
  if g.flip:
    out = out[:, ::-1]
  canvas = np.zeros((g.size, g.size) + out.shape[2:], image.dtype)
  canvas[:out.shape[0], :out.shape[1]] = out
  return canvas


def source_indices(out_len: int, start: int, resized: int, original: int, flip: bool = False) -> np.ndarray:
  """Nearest-neighbour source index of each output pixel along one axis (exact integer arithmetic).

  Output pixel k (after the crop at `start`, and the flip) is resized pixel `start + k` (or the mirrored one),
  whose centre maps to `floor((2 r + 1) * original / (2 * resized))` in the original image: the pixel-centre
  convention of PIL's bilinear resize, so masks stay aligned with the resampled image.
  """
  r = start + np.arange(out_len, dtype=np.int64)  # [out_len]
  if flip:
    r = r[::-1]
  return np.minimum((2 * r + 1) * original // (2 * resized), original - 1)


def transform_masks(masks: np.ndarray, g: Geometry) -> np.ndarray:
  """[n, H, W] masks -> bool [n, S, S] with the geometry of `apply_geometry` (nearest neighbour)."""
  n, h, w = masks.shape
  ys = source_indices(g.out_h, g.y0, g.rh, h)  # [out_h]
  xs = source_indices(g.out_w, g.x0, g.rw, w, g.flip)  # [out_w]
  out = np.zeros((n, g.size, g.size), bool)
  out[:, :g.out_h, :g.out_w] = masks[:, ys][:, :, xs]  # [n, out_h, out_w]
  return out


def box_from_mask(mask: np.ndarray) -> np.ndarray:
  """bool [S, S] (non-empty) -> float32 [x0, y0, x1, y1] pixels, x1/y1 exclusive."""
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def make_targets(image: np.ndarray, anns: list, p: AugmentParams, rng: np.random.Generator | None,
                 full_masks: bool = False) -> dict:
  """One example: decoded image [H, W, 3] + `[(label, segmentation)]` -> the fixed-shape target dict.

  With `full_masks`, also returns `full_masks` bool [T, S, S] (the transformed masks at S, for tests).
  """
  h, w = image.shape[:2]
  g = sample_geometry(h, w, p, rng)
  s, t, stride = p.image_size, p.max_instances, p.mask_stride
  out_img = apply_geometry(image, g)
  kept = []
  for label, seg in anns:
    m = transform_masks(decode_mask(seg, h, w)[None], g)[0]  # [S, S]
    area = int(m.sum())
    if area >= max(p.min_area, 1):
      kept.append((area, len(kept), label, m))
  if len(kept) > t:  # the T largest, ties in file order, then back to file order
    kept = sorted(sorted(kept, key=lambda k: (-k[0], k[1]))[:t], key=lambda k: k[1])
  boxes = np.zeros((t, 4), np.float32)
  labels = np.zeros((t,), np.int32)
  sm = s // stride
  masks = np.zeros((t, sm, sm), np.float32 if p.soft_masks else bool)
  valid = np.zeros((t,), bool)
  full = np.zeros((t, s, s), bool) if full_masks else None
  for j, (_, _, label, m) in enumerate(kept):
    x0, y0, x1, y1 = box_from_mask(m)
    boxes[j] = [(x0 + x1) / 2 / s, (y0 + y1) / 2 / s, (x1 - x0) / s, (y1 - y0) / s]
    labels[j] = label
    cells = m.reshape(sm, stride, sm, stride).mean(axis=(1, 3))  # [Sm, Sm]
    masks[j] = cells if p.soft_masks else cells >= 0.5
    valid[j] = True
    if full is not None:
      full[j] = m
  out = {"image": out_img, "boxes": boxes, "labels": labels, "masks": masks, "valid": valid}
  if full is not None:
    out["full_masks"] = full
  return out


def _decode(element) -> np.ndarray:
  try:
    image = images_io.load_image(element["path"], min_side=1, max_side=1 << 16, max_aspect=1e9)
  except InputError as e:
    raise InputError(f"{element['path']}: {e}") from None
  if image.shape[:2] != (element["height"], element["width"]):
    raise InputError(f"{element['path']}: decoded size {image.shape[1]}x{image.shape[0]} does not match the "
                     f"annotation file's {element['width']}x{element['height']} (width x height)")
  return image


class ExampleAt(grain.transforms.Map):
  """grain map: this process's example number k -> the target dict of global example g(k).

  Global example g of the stream is record `order[g]` (the records shuffled per epoch from `seed`), augmented
  with `numpy.random.default_rng([seed, g])`. Process p of P takes, for its local batch j, the global examples
  [j G + p b, j G + (p + 1) b) with G the global batch and b = G / P, so the global batch j is the same
  examples in the same order whatever the number of processes.

  Attributes:
    order: the shuffled, repeated record dataset (grain MapDataset).
    params: geometry and target settings.
    seed: augmentation seed.
    process_index: p.
    local_batch: b.
    global_batch: G.
  """

  def __init__(self, order, params: AugmentParams, seed: int, process_index: int, local_batch: int,
               global_batch: int):
    self.order = order
    self.params = params
    self.seed = int(seed)
    self.process_index = int(process_index)
    self.local_batch = int(local_batch)
    self.global_batch = int(global_batch)

  def global_index(self, k: int) -> int:
    return (k // self.local_batch) * self.global_batch + self.process_index * self.local_batch + k % self.local_batch

  def map(self, element):
    g = self.global_index(int(element))
    record = self.order[g]
    rng = np.random.default_rng([self.seed, g])
    return make_targets(_decode(record), record["anns"], self.params, rng)


# ------------------------------------------------------------------------------------------------ loader
def augment_params(config, train: bool = True) -> AugmentParams:
  """AugmentParams from `config.data` and the model's input size / mask stride."""
  d = config.data
  return AugmentParams(image_size=int(config.model.input_size), mask_stride=int(config.model.mask_stride),
                       max_instances=int(d.max_instances), train=train, min_scale=float(d.min_scale),
                       max_scale=float(d.max_scale), hflip=float(d.hflip), min_area=int(d.min_area),
                       soft_masks=bool(d.get("soft_masks", False)))


def make_dataset(train_set: TrainSet, params: AugmentParams, global_batch: int, seed: int, process_index: int = 0,
                 process_count: int = 1) -> grain.MapDataset:
  """The endless MapDataset of this process's batches: element j = local batch j (dict of stacked arrays).

  Args:
    train_set: the records.
    params: geometry and target settings.
    global_batch: G, examples per step over all processes (a multiple of `process_count`).
    seed: order and augmentation seed (0 <= seed < 2**32).
    process_index: this process's index p.
    process_count: number of processes P.
  """
  if global_batch % process_count:
    raise InputError(f"batch size {global_batch} is not a multiple of the process count {process_count}")
  if not 0 <= int(seed) < 2 ** 32:
    raise InputError(f"data seed must be in [0, 2**32), got {seed}")
  local = global_batch // process_count
  order = grain.MapDataset.source(train_set.records).shuffle(seed=int(seed)).repeat()
  pick = ExampleAt(order, params, seed, process_index, local, global_batch)
  return grain.MapDataset.range(sys.maxsize).map(pick).batch(local, drop_remainder=True)


def make_iterator(dataset: grain.MapDataset, workers: int = 0, threads: int = 2, start: int = 0):
  """A checkpointable grain iterator over `dataset[start:]`.

  `workers` > 0 decodes in that many processes (`mp_prefetch`: worker i makes batches i, i + workers, ...
  and the output is interleaved back in order, so the batches do not depend on it); `threads` prefetch in
  each process. The iterator's `get_state()`/`set_state()` (what `grain.python.PyGrainCheckpointSave`
  saves) depends on `workers`; the batch index `start` does not.
  """
  ds = dataset[int(start):] if start else dataset
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(int(threads), 1), prefetch_buffer_size=max(
      2 * int(threads), 1)))
  if workers:
    if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags; zipjax has no absl main
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(workers)))
  return iter(it)


__all__ = ["TrainSet", "Geometry", "AugmentParams", "ExampleAt", "load_train_set", "check_images",
           "bad_images_message", "sample_geometry",
           "apply_geometry", "source_indices", "transform_masks", "decode_mask", "box_from_mask", "make_targets",
           "augment_params", "make_dataset", "make_iterator"]
