"""CLIP speed and memory: Flax (jit, warm) vs PyTorch eager on CPU, random weights, same inputs.

Cases (from issue 2): ViT-B/16 with CLIP Surgery at 512x512, and the RN50x64 trunk up to layer3 at 1024x1024.
Each (case, framework) runs in its own process so that its peak resident memory can be reported.

    .venv/bin/python bench/clip.py              # both cases, median of 3 timed runs after 1 warm-up
    .venv/bin/python bench/clip.py --case vit --runs 5
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
# this file is named clip.py: keep its folder off sys.path so that `import clip` finds openai-clip
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

CASES = {
    "vit": dict(title="ViT-B/16 surgery @512", arch="ViT-B/16", size=(512, 512)),
    "rn": dict(title="RN50x64 trunk->layer3 @1024", arch="RN50x64", size=(1024, 1024)),
}


def _flax(case: dict, runs: int, q):
  import jax
  import numpy as np
  from zipjax.clip import ClipModel

  model = ClipModel.random(case["arch"])
  x = np.random.default_rng(0).standard_normal((1, *case["size"], 3)).astype(np.float32)
  fn = (lambda: model.encode_image(x, surgery=True)) if case["arch"].startswith("ViT") else \
      (lambda: model.trunk_features(x, stage=3))
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  q.put(dict(first=first, times=times, rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20))


def _torch(case: dict, runs: int, q):
  import torch
  from tests.reference import clip_modules
  from tests.reference.clip_ref import resnet_stages, surgery_encode
  from zipjax.models.clip_net import ARCHITECTURES

  torch.set_grad_enabled(False)
  cfg = ARCHITECTURES[case["arch"]]
  kw = {k: v for k, v in cfg.to_dict().items() if k not in ("surgery_depth", "dtype")}
  model = clip_modules()[0].CLIP(**kw).eval()
  x = torch.randn(1, 3, *case["size"])
  if case["arch"].startswith("ViT"):
    fn = lambda: surgery_encode(model.visual, x)
  else:
    fn = lambda: resnet_stages(model.visual, x, last=3)[-1]
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  q.put(dict(first=first, times=times, rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20))


def measure(target, case, runs):
  ctx = mp.get_context("spawn")
  q = ctx.Queue()
  p = ctx.Process(target=target, args=(case, runs, q))
  p.start()
  out = q.get()
  p.join()
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--case", choices=[*CASES, "all"], default="all")
  ap.add_argument("--runs", type=int, default=3)
  args = ap.parse_args()
  import torch
  import jax
  print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}")
  rows = []
  for name in (CASES if args.case == "all" else [args.case]):
    case = CASES[name]
    fx = measure(_flax, case, args.runs)
    pt = measure(_torch, case, args.runs)
    rows.append((case["title"], fx, pt))
  print()
  print(f"| case | Flax median s | PyTorch median s | speed-up (torch/flax) | Flax first call s | "
        f"Flax peak RSS GiB | PyTorch peak RSS GiB |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for title, fx, pt in rows:
    f, t = statistics.median(fx["times"]), statistics.median(pt["times"])
    print(f"| {title} | {f:.3f} | {t:.3f} | {t / f:.2f}x | {fx['first']:.1f} | {fx['rss']:.2f} | "
          f"{pt['rss']:.2f} |")


if __name__ == "__main__":
  main()
