"""Output helpers shared by the commands that write predictions (the files themselves are written by
`zipjax/io/shards.py`'s `RunDir`): `draw_overlay` (masks, boxes, class names and scores drawn on the image, as
`overlays/<index>_<stem>.png`) and `RANDOM_NOTE`, the mark of random-weight runs (`info.random_init` /
`info.note` in annotations.json, and a banner on every overlay).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


RANDOM_NOTE = "RANDOM WEIGHTS (--random-init): these outputs exercise the pipeline; they are not predictions"


def _colour(i: int) -> tuple[int, int, int]:
  rng = np.random.default_rng(i * 7919 + 13)
  c = rng.integers(60, 256, 3)
  return int(c[0]), int(c[1]), int(c[2])


def draw_overlay(image: np.ndarray, instances: list[dict], names: list[str], max_side: int = 1024,
                 banner: str | None = None) -> bytes:
  """PNG bytes: masks blended (alpha 0.45), boxes, 'name score' labels; scaled so the longer side <= max_side."""
  h, w = image.shape[:2]
  canvas = image.astype(np.float32).copy()  # [H, W, 3]
  for j, inst in enumerate(instances):
    col = np.array(_colour(j), np.float32)
    m = inst["mask"]
    canvas[m] = 0.55 * canvas[m] + 0.45 * col
  img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
  scale = min(1.0, max_side / max(h, w))
  if scale < 1.0:
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
  draw = ImageDraw.Draw(img)
  for j, inst in enumerate(instances):
    x0, y0, x1, y1 = (v * scale for v in inst["box"])
    col = _colour(j)
    draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=col, width=2)
    label = f"{names[inst['category']]} {inst['score']:.2f}"
    tw = draw.textlength(label)
    draw.rectangle([x0, y0, x0 + tw + 4, y0 + 12], fill=col)
    draw.text((x0 + 2, y0), label, fill=(0, 0, 0))
  if banner:
    draw.rectangle([0, 0, draw.textlength(banner) + 6, 13], fill=(200, 0, 0))
    draw.text((3, 0), banner, fill=(255, 255, 255))
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  return buf.getvalue()


__all__ = ["RANDOM_NOTE", "draw_overlay"]
