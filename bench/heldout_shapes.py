"""Held-out generated data for the detector and self-training benches: a generator unlike zipjax.data.synthetic.

    python bench/heldout_shapes.py --out DIR --num-images N [--seed S] [--degrade]

writes `DIR/images/000001.png ...` and `DIR/annotations.json` (COCO, one category `object`, compressed RLE masks,
`bbox` / `area` from the masks with pycocotools). It exists so that the box-quality and self-training benches
(bench/box_quality.py, bench/selftrain_quality.py) measure the detector on images the project's own generator
and its label corruptions were never tuned on. What differs from zipjax.data.synthetic:

- the longer image side in [112, 200], aspect ratio up to 1.5, landscape or portrait;
- backgrounds: one of tiles (a two-colour checkerboard with random cell size), value noise (bilinear upsampling
  of a coarse random grid, several octaves), a linear gradient with fine value noise, or clutter (random thin
  strokes and small dots: edges that are not objects), each with pixel noise;
- shapes: smooth random blobs (a radial Fourier series), regular polygons with 5-8 sides, crosses, rings (the
  hole shows the background and is not part of the mask), crescents, L shapes and rounded rectangles
  (superellipses); sizes (the longer extent) log-uniform in [1/8, 1/2] of the shorter image side;
- edges anti-aliased: the shape is drawn at 4x and box-filtered to a coverage map; the mask is coverage >= 0.5
  and the image blends fill and background by coverage;
- fills: a two-colour linear gradient, a flat colour with noise, or dots; colours of any saturation, kept apart
  from the background under the object by a minimum RGB distance (low contrast happens, invisibility does not);
- 1-6 objects per image, occluding each other (the annotation is the visible part; a placement hiding more
  than half of an earlier object, or leaving an object under 24 visible pixels, is redrawn).

`--degrade` writes pseudo-labels of the same images instead, wrong the way an unsupervised labeller is wrong,
with corruptions of their own (not zipjax.data.synthetic's drop / shift): 35% of the objects missing; each kept
one distorted by one of a dilation or an erosion (2-4 px), a cut (a random half-plane removes 20-45% of it), a
stray fragment (a blob of a tenth to a quarter of its size glued on next to it: the tight box grows) or a merge
with its nearest neighbour's mask; about 0.4 false labels per image (a background blob); scores lower for
larger distortions, with noise. Image i of a dataset is a function of (seed, i); the degradations use their
own stream, so the same seed with and without `--degrade` gives the same images (truth and pseudo-labels).
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from zipjax.io.atomic import atomic_write_bytes, atomic_write_json  # noqa: E402

MIN_LONG, MAX_LONG = 112, 200  # longer image side
MAX_ASPECT = 1.5
MIN_FRAC, MAX_FRAC = 1 / 8, 1 / 2
MAX_OBJECTS = 6
MIN_VISIBLE = 24
MAX_OCCLUSION = 0.5
SUPER = 4  # supersampling factor of the shapes
SHAPES = ("blob", "polygon", "cross", "ring", "crescent", "ell", "roundrect")
CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


# -------------------------------------------------------------------------------------------- backgrounds
def _value_noise(rng, h, w, cells):
  grid = rng.uniform(0, 1, (cells + 1, cells + 1)).astype(np.float32)
  img = Image.fromarray(grid, "F").resize((w, h), Image.BILINEAR)
  return np.asarray(img, np.float32)


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """float32 [H, W, 3] in 0..255."""
  kind = rng.integers(4)
  c0, c1 = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
  if kind == 0:  # tiles
    cell = int(rng.integers(6, 24))
    yy, xx = np.mgrid[0:h, 0:w]
    check = (((yy // cell) + (xx // cell)) % 2).astype(np.float32)[..., None]
    c1 = c0 + (c1 - c0) * rng.uniform(0.2, 0.6)
    img = c0 * (1 - check) + c1 * check
  elif kind == 1:  # value noise, a few octaves
    t = sum(_value_noise(rng, h, w, 2 ** k) / 2 ** (k - 1) for k in range(1, 5)) / 1.875
    img = c0 + (c1 - c0) * t[..., None]
  elif kind == 2:  # gradient + blurred noise
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (math.cos(angle) * xx / w + math.sin(angle) * yy / h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    blur = _value_noise(rng, h, w, max(2, max(h, w) // 8)) - 0.5
    img = c0 + (c1 - c0) * t[..., None] + 50 * blur[..., None]
  else:  # clutter: strokes and dots that are not objects
    base = Image.new("RGB", (w, h), tuple(int(v) for v in c0))
    draw = ImageDraw.Draw(base)
    for _ in range(int(rng.integers(8, 25))):
      col = tuple(int(v) for v in np.clip(c0 + rng.normal(0, 45, 3), 0, 255))
      if rng.random() < 0.6:
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        x1, y1 = x0 + rng.normal(0, w / 3), y0 + rng.normal(0, h / 3)
        draw.line([(x0, y0), (x1, y1)], fill=col, width=int(rng.integers(1, 3)))
      else:
        r = rng.uniform(1, 3)
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=col)
    img = np.asarray(base, np.float32)
  return img + rng.normal(0, rng.uniform(2, 10), (h, w, 3))


# ------------------------------------------------------------------------------------------------- shapes
def _outline(kind: str, rng: np.random.Generator, r: float) -> list:
  """Polygons (lists of (x, y) around the origin, extent about 2r): [outer, hole?]."""
  if kind == "blob":
    n = 64
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    rad = np.ones(n)
    for k in range(2, 5):
      rad += rng.uniform(0, 0.35 / k * 2) * np.cos(k * a + rng.uniform(0, 2 * math.pi))
    rad = r * rad / rad.max()
    return [list(zip(rad * np.cos(a), rad * np.sin(a)))]
  if kind == "polygon":
    n = int(rng.integers(5, 9))
    a = np.arange(n) * 2 * math.pi / n
    return [list(zip(r * np.cos(a), r * np.sin(a)))]
  if kind == "cross":
    t = r * rng.uniform(0.25, 0.45)
    return [[(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t),
             (-t, -t)]]
  if kind == "ring":
    n = 48
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    inner = r * rng.uniform(0.35, 0.6)
    return [list(zip(r * np.cos(a), r * np.sin(a))), list(zip(inner * np.cos(a), inner * np.sin(a)))]
  if kind == "crescent":
    n = 48
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    off = r * rng.uniform(0.35, 0.6)
    return [list(zip(r * np.cos(a), r * np.sin(a))), list(zip(off + 0.85 * r * np.cos(a), 0.85 * r * np.sin(a)))]
  if kind == "ell":
    t = r * rng.uniform(0.5, 0.9)
    return [[(-r, -r), (-r + t, -r), (-r + t, r - t), (r, r - t), (r, r), (-r, r)]]
  if kind == "roundrect":
    n, p = 64, rng.uniform(2.5, 6)
    aspect = rng.uniform(0.4, 1.0)
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(a), np.sin(a)
    x = r * np.sign(c) * np.abs(c) ** (2 / p)
    y = r * aspect * np.sign(s) * np.abs(s) ** (2 / p)
    return [list(zip(x, y))]
  raise ValueError(kind)


def shape_coverage(kind: str, rng: np.random.Generator, h: int, w: int, size: float, centre=None) -> np.ndarray:
  """float32 [H, W] coverage in [0, 1] of one shape of extent about `size` (rotated, at `centre` or random)."""
  r = size / 2
  cx, cy = centre if centre is not None else (rng.uniform(0.05 * w, 0.95 * w), rng.uniform(0.05 * h, 0.95 * h))
  rot = rng.uniform(0, 2 * math.pi)
  c, s = math.cos(rot), math.sin(rot)
  img = Image.new("L", (w * SUPER, h * SUPER), 0)
  draw = ImageDraw.Draw(img)
  polys = _outline(kind, rng, r)
  for k, poly in enumerate(polys):
    pts = [((cx + x * c - y * s) * SUPER, (cy + x * s + y * c) * SUPER) for x, y in poly]
    draw.polygon(pts, fill=255 if k == 0 else 0)
  cov = np.asarray(img, np.float32).reshape(h, SUPER, w, SUPER).mean(axis=(1, 3)) / 255.0
  return cov


def _fill(rng: np.random.Generator, h: int, w: int, avoid: np.ndarray) -> np.ndarray:
  """float32 [H, W, 3]: the fill of one object, its mean colour at least 60 RGB units from `avoid`."""
  for _ in range(20):
    col = rng.uniform(0, 255, 3)
    if np.linalg.norm(col - avoid) >= 60:
      break
  kind = rng.integers(3)
  if kind == 0:  # gradient
    col2 = np.clip(col + rng.normal(0, 40, 3), 0, 255)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (math.cos(angle) * xx + math.sin(angle) * yy) / max(h, w)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return col * (1 - t[..., None]) + col2 * t[..., None]
  if kind == 1:
    return np.broadcast_to(col, (h, w, 3)) + rng.normal(0, 10, (h, w, 3))
  dots = np.zeros((h, w), np.float32)
  period = int(rng.integers(3, 7))
  dots[::period, ::period] = 1.0
  dots[1::period, ::period] = 1.0
  return col + (rng.uniform(-50, 50, 3) * dots[..., None])


def render(seed: int, index: int):
  """Image `index` of the dataset with `seed` -> (uint8 [H, W, 3], [visible mask bool [H, W]] in paint order)."""
  rng = np.random.default_rng([seed, index, 77])
  long = int(rng.integers(MIN_LONG, MAX_LONG + 1))
  other = int(round(long / rng.uniform(1.0, MAX_ASPECT)))
  w, h = (long, other) if rng.random() < 0.5 else (other, long)
  canvas = background(rng, h, w)
  short = min(h, w)
  visible: list = []
  for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
    for _attempt in range(25):
      kind = SHAPES[int(rng.integers(len(SHAPES)))]
      size = math.exp(rng.uniform(math.log(MIN_FRAC), math.log(MAX_FRAC))) * short
      cov = shape_coverage(kind, rng, h, w, size)
      full = cov >= 0.5
      if full.sum() < MIN_VISIBLE:
        continue
      if all((v & ~full).sum() >= MIN_VISIBLE and (v & full).sum() <= MAX_OCCLUSION * v.sum() for v in visible):
        break
    else:
      continue
    under = canvas[full].mean(axis=0)
    fill = _fill(rng, h, w, under)
    canvas = canvas * (1 - cov[..., None]) + fill * cov[..., None]
    visible = [v & ~full for v in visible]
    visible.append(full)
  image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
  return image, visible


# ------------------------------------------------------------------------------------------- degradations
def _dilate(m: np.ndarray, k: int) -> np.ndarray:
  img = Image.fromarray(m.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * k + 1))
  return np.asarray(img) > 127


def _erode(m: np.ndarray, k: int) -> np.ndarray:
  img = Image.fromarray(m.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(2 * k + 1))
  return np.asarray(img) > 127


def _box(m: np.ndarray):
  ys, xs = np.nonzero(m)
  return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def degrade(seed: int, index: int, masks: list, h: int, w: int) -> list:
  """Pseudo-labels of one image: [(mask, score)] (see the module docstring)."""
  rng = np.random.default_rng([seed, index, 78])
  out = []
  for k, m in enumerate(masks):
    if rng.random() < 0.35:
      continue
    x0, y0, x1, y1 = _box(m)
    size = max(x1 - x0, y1 - y0)
    kind = int(rng.integers(5))
    badness = 0.0
    if kind == 0:
      d = int(rng.integers(2, 5))
      new = _dilate(m, d)
      badness = d / max(size, 1) * 4
    elif kind == 1:
      d = int(rng.integers(2, 5))
      new = _erode(m, d)
      new = new if new.sum() >= 8 else m
      badness = d / max(size, 1) * 4
    elif kind == 2:
      frac = rng.uniform(0.2, 0.45)
      angle = rng.uniform(0, 2 * math.pi)
      yy, xx = np.nonzero(m)
      proj = np.cos(angle) * xx + np.sin(angle) * yy
      cut = np.quantile(proj, frac)
      new = m.copy()
      new[yy[proj < cut], xx[proj < cut]] = False
      badness = frac
    elif kind == 3:
      cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
      a = rng.uniform(0, 2 * math.pi)
      dist = size * rng.uniform(0.55, 0.8)
      frag = shape_coverage("blob", rng, h, w, size * rng.uniform(0.1, 0.25),
                            centre=(cx + dist * math.cos(a), cy + dist * math.sin(a))) >= 0.5
      new = m | frag
      badness = 0.35
    else:
      others = [o for j, o in enumerate(masks) if j != k]
      if others:
        cy, cx = np.mean(np.nonzero(m), axis=1)
        dists = [np.hypot(*(np.mean(np.nonzero(o), axis=1) - (cy, cx))) for o in others]
        new = m | others[int(np.argmin(dists))]
        badness = 0.5
      else:
        new = _dilate(m, 2)
        badness = 0.1
    if not new.any():
      continue
    score = float(np.clip(rng.uniform(0.5, 1.0) * (1 - 0.6 * min(badness, 1.0)), 0.05, 1.0))
    out.append((new, score))
  for _ in range(int(rng.poisson(0.4))):
    short = min(h, w)
    fp = shape_coverage("blob", rng, h, w, short * rng.uniform(0.12, 0.35)) >= 0.5
    if fp.sum() >= MIN_VISIBLE:
      out.append((fp, float(rng.uniform(0.1, 0.6))))
  return out


# ---------------------------------------------------------------------------------------------- datasets
def _ann(mask: np.ndarray, score=None) -> dict:
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  rec = {"category_id": 1, "segmentation": {"size": [int(rle["size"][0]), int(rle["size"][1])],
                                             "counts": rle["counts"].decode("ascii")},
         "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0}
  if score is not None:
    rec["score"] = round(score, 6)
  return rec


def generate(out_dir, num_images: int, seed: int = 0, degraded: bool = False) -> dict:
  """Writes `out_dir/images/*.png` and `out_dir/annotations.json` (truth, or pseudo-labels with `degraded`)."""
  out_dir = os.fspath(out_dir)
  images, anns = [], []
  for i in range(num_images):
    image, masks = render(seed, i)
    h, w = image.shape[:2]
    name = f"{i + 1:06d}.png"
    path = os.path.join(out_dir, "images", name)
    if not os.path.exists(path):
      import io  # pylint: disable=import-outside-toplevel
      buf = io.BytesIO()
      Image.fromarray(image, "RGB").save(buf, format="PNG")
      atomic_write_bytes(path, buf.getvalue())
    images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    recs = [_ann(m, s) for m, s in degrade(seed, i, masks, h, w)] if degraded else [_ann(m) for m in masks]
    for rec in recs:
      anns.append({"id": len(anns) + 1, "image_id": i + 1, **rec})
  data = {"info": {"description": "bench/heldout_shapes.py" + (" (degraded pseudo-labels)" if degraded else ""),
                   "seed": int(seed)}, "images": images, "annotations": anns, "categories": [CATEGORY]}
  atomic_write_json(os.path.join(out_dir, "annotations.json"), data, indent=None)
  return data


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--num-images", type=int, required=True)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--degrade", action="store_true", help="pseudo-labels of the same images instead of the truth")
  a = p.parse_args(argv)
  data = generate(a.out, a.num_images, a.seed, a.degrade)
  print(f"wrote {len(data['images'])} images, {len(data['annotations'])} annotations to {a.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
