"""A synthetic instance-segmentation dataset: named shapes with exact masks on textured backgrounds.

    python -m zipjax.data.synthetic --out DIR --num-images N [--seed S] [--drop-fraction F] [--jitter J] [--score]

writes `DIR/images/000001.png ...` and `DIR/annotations.json`, a COCO dataset (compressed RLE masks, `bbox`
and `area` computed from the masks with pycocotools, `iscrowd` 0, categories with names). Used by the tests,
smoke runs and benches of the detector (`zipjax train`), and by the self-training tests as a stand-in for
pseudo-labels (`drop_fraction`, `jitter`, `score`).

How an image is made (`render_image`):
  - size: width and height drawn in [min_side, max_side];
  - background: a smooth random colour field (a sum of a few random low-frequency sinusoids per channel) plus
    pixel noise, in muted colours;
  - objects (between min_objects and max_objects): a category among `CATEGORIES`, a size, a position, a
    rotation and a saturated fill colour with its own stripe/noise texture. Shapes are rasterised with PIL
    (no antialiasing), so the painted pixels are exactly the object's full mask. Objects are painted in
    order; the annotation of an object is its *visible* part (its mask minus everything painted over it
    later). A new object is retried (up to 20 times) when it would hide more than `max_occlusion` of an
    earlier object's visible pixels or leave one under `min_area` visible pixels, so objects touch and overlap
    but stay identifiable.

Determinism: image i is a function of (seed, i) alone (`numpy.random.default_rng([seed, i])`), so a dataset of
N images is the first N images of any larger one with the same seed. The label corruptions use their own
stream (`default_rng([seed, i, 1])`): the same seed with `drop_fraction`/`jitter`/`score` gives the same
images with corrupted annotations, next to a clean copy made with the defaults.

Label corruptions (for self-training experiments):
  - `drop_fraction`: each object's annotation is dropped with this probability (the pixels stay in the image);
  - `jitter`: each mask is shifted by an integer offset drawn uniformly within +-jitter times the object's box
    width (x) and height (y), clipped at the image border; `bbox` and `area` follow the shifted mask;
  - `score`: every annotation gets a `score` in [0.3, 1), lower for larger jitter offsets.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import math
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

from zipjax.errors import InputError
from zipjax.io.geometry import encode_rle, rle_area, rle_bbox
from zipjax.io.atomic import atomic_write_bytes, atomic_write_json

CATEGORIES = ("circle", "rectangle", "triangle", "ellipse", "star")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """How the images and labels are drawn (see the module docstring).

  Attributes:
    min_side: smallest image width / height in pixels.
    max_side: largest image width / height in pixels.
    min_objects: fewest objects per image.
    max_objects: most objects per image (fewer when placement fails).
    min_object_frac: smallest object size (diameter) as a fraction of the shorter image side.
    max_object_frac: largest object size as a fraction of the shorter image side.
    min_area: fewest visible pixels of an object.
    max_occlusion: largest fraction of an earlier object's visible pixels a new object may hide.
    categories: category names, a subset of `CATEGORIES` (ids 1.. in this order).
    drop_fraction: probability of dropping an object's annotation.
    jitter: mask shift range as a fraction of the object's box size.
    score: add a `score` to every annotation.
  """
  min_side: int = 96
  max_side: int = 160
  min_objects: int = 1
  max_objects: int = 5
  min_object_frac: float = 0.18
  max_object_frac: float = 0.45
  min_area: int = 40
  max_occlusion: float = 0.5
  categories: tuple = CATEGORIES
  drop_fraction: float = 0.0
  jitter: float = 0.0
  score: bool = False

  def check(self) -> None:
    if not 8 <= self.min_side <= self.max_side:
      raise InputError(f"synthetic: need 8 <= min_side <= max_side, got {self.min_side}, {self.max_side}")
    if not 0 <= self.min_objects <= self.max_objects:
      raise InputError(f"synthetic: need 0 <= min_objects <= max_objects, got {self.min_objects}, "
                       f"{self.max_objects}")
    if not 0 < self.min_object_frac <= self.max_object_frac <= 1:
      raise InputError("synthetic: need 0 < min_object_frac <= max_object_frac <= 1")
    unknown = [c for c in self.categories if c not in CATEGORIES]
    if unknown or not self.categories or len(set(self.categories)) != len(self.categories):
      raise InputError(f"synthetic: categories must be distinct names among {CATEGORIES}, got "
                       f"{self.categories}")
    if not 0 <= self.drop_fraction <= 1:
      raise InputError(f"synthetic: drop_fraction must be in [0, 1], got {self.drop_fraction}")
    if not 0 <= self.jitter <= 1:
      raise InputError(f"synthetic: jitter must be in [0, 1], got {self.jitter}")


# ------------------------------------------------------------------------------------------------ drawing
def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """float32 [H, W, 3] in 0..255: smooth random colour field + pixel noise, muted."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)  # [H, W] each
  img = np.empty((h, w, 3), np.float32)
  base = rng.uniform(70, 170, 3)
  for c in range(3):
    field = np.zeros((h, w), np.float32)
    for _ in range(3):
      fx, fy = rng.uniform(-3, 3, 2) * 2 * math.pi / np.array([w, h])
      field += rng.uniform(8, 25) * np.sin(fx * xx + fy * yy + rng.uniform(0, 2 * math.pi))
    img[..., c] = base[c] + field
  img += rng.normal(0, 8, (h, w, 3))
  return img


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """float32 [H, W, 3]: a saturated colour with stripes or noise (the fill of one object)."""
  hue = rng.uniform(0, 1)
  rgb = np.array([abs(hue * 6 - 3) - 1, 2 - abs(hue * 6 - 2), 2 - abs(hue * 6 - 4)]).clip(0, 1)
  colour = 40 + 200 * rgb
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)  # [H, W] each
  if rng.random() < 0.5:
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(4, 10)
    stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * math.pi / period)  # [H, W]
    tex = colour[None, None] * (0.8 + 0.2 * stripes[..., None])
  else:
    tex = colour[None, None] + rng.normal(0, 12, (h, w, 3))
  return tex.astype(np.float32)


