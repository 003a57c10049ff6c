"""The labelling engine on 1 and 8 simulated CPU devices against the PyTorch + NumPy reference pipeline
(tests/reference/zip_pipeline.py, the released code's style) on the same generated images: the `reference`
preset with the small random models of tests/pipeline/test_zip_pipeline.py (CLIP ViT of 3 blocks at 224 px,
ModifiedResNet of one block per stage at 480 px short side), 3 classes.

  python bench/engine.py                   # 16 images of 3 sizes
  python bench/engine.py --images 32 --devices 1,2,4,8

The engine is warmed up first (every size compiled; compile time reported separately), then timed end to end
(host preparation, device, host post-processing with bool masks). The reference re-encodes its prompt
ensemble per image, as the released demo does; its rows are given with and without that text cost (the engine
encodes the vocabulary once, in `set_classes`). Ratio: reference seconds per image / row seconds per image.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path = [p for p in sys.path if os.path.abspath(p) != os.path.dirname(os.path.abspath(__file__))]

SIZES = ((150, 200), (200, 150), (180, 240))


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--images", type=int, default=16)
  ap.add_argument("--devices", default="1,8")
  a = ap.parse_args()
  import tests.conftest  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import  (8 CPU devices)
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  from tests.pipeline.test_zip_pipeline import NAMES, _config, reference_models, scene  # pylint: disable=C0415
  from tests.reference import zip_pipeline  # pylint: disable=import-outside-toplevel
  from zipjax import parallel  # pylint: disable=import-outside-toplevel
  from zipjax.engine import Engine  # pylint: disable=import-outside-toplevel
  from zipjax.io.text_cache import prompt_templates  # pylint: disable=import-outside-toplevel

  torch.set_grad_enabled(False)
  config = _config()
  vit, rn, jvit, jrn = reference_models()  # the parity test's models: the same random weights in both
  models = (jvit, jrn, None)
  imgs = [scene(i, *SIZES[i % len(SIZES)]) for i in range(a.images)]
  templates = prompt_templates()

  t0 = time.perf_counter()
  n_ref = 0
  for im in imgs:
    ref = zip_pipeline.reference_pipeline(im, NAMES, vit, rn, templates, config.semantic.input_size,
                                          config.boundary.input_size, surgery_depth=2,
                                          discover_kwargs={"min_instance_cells": config.discover.min_instance_cells})
    n_ref += sum(len(b) for b in ref["boxes"])
  ref_total = (time.perf_counter() - t0) / len(imgs)
  t0 = time.perf_counter()  # the reference's per-image text cost alone
  zip_pipeline.encode_text_with_prompt_ensemble(vit, NAMES, templates)
  zip_pipeline.encode_text_with_prompt_ensemble(vit, [""], templates)
  ref_img = ref_total - (time.perf_counter() - t0)
  rows = [("torch+numpy reference", 1, 0.0, ref_total, n_ref, "text encoded per image"),
          ("torch+numpy reference", 1, 0.0, ref_img, n_ref, "its text cost excluded")]

  for d in [int(x) for x in a.devices.split(",")]:
    mesh = parallel.create_mesh([("data", -1)], jax.devices()[:d])
    eng = Engine(config, models=models, mesh=mesh, text_cache=None)
    eng.set_classes(NAMES)
    t0 = time.perf_counter()
    eng.segment(imgs[:len(SIZES)], masks="bool")  # compile every size (the reference preset keeps exact sizes)
    compile_s = time.perf_counter() - t0
    for k in eng.timings:
      eng.timings[k] = 0.0
    t0 = time.perf_counter()
    outs = eng.segment(imgs, masks="bool")
    dt = (time.perf_counter() - t0) / len(imgs)
    n = sum(len(o["instances"]) for o in outs)
    per = ", ".join(f"{k} {v:.2f}s" for k, v in eng.timings.items() if k != "compile")
    rows.append((f"engine ({d} device{'s' if d > 1 else ''})", d, compile_s, dt, n,
                 f"{eng.compiled_programs()} programs; {per}"))

  print(f"reference preset, small random models, CPU ({os.cpu_count()} cores), {a.images} images of sizes "
        f"{', '.join(f'{w}x{h}' for h, w in SIZES)}, {len(NAMES)} classes, batch_size {config.batch_size} per device")
  print(f"{'path':<22} {'devices':>7} {'warm-up s':>10} {'s/img':>8} {'img/s':>7} {'vs ref':>7} "
        f"{'instances':>9}  notes")
  for name, d, c, t, n, notes in rows:
    print(f"{name:<22} {d:>7} {c:>10.1f} {t:>8.4f} {1 / t:>7.2f} {ref_total / t:>7.2f} {n:>9}  {notes}")


if __name__ == "__main__":
  main()
