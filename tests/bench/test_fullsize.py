"""The main job at its real sizes: `zipjax segment` with the default `zip` preset (CLIP ViT-B/16 + RN50x64 to
layer3 at 2048 + SAM vit_h, random weights) on one 640 x 480 image, through the CLI in a subprocess, within
the peak host RSS bound of the full-size issue (12 GB on this 24 GB machine). Several minutes on 2 cores: slow.

bench/fullsize.py covers the loading path of converted full-size checkpoints and the timings against PyTorch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RSS_BOUND_GB = 12.0

# runs its arguments as a child and prints the child's peak RSS (kB): the bound is the CLI's own, not pytest's
_MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


@pytest.mark.slow
def test_segment_default_preset_full_size_within_rss_bound(tmp_path):
  rng = np.random.default_rng(0)
  img = np.clip(rng.normal(128, 40, (480, 640, 3)), 0, 255).astype(np.uint8)
  img[100:300, 150:400] = (230, 140, 30)
  Image.fromarray(img).save(tmp_path / "scene.png")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user runs it
  out = tmp_path / "out"
  cmd = [sys.executable, "-c", _MEASURE, sys.executable, "-m", "zipjax", "segment", str(tmp_path / "scene.png"),
         "--classes", "orange", "--random-init", "--out", str(out)]
  r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600)
  assert r.returncode == 0, r.stderr[-3000:]
  peak_gb = int(r.stdout.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) / 1e6
  ann = json.loads((out / "annotations.json").read_text())
  assert len(ann["images"]) == 1 and not json.loads((out / "errors.json").read_text() or "[]")
  assert peak_gb <= RSS_BOUND_GB, f"peak host RSS {peak_gb:.2f} GB > {RSS_BOUND_GB} GB"