def _shape_mask(category: str, rng: np.random.Generator, h: int, w: int, size: float) -> np.ndarray:
  """bool [H, W]: a full (unoccluded) shape of about `size` pixels across at a random position."""
  cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
  rot = rng.uniform(0, 2 * math.pi)
  r = size / 2
  img = Image.new("L", (w, h), 0)
  draw = ImageDraw.Draw(img)

  def poly(points):
    c, s = math.cos(rot), math.sin(rot)
    draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in points], fill=1)

  if category == "circle":
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
  elif category == "rectangle":
    aspect = rng.uniform(0.45, 0.8)
    poly([(-r, -r * aspect), (r, -r * aspect), (r, r * aspect), (-r, r * aspect)])
  elif category == "triangle":
    poly([(r * math.cos(a), r * math.sin(a)) for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)])
  elif category == "ellipse":
    aspect = rng.uniform(0.35, 0.6)
    n = 48
    poly([(r * math.cos(2 * math.pi * k / n), r * aspect * math.sin(2 * math.pi * k / n)) for k in range(n)])
  elif category == "star":
    inner = rng.uniform(0.4, 0.5)
    poly([((r if k % 2 == 0 else r * inner) * math.cos(math.pi * k / 5),
           (r if k % 2 == 0 else r * inner) * math.sin(math.pi * k / 5)) for k in range(10)])
  else:
    raise InputError(f"synthetic: unknown category {category!r}")
  return np.asarray(img, dtype=bool)


def render_image(seed: int, index: int, config: SyntheticConfig = SyntheticConfig()):
  """Image `index` of the dataset with `seed`.

  Returns:
    `(image uint8 [H, W, 3], objects)`, objects = `[(category index, visible mask bool [H, W])]` in painting
    order (clean labels; corruptions are applied by `annotate`).
  """
  rng = np.random.default_rng([seed, index])
  w = int(rng.integers(config.min_side, config.max_side + 1))
  h = int(rng.integers(config.min_side, config.max_side + 1))
  canvas = _background(rng, h, w)
  n_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
  visible: list[np.ndarray] = []
  cats: list[int] = []
  short = min(h, w)
  for _ in range(n_objects):
    for _attempt in range(20):
      cat = int(rng.integers(len(config.categories)))
      size = rng.uniform(config.min_object_frac, config.max_object_frac) * short
      full = _shape_mask(config.categories[cat], rng, h, w, size)
      if full.sum() < config.min_area:
        continue
      ok = all((v & ~full).sum() >= config.min_area and (v & full).sum() <= config.max_occlusion * v.sum()
               for v in visible)
      if ok:
        break
    else:
      continue  # no acceptable placement for this object: the image gets fewer objects
    canvas[full] = _texture(rng, h, w)[full]
    visible = [v & ~full for v in visible]
    visible.append(full)
    cats.append(cat)
  image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
  return image, list(zip(cats, visible))


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
  out = np.zeros_like(mask)
  h, w = mask.shape
  ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
  xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
  out[yd, xd] = mask[ys, xs]
  return out


