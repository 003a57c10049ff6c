"""Output writer cost per flush as a run grows: the old `ResultWriter` (rewrites results.json + annotations.json
in full after every batch) against the shard writer of zipjax/io/shards.py (one shard file per batch, one
streaming merge at the end), on synthetic images with 10 masks each.

  python bench/writer.py                   # 2,000 images, batches of 4 (issue 12 item 6)
  python bench/writer.py --images 500      # quicker

Prints, at checkpoints, the seconds of the last flush and the total so far for each writer, and the ratio. The
old writer's flush time grows with the images already written (quadratic total); the shard writer's stays flat
(linear total), plus one merge.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path = [p for p in sys.path if os.path.abspath(p) != os.path.dirname(os.path.abspath(__file__))]

from zipjax.io.atomic import atomic_write_json  # noqa: E402  (after the path is set)
from zipjax.io.geometry import encode_rle, rle_area  # noqa: E402
from zipjax.io.paths import json_path  # noqa: E402


class ResultWriter:
  """The old writer (removed from zipjax): collects per-image instances and rewrites the whole output files on
  every flush.

  Attributes:
    out_dir: the output folder.
    names: class names (category ids are 1 + their index).
    info: the `info` block of annotations.json.
  """

  def __init__(self, out_dir: str, names: list[str], info: dict):
    self.out_dir = out_dir
    self.names = list(names)
    self.info = dict(info)
    self.images: list[dict] = []
    self.annotations: list[dict] = []
    self.results: list[dict] = []
    self.errors: list[dict] = []
    os.makedirs(out_dir, exist_ok=True)

  def add_image(self, image_id: int, path: str, image: np.ndarray, instances: list[dict]) -> None:
    h, w = image.shape[:2]
    text, escaped = json_path(path)
    self.images.append({"id": image_id, "file_name": text, "height": int(h), "width": int(w),
                        **({"file_name_escaped": True} if escaped else {})})
    for inst in instances:
      rle = encode_rle(inst["mask"])
      x0, y0, x1, y1 = inst["box"]
      bbox = [float(x0), float(y0), float(max(x1 - x0, 0.0)), float(max(y1 - y0, 0.0))]
      cat = inst["category"] + 1
      score = round(float(inst["score"]), 6)
      self.results.append({"image_id": image_id, "category_id": cat, "category_name": self.names[cat - 1],
                           "segmentation": rle, "bbox": bbox, "score": score})
      self.annotations.append({"id": len(self.annotations) + 1, "image_id": image_id, "category_id": cat,
                               "segmentation": rle, "bbox": bbox, "area": rle_area(rle),
                               "iscrowd": 0, "score": score})

  def flush(self) -> None:
    """Writes results.json, annotations.json and errors.json (each atomically)."""
    cats = [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(self.names)]
    atomic_write_json(os.path.join(self.out_dir, "results.json"), self.results, indent=None)
    atomic_write_json(os.path.join(self.out_dir, "annotations.json"),
                      {"info": self.info, "images": self.images, "annotations": self.annotations,
                       "categories": cats}, indent=None)
    atomic_write_json(os.path.join(self.out_dir, "errors.json"), self.errors)


def synthetic(n: int, masks: int, seed: int = 0):
  """n ((H, W), instances) with `masks` bool-mask instances each (textured rectangles, 320x240); both writers
  encode the masks (the same work), so the difference is what they write."""
  rng = np.random.default_rng(seed)
  h, w = 240, 320
  out = []
  for _ in range(n):
    insts = []
    for j in range(masks):
      m = np.zeros((h, w), np.uint8)
      y0, x0 = rng.integers(0, h - 20), rng.integers(0, w - 20)
      y1, x1 = y0 + rng.integers(10, h - y0), x0 + rng.integers(10, w - x0)
      m[y0:y1, x0:x1] = 1
      m[rng.random((h, w)) < 0.01] ^= 1  # some texture, so the RLE strings are realistic lengths
      insts.append({"category": j % 3, "score": float(rng.random()),
                    "box": [float(x0), float(y0), float(x1), float(y1)], "mask": m.astype(bool)})
    out.append(((h, w), insts))
  return out


def run(n_images: int, batch: int, masks: int) -> None:
  from zipjax.io.shards import RunDir, image_record  # pylint: disable=import-outside-toplevel
  data = synthetic(n_images, masks)
  names = ["a", "b", "c"]
  checkpoints = sorted({min(n_images, max(batch, c - c % batch))
                        for c in (n_images // 8, n_images // 4, n_images // 2, n_images)})
  tmp = tempfile.mkdtemp(prefix="zipjax-bench-writer-")
  rows = []
  try:
    old = ResultWriter(os.path.join(tmp, "old"), names, {"description": "bench"})
    rd = RunDir(os.path.join(tmp, "new"))
    writer = rd.writer(shard_size=1 << 30)
    t_old = t_new = 0.0
    placeholder = np.zeros((240, 320, 3), np.uint8)
    for s in range(0, n_images, batch):
      chunk = data[s:s + batch]
      t0 = time.perf_counter()
      for j, (_, insts) in enumerate(chunk):
        old.add_image(s + j + 1, f"img{s + j:06d}.png", placeholder, insts)
      old.flush()
      d_old = time.perf_counter() - t0
      t0 = time.perf_counter()
      for j, ((h, w), insts) in enumerate(chunk):
        writer.add(image_record(f"{s + j:09d}", f"img{s + j:06d}.png", h, w, insts, image_id=s + j + 1))
      writer.flush()
      d_new = time.perf_counter() - t0
      t_old += d_old
      t_new += d_new
      done = s + len(chunk)
      if done in checkpoints or done == n_images:
        rows.append((done, d_old, t_old, d_new, t_new))
    t0 = time.perf_counter()
    rd.merge({"description": "bench"}, names, lambda st: {}, results=True)
    merge = time.perf_counter() - t0
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(f"writer flush cost, batches of {batch} images with {masks} masks each (seconds)")
  print(f"{'images':>7} | {'old: last flush':>15} {'old: total':>10} | {'new: last flush':>15} {'new: total':>10} | "
        f"{'total old/new':>13}")
  for done, d_old, t_old, d_new, t_new in rows:
    print(f"{done:7d} | {d_old:15.4f} {t_old:10.2f} | {d_new:15.4f} {t_new:10.2f} | {t_old / t_new:13.1f}")
  print(f"new writer: final streaming merge of {n_images} images {merge:.2f}s -> total {t_new + merge:.2f}s vs "
        f"old {rows[-1][2]:.2f}s ({rows[-1][2] / (t_new + merge):.1f}x)")
  last = rows[-1]
  first = rows[0]
  growth_old = (last[1] / first[1]) if first[1] > 0 else float("nan")
  growth_new = (last[3] / first[3]) if first[3] > 0 else float("nan")
  print(f"last-flush growth from {first[0]} to {last[0]} images: old x{growth_old:.1f}, new x{growth_new:.1f} "
        f"(flat = linear total cost)")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=2000)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--masks", type=int, default=10)
  a = p.parse_args(argv)
  run(a.images, a.batch, a.masks)


if __name__ == "__main__":
  main()
