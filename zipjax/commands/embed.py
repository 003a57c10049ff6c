"""`zipjax embed`: CLIP image/text embeddings of one image and a few class names, with zero-shot scores and
(for ViT models) the CLIP Surgery similarity map peak of each class."""
from __future__ import annotations

import time

import numpy as np
from PIL import Image, UnidentifiedImageError

from zipjax.errors import InputError


def add_parser(sub):
  p = sub.add_parser("embed", help="CLIP image/text embeddings and zero-shot scores for one image",
                     description=__doc__)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--clip", help="OpenAI CLIP checkpoint (.pt) or a directory from `zipjax convert clip`")
  src.add_argument("--random-init", metavar="ARCH", help="random weights of a named architecture, e.g. ViT-B/16")
  p.add_argument("--image", required=True, help="an image file")
  p.add_argument("--texts", required=True, help="comma-separated class names")
  p.add_argument("--template", default="a photo of a {}.", help="prompt template for each class name")
  p.add_argument("--surgery-size", type=int, default=512, help="square input size of the CLIP Surgery pass")
  return p


def run(args) -> int:
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from zipjax.clip import ClipModel, load_clip  # pylint: disable=import-outside-toplevel
  from zipjax.preprocess import clip_surgery_input  # pylint: disable=import-outside-toplevel

  names = [t.strip() for t in args.texts.split(",") if t.strip()]
  if not names:
    raise InputError("--texts: no class names given")
  try:
    image = Image.open(args.image)
    image.load()
  except (OSError, UnidentifiedImageError) as e:
    raise InputError(f"{args.image}: cannot read image ({e})") from e
  t0 = time.perf_counter()
  if args.clip:
    model = load_clip(args.clip)
  else:
    model = ClipModel.random(args.random_init)
    print(f"NOTE: random weights ({args.random_init}); the numbers below show the pipeline, not CLIP's "
          "knowledge. Set ZIPJAX_CLIP / --clip to a real checkpoint.")
  c = model.config
  print(f"model: {model.name} ({'ViT' if c.is_vit else 'ModifiedResNet'}, embed dim {c.embed_dim}); "
        f"loaded in {time.perf_counter() - t0:.1f}s")

  res = c.image_resolution
  pixels = clip_surgery_input(image, res)[None]  # [1, res, res, 3]
  img = np.asarray(model.encode_image(pixels))[0]
  txt = np.asarray(model.encode_text([args.template.format(n) for n in names]))
  img_n = img / np.linalg.norm(img)
  txt_n = txt / np.linalg.norm(txt, axis=-1, keepdims=True)
  cos = txt_n @ img_n
  logits = 100.0 * cos
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  print(f"image {args.image} {image.size[0]}x{image.size[1]} -> embedding [{img.shape[0]}], "
        f"norm {np.linalg.norm(img):.3f}")
  print(f"{'class':<20} {'cosine':>8} {'prob':>7}")
  for n, cs, pr in zip(names, cos, probs):
    print(f"{n:<20} {cs:8.4f} {pr:7.3f}")

  if c.is_vit:
    size = args.surgery_size - args.surgery_size % c.vision_patch_size
    tokens = model.encode_image(clip_surgery_input(image, size)[None], surgery=True)[0]  # [1 + N, D]
    feats = tokens / jnp.linalg.norm(tokens, axis=-1, keepdims=True)
    sim = np.asarray(feats[1:] @ jnp.asarray(txt_n).T)  # [N, n_classes]
    g = size // c.vision_patch_size
    print(f"CLIP Surgery at {size}px: {g}x{g} token grid; per-class peak (row, col) and max cosine:")
    for i, n in enumerate(names):
      k = int(np.argmax(sim[:, i]))
      print(f"  {n:<18} peak at ({k // g}, {k % g}), max {sim[k, i]:.4f}")
  return 0
