"""`zipjax label` throughput against the PyTorch + NumPy reference pipeline (tests/reference/zip_pipeline.py, one
image at a time, the released code's style) on the same generated images (configs/smoke.py's model sizes, random
weights, SAM off in both, CPU), for 1, 2, 4 and 8 simulated devices; compiled programs; peak host RSS of
`zipjax label` for a small and a large number of images (it must not grow with the image count).

  python bench/label.py                # 64 images, devices 1 2 4 8, RSS at 100 and 500 images
  python bench/label.py --quick        # 16 images, devices 1 8, RSS at 50 and 150 images

Every measurement runs in its own subprocess (XLA_FLAGS=--xla_force_host_platform_device_count=N, no persistent
XLA cache). Columns: `cold` = the first pass over the images including compilation, `warm` = a second pass
with everything compiled (label: a new run into a new directory in the same process; the engine's programs are
reused), images/s; `programs` = the engine's step programs; `xla compiles` = every XLA compilation of the pass
(jax_log_compiles). The reference (torch on the CPU, the smoke config's CLIP architectures, its input sizes,
the same images) re-encodes its prompt ensemble per image as the released demo does; its row is given without
that text cost (measured once and subtracted); it is measured once, on one process. Simulated devices share the
same CPU cores: more of them split the same compute, they do not add any.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path = [p for p in sys.path if os.path.abspath(p) != os.path.dirname(os.path.abspath(__file__))]
SMOKE = os.path.join(ROOT, "configs", "smoke.py")
CLASSES = ["orange", "table", "sky"]
# 8 sizes over 3 aspect ratios (landscape 4:3, portrait 3:4, square): the engine has 3 buckets to compile,
# the reference one boundary shape per distinct size
SIZES = [(96, 128), (120, 160), (150, 200), (132, 176), (128, 96), (160, 120), (112, 112), (144, 144)]


def generate(folder: str, n: int, sizes=SIZES, seed: int = 0) -> str:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(n):
    h, w = sizes[i % len(sizes)]
    img = (rng.integers(0, 50, (1, 1, 3)) + np.zeros((h, w, 3))).astype(np.uint8)
    for _ in range(3):
      y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
      img[y:y + h // 3, x:x + w // 3] = rng.integers(80, 255, 3)
    img = np.clip(img + rng.integers(0, 25, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(os.path.join(folder, f"img{i:04d}.png"))
  return folder


class CompileCounter:
  """Counts XLA compilations (jax_log_compiles records)."""

  def __init__(self):
    import logging  # pylint: disable=import-outside-toplevel

    import jax  # pylint: disable=import-outside-toplevel
    jax.config.update("jax_log_compiles", True)
    self.count = 0
    counter = self

    class _H(logging.Handler):
      def emit(self, record):
        if record.getMessage().startswith("Finished XLA compilation"):
          counter.count += 1

    logger = logging.getLogger("jax")
    logger.addHandler(_H())
    logger.setLevel(logging.DEBUG)
    logger.propagate = False


def _config(batch: int):
  from zipjax.commands.segment import load_config_file  # pylint: disable=import-outside-toplevel
  config = load_config_file(SMOKE)
  config.batch_size = batch
  config.label.shard_size = 64
  config.label.workers = 2
  config.output.overlays = False
  config.sam.enabled = False  # the reference pipeline has no SAM stage
  return config


def worker_label(images: str, batch: int, passes: int) -> dict:
  from zipjax.jobs import label as label_job  # pylint: disable=import-outside-toplevel
  from zipjax.jobs.comm import Comm  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  counter = CompileCounter()
  tmp = tempfile.mkdtemp(prefix="zipjax-bench-label-")
  out = {"devices": jax.device_count(), "passes": []}
  for p in range(passes):
    before = counter.count
    req = label_job.LabelRequest(out=os.path.join(tmp, f"run{p}"), inputs=[images], names=CLASSES,
                                 config=_config(batch), random_init=True)
    t0 = time.perf_counter()
    label_job.run_label(req, comm=Comm(0, 1), log=lambda m: None)
    total = time.perf_counter() - t0
    run = json.load(open(os.path.join(tmp, f"run{p}", "run.json"), encoding="utf-8"))
    att = run["attempts"][0]
    out["passes"].append({"loop_s": att["loop_seconds"], "total_s": total, "images": att["images"],
                          "programs": att["compiled_programs"], "xla_compiles": counter.count - before,
                          "device_s": att["device_seconds"]})
  out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return out


def worker_reference(images: str, batch: int, passes: int) -> dict:
  import torch  # pylint: disable=import-outside-toplevel

  from tests.reference import clip_ref, zip_pipeline  # pylint: disable=import-outside-toplevel
  from zipjax.io import images as images_io  # pylint: disable=import-outside-toplevel
  from zipjax.io.text_cache import prompt_templates  # pylint: disable=import-outside-toplevel
  del batch  # one image at a time
  torch.set_grad_enabled(False)
  config = _config(1)
  arch = {k: config.models[k].arch.to_dict() for k in ("semantic", "boundary")}
  depth = int(arch["semantic"].pop("surgery_depth"))
  vit, rn = clip_ref.make_clip(seed=3, **arch["semantic"]), clip_ref.make_clip(seed=4, **arch["boundary"])
  templates = prompt_templates() if config.semantic.prompt_ensemble else ["{}"]
  paths = images_io.find_images([images])
  t0 = time.perf_counter()
  zip_pipeline.encode_text_with_prompt_ensemble(vit, CLASSES, templates)
  zip_pipeline.encode_text_with_prompt_ensemble(vit, [""], templates)
  text_s = time.perf_counter() - t0
  out = {"passes": []}
  for _ in range(passes):
    t0 = time.perf_counter()
    for pth in paths:
      zip_pipeline.reference_pipeline(images_io.load_image(pth), CLASSES, vit, rn, templates,
                                      config.semantic.input_size, config.boundary.input_size, surgery_depth=depth,
                                      discover_kwargs={"min_instance_cells": config.discover.min_instance_cells})
    out["passes"].append({"loop_s": time.perf_counter() - t0 - text_s * len(paths), "images": len(paths)})
  return out


def _sub(args: list[str], devices: int) -> dict:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", ZIPJAX_XLA_CACHE="0",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  r = subprocess.run([sys.executable, os.path.abspath(__file__), *args], env=env, capture_output=True, text=True,
                     cwd=ROOT)
  if r.returncode != 0:
    raise RuntimeError(f"worker {args} failed:\n{r.stderr[-4000:]}")
  return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--batch", type=int, default=1, help="images per device per step (label)")
  p.add_argument("--worker", choices=("label", "reference"), help=argparse.SUPPRESS)
  p.add_argument("--images", help=argparse.SUPPRESS)
  p.add_argument("--passes", type=int, default=2, help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.worker:
    fn = worker_label if a.worker == "label" else worker_reference
    print(json.dumps(fn(a.images, a.batch, a.passes)))
    return
  n_images, devices, rss_counts = (16, (1, 8), (50, 150)) if a.quick else (64, (1, 2, 4, 8), (100, 500))
  tmp = tempfile.mkdtemp(prefix="zipjax-bench-")
  try:
    _bench(a, tmp, n_images, devices, rss_counts)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _bench(a, tmp: str, n_images: int, devices, rss_counts) -> None:
  images = generate(os.path.join(tmp, "images"), n_images)
  t0 = time.perf_counter()
  ref = _sub(["--worker", "reference", "--images", images, "--passes", "1"], 1)
  rows = {d: _sub(["--worker", "label", "--images", images, "--batch", str(a.batch)], d) for d in devices}
  big = generate(os.path.join(tmp, "many"), max(rss_counts), sizes=[(96, 128)], seed=1)
  rss = {}
  for n in rss_counts:
    sub = os.path.join(tmp, f"rss{n}")
    os.makedirs(sub)
    for name in sorted(os.listdir(big))[:n]:
      os.symlink(os.path.join(big, name), os.path.join(sub, name))
    rss[n] = _sub(["--worker", "label", "--images", sub, "--batch", "4", "--passes", "1"], 1)

  ref_rate = n_images / ref["passes"][0]["loop_s"]
  print(f"zipjax label vs the torch+numpy reference pipeline: {n_images} images ({len(SIZES)} sizes, 3 aspect "
        f"ratios), configs/smoke.py model sizes, SAM off, random weights, batch {a.batch} per device, CPU "
        f"({os.cpu_count()} cores)")
  print(f"{'':22} {'devices':>7} | {'cold img/s':>10} {'warm img/s':>10} | {'programs':>8} {'xla compiles':>12} | "
        f"{'cold x':>6} {'warm x':>6}")
  print(f"{'torch+numpy reference':22} {1:7d} | {ref_rate:10.2f} {ref_rate:10.2f} | {'-':>8} {'-':>12} | "
        f"{1.0:6.2f} {1.0:6.2f}")
  for d, r in rows.items():
    c, w = r["passes"][0], r["passes"][-1]
    lc, lw = n_images / c["loop_s"], n_images / w["loop_s"]
    print(f"{'zipjax label':22} {d:7d} | {lc:10.2f} {lw:10.2f} | {c['programs']:8d} {c['xla_compiles']:12d} | "
          f"{lc / ref_rate:6.2f} {lw / ref_rate:6.2f}")
  print(f"second pass xla compiles of label: "
        f"{', '.join(str(r['passes'][-1]['xla_compiles']) for r in rows.values())} (per device count); the "
        "reference's text cost is excluded")
  print("peak host RSS of zipjax label (1 device, batch 4, one pass):")
  for n, r in rss.items():
    print(f"  {n:5d} images: {r['rss_mb']:8.1f} MB  ({r['passes'][0]['images'] / r['passes'][0]['loop_s']:.2f} "
          f"images/s)")
  lo, hi = rss[min(rss)]["rss_mb"], rss[max(rss)]["rss_mb"]
  print(f"  growth {min(rss)} -> {max(rss)} images: {hi - lo:+.1f} MB ({(hi - lo) / lo * 100:+.1f}%)")
  print(f"(bench wall time {time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
  main()
