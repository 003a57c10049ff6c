"""The labelling engine vs the old per-stage loop (`Segmenter.segment_per_stage`) on the same generated images,
smoke config (tiny random models, zip preset), CPU with 1 and 8 simulated devices.

  python bench/engine.py                   # 32 images of 3 sizes (two aspect buckets)
  python bench/engine.py --images 64 --devices 1,2,4,8

Both paths are warmed up first (every bucket / size compiled), then timed end to end on the same images
(host preparation, device, host post-processing with bool masks). Compile times are reported separately.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path = [p for p in sys.path if os.path.abspath(p) != os.path.dirname(os.path.abspath(__file__))]

SIZES = ((180, 240), (240, 180), (150, 200))  # 4:3 landscape, 3:4 portrait, another 4:3 size


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--images", type=int, default=32)
  ap.add_argument("--devices", default="1,8")
  a = ap.parse_args()
  import tests.conftest  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import  (8 CPU devices)
  import jax  # pylint: disable=import-outside-toplevel

  from tests.pipeline.test_zip_pipeline import scene  # pylint: disable=import-outside-toplevel
  from zipjax import parallel  # pylint: disable=import-outside-toplevel
  from zipjax.commands.segment import load_config_file  # pylint: disable=import-outside-toplevel
  from zipjax.engine import Engine  # pylint: disable=import-outside-toplevel
  from zipjax.pipeline.zip import Segmenter, build_models  # pylint: disable=import-outside-toplevel

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = load_config_file(os.path.join(root, "configs", "smoke.py"))
  config.semantic.prompt_ensemble = False
  config.discover.min_instance_cells = 4
  names = ["orange", "table", "sky", "dog"]
  models = build_models(config, random_init=True)
  imgs = [scene(i, *SIZES[i % len(SIZES)]) for i in range(a.images)]
  rows = []

  seg = Segmenter(config, *models)
  seg.set_classes(names)
  bs = int(config.batch_size)
  t0 = time.perf_counter()
  for s in range(len(SIZES)):  # compile every size
    seg.segment_per_stage([imgs[s]])
  old_compile = time.perf_counter() - t0
  t0 = time.perf_counter()
  n_old = 0
  for s in range(0, len(imgs), bs):
    n_old += sum(len(o["instances"]) for o in seg.segment_per_stage(imgs[s:s + bs]))
  old = time.perf_counter() - t0
  rows.append(("old per-stage loop", 1, old_compile, old, n_old, "-"))

  for d in [int(x) for x in a.devices.split(",")]:
    mesh = parallel.create_mesh([("data", -1)], jax.devices()[:d])
    eng = Engine(config, models=models, mesh=mesh, text_cache=None)
    eng.set_classes(names)
    t0 = time.perf_counter()
    eng.segment(imgs[:len(SIZES)], masks="bool")
    compile_s = time.perf_counter() - t0
    for k in eng.timings:
      eng.timings[k] = 0.0
    t0 = time.perf_counter()
    outs = eng.segment(imgs, masks="bool")
    dt = time.perf_counter() - t0
    n = sum(len(o["instances"]) for o in outs)
    per = ", ".join(f"{k} {v:.2f}s" for k, v in eng.timings.items() if k != "compile")
    rows.append((f"engine ({d} device{'s' if d > 1 else ''})", d, compile_s, dt, n,
                 f"{eng.compiled_programs()} programs; {per}"))

  print(f"zip preset, smoke config (random weights), CPU ({os.cpu_count()} cores), {a.images} images of sizes "
        f"{', '.join(f'{w}x{h}' for h, w in SIZES)}, {len(names)} classes, batch_size {bs} per device")
  print(f"{'path':<22} {'devices':>7} {'warm-up s':>10} {'s/img':>8} {'img/s':>7} {'vs old':>7} "
        f"{'instances':>9}  notes")
  for name, d, c, t, n, notes in rows:
    print(f"{name:<22} {d:>7} {c:>10.1f} {t / a.images:>8.4f} {a.images / t:>7.2f} {old / t:>7.2f} {n:>9}  {notes}")


if __name__ == "__main__":
  main()