def annotate(seed: int, index: int, objects, config: SyntheticConfig = SyntheticConfig()) -> list[dict]:
  """COCO annotation records (without `id`/`image_id`) of one image's objects, corruptions applied."""
  rng = np.random.default_rng([seed, index, 1])
  out = []
  for cat, mask in objects:
    drop = rng.random() < config.drop_fraction
    bx, by, bw, bh = _bbox(mask)
    dx = int(round(rng.uniform(-config.jitter, config.jitter) * bw))
    dy = int(round(rng.uniform(-config.jitter, config.jitter) * bh))
    score = rng.uniform(0.3, 1.0)
    if drop:
      continue
    m = _shift(mask, dy, dx) if (dx or dy) else mask
    if not m.any():
      continue
    rle = encode_rle(m)
    rec = {"category_id": cat + 1,
           "segmentation": rle,
           "area": rle_area(rle),
           "bbox": rle_bbox(rle),
           "iscrowd": 0}
    if config.score:
      offset = (abs(dx) / max(bw, 1) + abs(dy) / max(bh, 1)) / 2
      rec["score"] = round(float(score * (1.0 - min(offset, 0.5))), 6)
    out.append(rec)
  return out


def _bbox(mask: np.ndarray):
  ys, xs = np.nonzero(mask)
  return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def png_bytes(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image, "RGB").save(buf, format="PNG")
  return buf.getvalue()


def generate(out_dir, num_images: int, seed: int = 0, config: SyntheticConfig | None = None,
             **overrides) -> dict:
  """Writes `out_dir/images/%06d.png` and `out_dir/annotations.json` (atomically); returns the COCO dict.

  Args:
    out_dir: output folder (created).
    num_images: number of images (>= 1).
    seed: dataset seed.
    config: drawing/label options; `overrides` replace its fields (e.g. `drop_fraction=0.3`).
  """
  config = dataclasses.replace(config or SyntheticConfig(), **overrides)
  if overrides.get("categories") is not None:
    config = dataclasses.replace(config, categories=tuple(config.categories))
  config.check()
  if num_images < 1:
    raise InputError(f"synthetic: num_images must be >= 1, got {num_images}")
  out_dir = os.fspath(out_dir)
  images, annotations = [], []
  for i in range(num_images):
    image, objects = render_image(seed, i, config)
    name = f"{i + 1:06d}.png"
    atomic_write_bytes(os.path.join(out_dir, "images", name), png_bytes(image))
    images.append({"id": i + 1, "file_name": name, "height": int(image.shape[0]), "width": int(image.shape[1])})
    for rec in annotate(seed, i, objects, config):
      annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **rec})
  info = {"description": "zipjax synthetic shapes", "seed": int(seed),
          "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}}
  data = {"info": info, "images": images, "annotations": annotations,
          "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(config.categories)]}
  atomic_write_json(os.path.join(out_dir, "annotations.json"), data, indent=None)
  return data


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m zipjax.data.synthetic", description=__doc__.splitlines()[0],
                              epilog="Writes DIR/images/*.png and DIR/annotations.json (COCO, RLE masks).")
  p.add_argument("--out", required=True, metavar="DIR")
  p.add_argument("--num-images", type=int, required=True, metavar="N")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--min-side", type=int, default=SyntheticConfig.min_side)
  p.add_argument("--max-side", type=int, default=SyntheticConfig.max_side)
  p.add_argument("--min-objects", type=int, default=SyntheticConfig.min_objects)
  p.add_argument("--max-objects", type=int, default=SyntheticConfig.max_objects)
  p.add_argument("--min-object-frac", type=float, default=SyntheticConfig.min_object_frac,
                 help="smallest object size / shorter image side")
  p.add_argument("--max-object-frac", type=float, default=SyntheticConfig.max_object_frac,
                 help="largest object size / shorter image side")
  p.add_argument("--min-area", type=int, default=SyntheticConfig.min_area, help="fewest visible pixels per object")
  p.add_argument("--categories", default=",".join(CATEGORIES), help="comma-separated subset of " + ",".join(
      CATEGORIES))
  p.add_argument("--drop-fraction", type=float, default=0.0, help="drop this fraction of the annotations")
  p.add_argument("--jitter", type=float, default=0.0, help="shift masks by up to this fraction of their size")
  p.add_argument("--score", action="store_true", help="add a score to every annotation")
  a = p.parse_args(argv)
  try:
    data = generate(a.out, a.num_images, a.seed, min_side=a.min_side, max_side=a.max_side,
                    min_objects=a.min_objects, max_objects=a.max_objects, min_object_frac=a.min_object_frac,
                    max_object_frac=a.max_object_frac, min_area=a.min_area,
                    categories=tuple(c.strip() for c in a.categories.split(",") if c.strip()),
                    drop_fraction=a.drop_fraction, jitter=a.jitter, score=a.score)
  except InputError as e:
    print(f"zipjax.data.synthetic: error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {len(data['images'])} images, {len(data['annotations'])} annotations to {a.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
