"""`zipjax segment` pipeline speed: stage breakdown and images/s of the engine (what `zipjax segment` runs), against
the PyTorch + NumPy reference pipeline (tests/reference/zip_pipeline.py, the released code's style) measured in
the same run. One device (bench/engine.py runs the engine on 1 and 8 devices).

  python bench/segment.py                 # CPU, small random models (reference preset; both pipelines)
  python bench/segment.py --full          # zip preset, ViT-B/16 + RN50x64 random weights at full input
                                          #   sizes (for a GPU; no torch comparison)

Small models: CLIP ViT (3 blocks, width 64, 2 surgery blocks) at 224 px, ModifiedResNet (1 block per stage,
width 16) at 480 px short side, 3 classes, 85-template ensemble (text features computed once, not timed).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path = [p for p in sys.path if os.path.abspath(p) != os.path.dirname(os.path.abspath(__file__))]


def _images(n: int) -> list[np.ndarray]:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  base = np.asarray(Image.open(os.path.join(root, "examples", "oranges.png")).convert("RGB"))
  return [np.ascontiguousarray(np.roll(base, 17 * i, axis=1)) for i in range(n)]


def small(n_images: int, repeats: int) -> None:
  import torch  # pylint: disable=import-outside-toplevel

  from tests.pipeline.test_zip_pipeline import NAMES, _config, reference_models  # pylint: disable=C0415
  from tests.reference import zip_pipeline  # pylint: disable=import-outside-toplevel
  from zipjax.io.text_cache import prompt_templates  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel

  from zipjax import parallel  # pylint: disable=import-outside-toplevel
  from zipjax.engine import Engine  # pylint: disable=import-outside-toplevel

  torch.set_grad_enabled(False)
  vit, rn, jvit, jrn = reference_models()  # the parity test's models: the same random weights in both
  config = _config()
  eng = Engine(config, models=(jvit, jrn, None),
               mesh=parallel.create_mesh([("data", -1)], jax.devices()[:1]), text_cache=None)
  eng.set_classes(NAMES)
  imgs = _images(n_images)
  eng.segment(imgs[:2], masks="bool")  # warm-up: compile
  for k in eng.timings:
    eng.timings[k] = 0.0
  bs = int(config.batch_size)  # per device; one device here
  t0 = time.perf_counter()
  for _ in range(repeats):
    for s in range(0, len(imgs), bs):
      eng.segment(imgs[s:s + bs], masks="bool")
  jax_total = (time.perf_counter() - t0) / (repeats * len(imgs))
  per = {k: v / (repeats * len(imgs)) for k, v in eng.timings.items()}

  templates = prompt_templates()
  t0 = time.perf_counter()
  for im in imgs:
    zip_pipeline.reference_pipeline(im, NAMES, vit, rn, templates, config.semantic.input_size,
                                    config.boundary.input_size, surgery_depth=2,
                                    discover_kwargs={"min_instance_cells": config.discover.min_instance_cells})
  ref_total = (time.perf_counter() - t0) / len(imgs)
  # the reference re-encodes its 4 x 85 prompts per image (as the released demo does); time that part alone
  t0 = time.perf_counter()
  zip_pipeline.encode_text_with_prompt_ensemble(vit, NAMES, templates)
  zip_pipeline.encode_text_with_prompt_ensemble(vit, [""], templates)
  ref_text = time.perf_counter() - t0
  ref_img = ref_total - ref_text

  h, w = imgs[0].shape[:2]
  print(f"zipjax segment, reference preset, CPU ({os.cpu_count()} cores), {len(imgs)} images {w}x{h}, "
        f"{len(NAMES)} classes, small random models")
  print(f"{'engine stage':<14} {'s/img':>8}")
  for k, v in per.items():
    print(f"{k:<14} {v:8.4f}")
  print(f"{'total':<14} {jax_total:8.4f}")
  print()
  print(f"{'pipeline':<44} {'s/img':>8} {'img/s':>8} {'ratio':>7}")
  print(f"{'torch+numpy reference (text per image)':<44} {ref_total:8.4f} {1 / ref_total:8.2f} {1.0:7.2f}")
  print(f"{'torch+numpy reference (text excluded)':<44} {ref_img:8.4f} {1 / ref_img:8.2f} "
        f"{ref_total / ref_img:7.2f}")
  print(f"{'zipjax engine (jit, warm, text cached)':<44} {jax_total:8.4f} {1 / jax_total:8.2f} "
        f"{ref_total / jax_total:7.2f}")
  print(f"speed-up vs reference without its text cost: {ref_img / jax_total:.2f}x")


def full(n_images: int) -> None:
  from zipjax import configs  # pylint: disable=import-outside-toplevel
  from zipjax.engine import Engine  # pylint: disable=import-outside-toplevel
  config = configs.zip()
  config.semantic.prompt_ensemble = False  # random text tower: the ensemble only costs time here
  seg = Engine(config, random_init=True, text_cache=None)
  seg.set_classes(["orange", "table", "person"])
  imgs = _images(n_images)
  seg.segment(imgs[:1], masks="bool")
  for k in seg.timings:
    seg.timings[k] = 0.0
  t0 = time.perf_counter()
  seg.segment(imgs, masks="bool")
  total = (time.perf_counter() - t0) / len(imgs)
  print("zip preset, ViT-B/16 + RN50x64 + SAM vit_h (random weights), full input sizes (see bench/device_check.py)")
  for k, v in seg.timings.items():
    print(f"{k:<14} {v / len(imgs):10.4f} s/img")
  print(f"{'total':<14} {total:10.4f} s/img  ({1 / total:.2f} img/s)")


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--images", type=int, default=4)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--full", action="store_true")
  a = ap.parse_args()
  import tests.conftest  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  if a.full:
    full(a.images)
  else:
    small(a.images, a.repeats)


if __name__ == "__main__":
  main()
